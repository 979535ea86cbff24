// Q/K/V projections of a width-64 attention cannot take a width-32 input.
use typeformer::prelude::*;

fn main() {
    let dev = Cpu::default();
    let mha = dev.build_module::<MultiHeadAttention<64, 8, 8, f32, Cpu>, f32>();
    let x: Tensor<(usize, usize, Const<32>), f32, Cpu> = dev.zeros_like(&(2, 5, Const));
    let _ = mha.self_attention(x, &MaskSpec::none());
}
