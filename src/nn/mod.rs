//! The Transformer's building blocks, one concept per file.
//!
//! Every block is generic over its dtype `E` and dfdx device `Dev`, takes its widths as const
//! generics and accepts any batch and sequence [`Dim`](dfdx::shapes::Dim). A block's `forward`
//! is generic over the dfdx tape `T`: pass tensors without a tape for inference, traced tensors
//! for training. Dropout is active exactly when the input is traced.

mod attention;
mod bias;
mod causal;
mod decoder;
mod dropout;
mod embedding;
mod encoder;
mod feed_forward;
mod grouped_attention;
pub(crate) mod init;
mod linear;
mod llama_block;
pub use linear::Linear;
pub(crate) use linear::{project, project_shared};
pub use llama_block::LlamaBlock;
mod mask;
#[macro_use]
mod norm;
mod optional_linear;
mod packed;
mod positional;
mod residual;
mod rms_norm;
mod rotary;
mod scalars;
mod stack;
mod swiglu;
mod training;

pub use attention::*;
pub use bias::*;
pub use causal::*;
pub use decoder::*;
pub use dropout::*;
pub use embedding::*;
pub use encoder::*;
pub use feed_forward::*;
pub use grouped_attention::GroupedQueryAttention;
pub use mask::*;
pub use norm::*;
pub use optional_linear::*;
pub use packed::PackedWeights;
pub use positional::*;
pub use residual::*;
pub use rms_norm::RmsNorm;
pub use rotary::{RotaryEmbedding, RotaryPositions};
pub use scalars::check_scalar;
pub(crate) use scalars::set_scalar;
pub use stack::*;
pub use swiglu::SwiGlu;
pub use training::training_tape;
