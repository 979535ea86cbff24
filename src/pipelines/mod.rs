//! Applications assembled from the library's layers: a model type, its tokenizer, the files a
//! model directory holds and what they configure. Nothing below `pipelines` depends on them.

mod chat;
mod sentence_encoder;

pub use chat::*;
pub use sentence_encoder::*;
