//! Data: the built-in sequence-to-sequence tasks, language-model data (any text file as bytes, or
//! the built-in addition task), and pretrained models' subword tokenizers.

mod lm;
mod tasks;
mod text_tokenizer;

pub use lm::*;
pub use tasks::*;
pub use text_tokenizer::*;
