// A key projection of 2 heads cannot stand in for one of 1 in grouped-query attention.
use typeformer::nn::{GroupedQueryAttention, HeadProjection, NoBias};
use typeformer::prelude::*;

fn main() {
    let dev = Cpu::default();
    let mut attn = dev.build_module::<GroupedQueryAttention<16, 4, 1, 4, f32, Cpu>, f32>();
    attn.w_k = dev.build_module::<HeadProjection<16, 2, 4, f32, Cpu, NoBias>, f32>();
}
