//! Decoding: turning a trained model's logits into sequences.

mod greedy;

pub use greedy::*;
