//! Data: the built-in sequence-to-sequence tasks, and language-model data (any text file as
//! bytes, or the built-in addition task).

mod lm;
mod tasks;

pub use lm::*;
pub use tasks::*;
