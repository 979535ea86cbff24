// An output projection tied to a width-32 embedding cannot project width-64 hidden states.
use typeformer::prelude::*;

fn main() {
    let dev = Cpu::default();
    let embed = dev.build_module::<TokenEmbedding<100, 32, f32, Cpu>, f32>();
    let h: Tensor<(usize, usize, Const<64>), f32, Cpu> = dev.zeros_like(&(2, 5, Const));
    let _ = embed.logits(h);
}
