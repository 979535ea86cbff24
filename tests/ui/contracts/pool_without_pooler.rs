// A BERT declared without a pooler has no `pool`: calling it is a type error, not a run-time one.
use typeformer::prelude::*;

type NoPool = Bert<30, 16, 2, 8, 32, 1, 12, 2, PostNorm, Gelu, Learned, f32, Cpu, NoPooler>;

fn main() {
    let model = Cpu::default().build_module::<NoPool, f32>();
    let tokens = Tokens::<30>::from_sequences(&[vec![3, 4]]).unwrap();
    let hidden = model.forward(&tokens, None).unwrap();
    let _ = model.pool(hidden);
}
