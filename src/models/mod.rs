//! Whole architectures built from the [`nn`](crate::nn) blocks.

mod embedding_layout;
mod encoder_decoder;

pub use embedding_layout::*;
pub use encoder_decoder::*;
mod seq2seq;
pub use seq2seq::*;
mod presets;
pub use presets::*;
