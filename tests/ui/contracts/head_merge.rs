// Heads produced as 8 x 8 cannot be merged by an output projection that expects 4 x 16.
use typeformer::prelude::*;

fn main() {
    let dev = Cpu::default();
    let v_proj = dev.build_module::<HeadProjection<64, 8, 8, f32, Cpu>, f32>();
    let merge = dev.build_module::<HeadMerge<4, 16, 64, f32, Cpu>, f32>();
    let x: Tensor<(usize, usize, Const<64>), f32, Cpu> = dev.zeros_like(&(2, 5, Const));
    let _ = merge.forward(v_proj.forward(x));
}
