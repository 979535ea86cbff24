// A grouped-query model's state keeps its key/value heads: the state of a model with 2 of
// them is not accepted by one with 1 (multi-query), though width, heads and depth agree.
use typeformer::models::Llama;
use typeformer::prelude::*;

type Grouped = Llama<20, 16, 4, 2, 4, 32, 2, 12, 10_000, TiedOutput, f32, Cpu>;
type MultiQuery = Llama<20, 16, 4, 1, 4, 32, 2, 12, 10_000, TiedOutput, f32, Cpu>;

fn main() {
    let dev = Cpu::default();
    let (grouped, mq) = (dev.build_module::<Grouped, f32>(), dev.build_module::<MultiQuery, f32>());
    let mut state = grouped.start();
    let _ = mq.step(&mut state, &Tokens::<20>::from_sequences(&[vec![3, 4]]).unwrap());
}
