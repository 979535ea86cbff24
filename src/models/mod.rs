//! Whole architectures built from the [`nn`](crate::nn) blocks.

mod architecture;
mod bert;
mod decoder_only;
mod embedding_layout;
mod encoder_decoder;
mod language_model;

pub use architecture::*;
pub use bert::*;
pub use decoder_only::*;
pub use embedding_layout::*;
pub use encoder_decoder::*;
pub use language_model::*;
mod seq2seq;
pub use seq2seq::*;
mod presets;
pub use presets::*;
mod summary;
pub use summary::*;
