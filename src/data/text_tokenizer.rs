//! Subword tokenizers of pretrained models, read from a Hugging Face `tokenizer.json` with the
//! `tokenizers` crate (WordPiece for BERT, byte-level BPE for GPT-2, ...).

use crate::error::{Error, Result};
use std::path::Path;
use tokenizers::{Tokenizer, TruncationParams};

/// A pretrained tokenizer that turns texts into ids, special tokens included (`[CLS] ... [SEP]`
/// for BERT), truncated to `max_len` ids and never padded (batches are padded by
/// [`Tokens`](crate::shape::Tokens), with lengths, so padding is masked).
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    max_len: usize,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer").field("vocab", &self.vocab_size()).field("max_len", &self.max_len).finish()
    }
}

impl TextTokenizer {
    /// Reads `tokenizer.json`; texts are truncated to `max_len` ids (256 for
    /// all-MiniLM-L6-v2, as sentence-transformers does). Any padding the file configures is
    /// turned off.
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self> {
        if max_len < 2 {
            return Err(Error::InvalidConfig(format!("max_len must leave room for special tokens, got {max_len}")));
        }
        let bad = |reason: String| Error::BadFile { path: path.into(), reason };
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        let mut inner: Tokenizer = text.parse().map_err(|e| bad(format!("not a Hugging Face tokenizer.json ({e})")))?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams { max_length: max_len, ..Default::default() }))
            .map_err(|e| bad(format!("cannot truncate to {max_len} tokens ({e})")))?;
        Ok(Self { inner, max_len })
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The most ids one text becomes.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The ids of each text, special tokens included.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<usize>>> {
        let encodings = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::InvalidConfig(format!("tokenizer failed: {e}")))?;
        Ok(encodings.iter().map(|e| e.get_ids().iter().map(|&id| id as usize).collect()).collect())
    }
}
