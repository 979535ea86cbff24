//! Files: checkpoints (safetensors), run directories, weights from PyTorch and Hugging Face,
//! llama.cpp's GGUF files, and pictures; writes are always atomic.

mod atomic;
#[cfg(feature = "plots")]
mod canvas;
mod checkpoint;
mod gguf;
mod gguf_llama;
#[cfg(feature = "plots")]
mod heatmap;
mod hf_llama;
mod import;
mod quantized;
mod run_dir;

pub use atomic::*;
#[cfg(feature = "plots")]
pub(crate) use canvas::Canvas;
pub use checkpoint::*;
pub use gguf::*;
pub use gguf_llama::*;
#[cfg(feature = "plots")]
pub use heatmap::*;
pub use hf_llama::*;
pub use import::*;
pub use quantized::QuantizedWeights;
pub use run_dir::*;
