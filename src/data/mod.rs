//! Data: the built-in sequence-to-sequence tasks.

mod tasks;

pub use tasks::*;
