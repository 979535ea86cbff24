// Logits over 12 tokens cannot be scored against labels over a 13-token vocabulary.
use typeformer::prelude::*;
use typeformer::train::label_smoothed_cross_entropy;

fn main() {
    let dev = Cpu::default();
    let logits: Tensor<(usize, usize, Const<12>), f32, Cpu> = dev.zeros_like(&(1, 3, Const));
    let labels = Tokens::<13>::from_sequences(&[vec![1, 2, 3]]).unwrap();
    let _ = label_smoothed_cross_entropy(logits, &labels, 0.1);
}
