// Cross-attention of width 64 cannot attend to an encoder memory of width 32.
use typeformer::prelude::*;

fn main() {
    let dev = Cpu::default();
    let mha = dev.build_module::<MultiHeadAttention<64, 8, 8, f32, Cpu>, f32>();
    let x: Tensor<(usize, usize, Const<64>), f32, Cpu> = dev.zeros_like(&(2, 5, Const));
    let memory: Tensor<(usize, usize, Const<32>), f32, Cpu> = dev.zeros_like(&(2, 7, Const));
    let _ = mha.cross_attention(x, &memory, &MaskSpec::none());
}
