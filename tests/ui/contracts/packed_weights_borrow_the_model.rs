// Packed copies of a model's weights are only right while the weights do not change:
// `PackedWeights` borrows the model, so the model cannot be changed while it is in use.
use typeformer::prelude::*;

fn main() {
    let dev = Cpu::default();
    let mut mha = dev.build_module::<MultiHeadAttention<8, 2, 4, f32, Cpu>, f32>();
    let packed = PackedWeights::of(&mha);
    mha.w_q.weight = dev.zeros();
    packed.run(|| ());
}
