// Embeddings of width 32 cannot feed an encoder of width 64.
use typeformer::prelude::*;

fn main() {
    let dev = Cpu::default();
    let embed = dev.build_module::<TokenEmbedding<100, 32, f32, Cpu>, f32>();
    let encoder = dev.build_module::<Encoder<64, 8, 8, 256, 2, PreNorm, Gelu, f32, Cpu>, f32>();
    let ids = Tokens::<100>::from_sequences(&[vec![1, 2, 3]]).unwrap();
    let x = embed.forward(ids.to_tensor(&dev));
    let _ = encoder.forward(x, &MaskSpec::none());
}
