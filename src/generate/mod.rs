//! Decoding: turning a trained model's logits into sequences (greedy for encoder-decoder
//! models; greedy, temperature, top-k and top-p sampling for language models).

mod beam;
mod greedy;
mod language_model;
mod sampling;

pub use beam::*;
pub use greedy::*;
pub use language_model::*;
pub use sampling::*;
