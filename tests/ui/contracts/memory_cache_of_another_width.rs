// Keys and values projected by a width-64 cross-attention cannot be read by a width-32 one with
// the same heads: the cache carries the width of the layer that made it.
use typeformer::prelude::*;

fn main() {
    let dev = Cpu::default();
    let wide = dev.build_module::<MultiHeadAttention<64, 4, 8, f32, Cpu>, f32>();
    let narrow = dev.build_module::<MultiHeadAttention<32, 4, 8, f32, Cpu>, f32>();
    let memory: Tensor<(usize, usize, Const<64>), f32, Cpu> = dev.zeros_like(&(1, 5, Const));
    let cache = wide.project_memory(&memory);
    let x: Tensor<(usize, usize, Const<32>), f32, Cpu> = dev.zeros_like(&(1, 1, Const));
    let _ = narrow.cross_attention_cached(x, &cache, &MaskSpec::none());
}
