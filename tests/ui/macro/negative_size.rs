// A negative size names the field and what it takes; the model is still declared, so using it
// adds no error.
use typeformer::prelude::*;

typeformer::transformer! {
    pub Small: DecoderOnly { vocab: 256, d_model: -8, heads: 4, d_ff: 256, layers: 2, max_len: 128 }
}

fn main() {
    let _: Small = SmallSpec::build(&Cpu::default()).unwrap();
}
