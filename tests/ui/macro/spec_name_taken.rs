// `Small` also declares `SmallSpec` (its hyperparameters), so a model named `SmallSpec` clashes
// with it: one error, naming both.
use typeformer::prelude::*;

typeformer::transformer! {
    pub Small: DecoderOnly { vocab: 256, d_model: 64, heads: 4, d_ff: 256, layers: 2, max_len: 128 }
    pub SmallSpec: DecoderOnly { vocab: 256, d_model: 32, heads: 4, d_ff: 128, layers: 2, max_len: 128 }
}

fn main() {
    let _: Small = SmallSpec::build(&Cpu::default()).unwrap();
}
