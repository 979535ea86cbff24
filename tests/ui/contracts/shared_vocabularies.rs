// Source and target embeddings can be shared only when the vocabularies are the same size.
use typeformer::prelude::*;

type Model = EncoderDecoder<100, 120, 32, 4, 8, 64, 1, 1, 16, PostNorm, Relu, Sinusoidal, SharedTied, f32, Cpu>;

fn main() {
    let dev = Cpu::default();
    let _ = dev.build_module::<Model, f32>();
}
