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
    /// `inner.get_vocab_size(true)`, kept: `tokenizers` computes it by copying the whole
    /// vocabulary, which every decoded token would pay for (a fifth of a generation's time).
    vocab_size: usize,
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
        let vocab_size = inner.get_vocab_size(true);
        Ok(Self { inner, max_len, vocab_size })
    }

    /// The byte-level BPE tokenizer (GPT-2's kind, `tokenizer.ggml.model = "gpt2"`) that a GGUF
    /// file carries in its metadata: the vocabulary (`tokenizer.ggml.tokens`), the merges
    /// (`tokenizer.ggml.merges`) and which tokens are control tokens (`<|im_start|>`), which
    /// are matched whole in the text. Texts are not truncated. An error names what the file
    /// lacks or holds instead (a SentencePiece `llama` vocabulary is not read yet).
    pub fn from_gguf(file: &crate::io::Gguf) -> Result<Self> {
        use crate::io::GgufValue;
        use serde_json::{json, Map, Value};
        let bad = |reason: String| Error::BadFile { path: file.path.clone(), reason };
        let strings = |key: &str| -> Result<Vec<&str>> {
            let array = file.get(key).and_then(GgufValue::as_array).ok_or_else(|| bad(format!("no `{key}` array")))?;
            array.iter().map(|v| v.as_str().ok_or_else(|| bad(format!("`{key}` holds {v:?}, not a string")))).collect()
        };
        match file.get("tokenizer.ggml.model").and_then(GgufValue::as_str) {
            Some("gpt2") => {}
            Some(other) => {
                return Err(bad(format!(
                    "tokenizer.ggml.model is `{other}`; this typeformer reads byte-level BPE (`gpt2`) vocabularies"
                )))
            }
            None => return Err(bad("no tokenizer.ggml.model: the file carries no tokenizer".into())),
        }
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        // 3 is a control token, 4 a user-defined one (ggml's token types): both are matched
        // whole in the text, never split by the byte-level rules.
        let types = match file.get("tokenizer.ggml.token_type").and_then(GgufValue::as_array) {
            Some(types) if types.len() == tokens.len() => types.iter().map(|t| t.as_u64().unwrap_or(1)).collect(),
            Some(types) => {
                return Err(bad(format!("{} token types for {} tokens", types.len(), tokens.len())));
            }
            None => vec![1; tokens.len()],
        };
        let mut vocab = Map::new();
        let mut added = Vec::new();
        for (id, (&token, &kind)) in tokens.iter().zip(&types).enumerate() {
            if vocab.insert(token.to_string(), json!(id)).is_some() {
                return Err(bad(format!("token `{token}` appears twice in tokenizer.ggml.tokens")));
            }
            if kind == 3 || kind == 4 {
                added.push(json!({
                    "id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": false, "special": kind == 3,
                }));
            }
        }
        let merges: Vec<Value> = merges
            .iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok(json!([a, b])),
                _ => Err(bad(format!("merge `{m}` is not two tokens separated by a space"))),
            })
            .collect::<Result<_>>()?;
        let byte_level =
            json!({ "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true });
        let spec = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null, "pre_tokenizer": byte_level, "post_processor": null, "decoder": byte_level,
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges,
            },
        });
        let inner: Tokenizer =
            spec.to_string().parse().map_err(|e| bad(format!("its tokenizer does not build ({e})")))?;
        let vocab_size = inner.get_vocab_size(true);
        Ok(Self { inner, max_len: usize::MAX, vocab_size })
    }

    /// The text of `ids` (control tokens included as written).
    pub fn decode(&self, ids: &[usize]) -> Result<String> {
        let vocab = self.vocab_size();
        let ids: Vec<u32> = ids
            .iter()
            .enumerate()
            .map(|(position, &token)| {
                u32::try_from(token).ok().filter(|_| token < vocab).ok_or(Error::TokenOutOfRange {
                    token,
                    item: 0,
                    position,
                    vocab,
                })
            })
            .collect::<Result<_>>()?;
        self.inner.decode(&ids, false).map_err(|e| Error::InvalidConfig(format!("tokenizer failed: {e}")))
    }

    /// The ids of `text` as written, no special tokens added (a chat template writes its own);
    /// truncated only where `max_len` says (never for a GGUF file's tokenizer).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<usize>> {
        let encoding =
            self.inner.encode(text, false).map_err(|e| Error::InvalidConfig(format!("tokenizer failed: {e}")))?;
        Ok(encoding.get_ids().iter().map(|&id| id as usize).collect())
    }

    /// The id of the token written `token` (`<|im_end|>`), if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<usize> {
        self.inner.token_to_id(token).map(|id| id as usize)
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The most ids one text becomes (`usize::MAX`: no limit).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The ids of each text, special tokens included.
    ///
    /// Only as much of a long text is tokenized as its first `max_len` ids need: a prefix that
    /// ends at whitespace, grown until it yields `max_len` ids or is the whole text (a 20 MB
    /// line costs what its first few kilobytes cost). Cutting at whitespace keeps the ids of
    /// the prefix those of the whole text, as pre-tokenizers split there. A prefix grows to at
    /// most a kilobyte per id: a text whose first `max_len` ids span more than that (words of
    /// thousands of letters, pages of blank space) is read up to there.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<usize>>> {
        // Subword tokens are rarely longer than a few characters; 16 bytes per id is generous.
        let mut budget = self.max_len.saturating_mul(16).saturating_add(64);
        let most = self.max_len.saturating_mul(1024).saturating_add(65536);
        let mut ids = vec![Vec::new(); texts.len()];
        let mut pending: Vec<usize> = (0..texts.len()).collect();
        while !pending.is_empty() {
            let prefixes: Vec<&str> = pending.iter().map(|&i| whitespace_prefix(texts[i], budget)).collect();
            let encodings = self
                .inner
                .encode_batch(prefixes.clone(), true)
                .map_err(|e| Error::InvalidConfig(format!("tokenizer failed: {e}")))?;
            let mut short = Vec::new();
            for ((&i, prefix), encoding) in pending.iter().zip(&prefixes).zip(&encodings) {
                ids[i] = encoding.get_ids().iter().map(|&id| id as usize).collect();
                if ids[i].len() < self.max_len && prefix.len() < texts[i].len() && budget < most {
                    short.push(i);
                }
            }
            pending = short;
            budget = budget.saturating_mul(4).min(most);
        }
        Ok(ids)
    }
}

/// The start of `text`: all of it when it is at most `budget` bytes, otherwise up to the first
/// whitespace at or after `budget` bytes (within a kilobyte; a longer word is cut there, and
/// pre-tokenizers make an unknown or split word of such a run either way).
fn whitespace_prefix(text: &str, budget: usize) -> &str {
    if text.len() <= budget {
        return text;
    }
    let start = (budget..=text.len()).find(|&b| text.is_char_boundary(b)).unwrap_or(text.len());
    let window = (start + 1024..=text.len()).find(|&b| text.is_char_boundary(b)).unwrap_or(text.len());
    let end = text[start..window].find(char::is_whitespace).map_or(window, |k| start + k);
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::whitespace_prefix;

    #[test]
    fn prefixes_end_at_whitespace_on_a_char_boundary() {
        assert_eq!(whitespace_prefix("short", 16), "short");
        assert_eq!(whitespace_prefix("aaaa bbbb cccc", 6), "aaaa bbbb");
        assert_eq!(whitespace_prefix("aaaa bbbb", 4), "aaaa");
        let wide = "é".repeat(600);
        let cut = whitespace_prefix(&wide, 3);
        assert_eq!(cut.len(), 1028, "a word with no whitespace is cut a kilobyte on, at a char boundary");
    }
}
