// Llama blocks rotate their queries and keys: they do not stack under absolute (learned)
// positions, which they would never see.
use typeformer::models::CausalLm;
use typeformer::nn::{LlamaBlock, PositionalEncoding, RmsNorm};
use typeformer::prelude::*;

type Mixed = CausalLm<
    20,
    16,
    2,
    PositionalEncoding<12, 16, Learned, f32, Cpu>,
    LlamaBlock<16, 4, 2, 4, 32, f32, Cpu>,
    RmsNorm<16, f32, Cpu>,
    TiedOutput,
    f32,
    Cpu,
>;

fn main() {
    let dev = Cpu::default();
    let model = dev.build_module::<Mixed, f32>();
    let _ = model.forward(&Tokens::<20>::from_sequences(&[vec![3, 4]]).unwrap());
}
