// A residual connection cannot add a sub-layer output of width 32 to an input of width 64.
use typeformer::prelude::*;

fn main() {
    let dev = Cpu::default();
    let residual = dev.build_module::<Residual<64, PostNorm, f32, Cpu>, f32>();
    let ffn = dev.build_module::<PositionWiseFeedForward<32, 128, Relu, f32, Cpu>, f32>();
    let x: Tensor<(usize, usize, Const<64>), f32, Cpu> = dev.zeros_like(&(2, 5, Const));
    let _ = residual.around(x, |x| Ok(ffn.forward(x)));
}
