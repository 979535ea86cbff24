//! Files: checkpoints (safetensors) and training curves, always written atomically.

mod atomic;
mod checkpoint;
mod curve;

pub use atomic::*;
pub use checkpoint::*;
pub use curve::*;
