// Rotary tables are made for one head width: heads of 4 cannot take tables of width 8.
use typeformer::models::CausalLm;
use typeformer::nn::{LlamaBlock, RmsNorm, RotaryPositions};
use typeformer::prelude::*;

type Mismatched = CausalLm<
    20,
    16,
    2,
    RotaryPositions<12, 8, 10_000, f32, Cpu>,
    LlamaBlock<16, 4, 2, 4, 32, f32, Cpu>,
    RmsNorm<16, f32, Cpu>,
    TiedOutput,
    f32,
    Cpu,
>;

fn main() {
    let dev = Cpu::default();
    let model = dev.build_module::<Mismatched, f32>();
    let _ = model.forward(&Tokens::<20>::from_sequences(&[vec![3, 4]]).unwrap());
}
