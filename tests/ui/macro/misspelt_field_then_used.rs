// A misspelt field is one error (not also "missing `d_ff`"); the model is still declared, so
// using it adds none.
use typeformer::prelude::*;

typeformer::transformer! {
    pub Small: DecoderOnly { vocab: 256, d_model: 64, heads: 4, dff: 256, layers: 2, max_len: 128 }
}

fn main() {
    let model: Small = SmallSpec::build(&Cpu::default()).unwrap();
    assert_eq!(model.num_trainable_params(), SmallSpec::NUM_PARAMS);
}
