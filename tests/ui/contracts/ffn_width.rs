// A feed-forward network of width 64 cannot take a width-32 input.
use typeformer::prelude::*;

fn main() {
    let dev = Cpu::default();
    let ffn = dev.build_module::<PositionWiseFeedForward<64, 256, Gelu, f32, Cpu>, f32>();
    let x: Tensor<(usize, usize, Const<32>), f32, Cpu> = dev.zeros_like(&(2, 5, Const));
    let _ = ffn.forward(x);
}
