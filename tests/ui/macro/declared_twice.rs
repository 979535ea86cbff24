// A name declared twice is one error, at the second; the first stays declared, so using it adds
// none.
use typeformer::prelude::*;

typeformer::transformer! {
    pub Small: DecoderOnly { vocab: 256, d_model: 64, heads: 4, d_ff: 256, layers: 2, max_len: 128 }
    pub Small: DecoderOnly { vocab: 256, d_model: 32, heads: 4, d_ff: 128, layers: 2, max_len: 128 }
}

fn main() {
    let _: Small = SmallSpec::build(&Cpu::default()).unwrap();
}
