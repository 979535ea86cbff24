//! Training: label-smoothed cross-entropy, the paper's warmup schedule, Adam with gradient
//! clipping, and the sequence-to-sequence training loop.

#[cfg(feature = "plots")]
mod attention_plot;
mod curve;
mod data_parallel;
mod loss;
mod optimizer;
mod schedule;
mod seq2seq;

#[cfg(feature = "plots")]
pub use attention_plot::*;
pub use curve::*;
pub use data_parallel::*;
pub use loss::*;
pub use optimizer::*;
pub use schedule::*;
pub use seq2seq::*;
mod task_run;
pub use task_run::*;
mod tape;
pub use tape::*;
mod lm;
pub use lm::*;
