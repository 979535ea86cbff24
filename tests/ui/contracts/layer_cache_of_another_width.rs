// A decoder layer's cache started over a width-64 memory is not accepted by a width-32 layer.
use typeformer::prelude::*;

fn main() {
    let dev = Cpu::default();
    let wide = dev.build_module::<DecoderLayer<64, 4, 8, 64, PostNorm, Relu, f32, Cpu>, f32>();
    let narrow = dev.build_module::<DecoderLayer<32, 4, 8, 64, PostNorm, Relu, f32, Cpu>, f32>();
    let memory: Tensor<(usize, usize, Const<64>), f32, Cpu> = dev.zeros_like(&(1, 5, Const));
    let mut cache = wide.start_cache(&memory);
    let x: Tensor<(usize, usize, Const<32>), f32, Cpu> = dev.zeros_like(&(1, 1, Const));
    let _ = narrow.forward_cached(x, &mut cache, &[5]);
}
