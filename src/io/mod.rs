//! Files: checkpoints (safetensors), weights from PyTorch and Hugging Face, and training curves;
//! writes are always atomic.

mod atomic;
mod canvas;
mod checkpoint;
mod curve;
mod heatmap;
mod import;
mod run_dir;

pub use atomic::*;
pub use checkpoint::*;
pub use curve::*;
pub use heatmap::*;
pub use import::*;
pub use run_dir::*;
