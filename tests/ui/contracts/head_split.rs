// Queries split into 8 heads of width 8 cannot meet keys split into 4 heads of width 16.
use typeformer::prelude::*;

fn main() {
    let dev = Cpu::default();
    let q_proj = dev.build_module::<HeadProjection<64, 8, 8, f32, Cpu>, f32>();
    let k_proj = dev.build_module::<HeadProjection<64, 4, 16, f32, Cpu>, f32>();
    let x: Tensor<(usize, usize, Const<64>), f32, Cpu> = dev.zeros_like(&(2, 5, Const));
    let q = q_proj.forward(x.clone());
    let k = k_proj.forward(x.clone());
    let _ = attention_weights(q, k, None);
}
