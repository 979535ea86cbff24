// Target-vocabulary tokens cannot be fed where the model expects source-vocabulary tokens.
use typeformer::prelude::*;

type Model = EncoderDecoder<100, 120, 32, 4, 8, 64, 1, 1, 16, PostNorm, Relu, Sinusoidal, Separate, f32, Cpu>;

fn main() {
    let dev = Cpu::default();
    let model = dev.build_module::<Model, f32>();
    let tgt = Tokens::<120>::from_sequences(&[vec![1, 2]]).unwrap();
    let _ = model.forward(&tgt, &tgt);
}
