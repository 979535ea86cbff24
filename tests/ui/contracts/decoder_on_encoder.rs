// A width-64 decoder cannot be stacked on a width-32 encoder.
use typeformer::prelude::*;

fn main() {
    let dev = Cpu::default();
    let encoder = dev.build_module::<Encoder<32, 4, 8, 128, 2, PostNorm, Relu, f32, Cpu>, f32>();
    let decoder = dev.build_module::<Decoder<64, 8, 8, 256, 2, PostNorm, Relu, f32, Cpu>, f32>();
    let src: Tensor<(usize, usize, Const<32>), f32, Cpu> = dev.zeros_like(&(2, 7, Const));
    let tgt: Tensor<(usize, usize, Const<64>), f32, Cpu> = dev.zeros_like(&(2, 5, Const));
    let memory = encoder.forward(src, &MaskSpec::none()).unwrap();
    let masks = DecoderMasks { self_mask: MaskSpec::causal(None), memory_mask: MaskSpec::none() };
    let _ = decoder.forward(tgt, &memory, &masks);
}
