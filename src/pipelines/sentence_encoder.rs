//! Sentence embeddings (sentence-transformers): a BERT encoder, mean pooling over the real tokens
//! and L2 normalisation, loaded from a model directory as Hugging Face and sentence-transformers
//! save it (`config.json`, `model.safetensors`, `tokenizer.json`, `sentence_bert_config.json`,
//! `modules.json`).

use crate::data::TextTokenizer;
use crate::error::{Error, Result};
use crate::io::{load_hf_bert, read_json};
use crate::models::{l2_normalize, mean_pool, Bert, BertConfig};
use crate::nn::{set_dropout, set_layer_norm_eps, Activation, NormPlacement, PositionKind, Presence};
use crate::shape::Tokens;
use crate::FloatDtype;
use dfdx::prelude::*;
use serde_json::Value;
use std::path::Path;

/// What a sentence-transformers `modules.json` lists, as far as an encoder needs it.
struct Modules {
    /// The pooling module's configuration.
    pooling: Option<std::path::PathBuf>,
    /// Whether the embeddings are normalised.
    normalize: bool,
}

impl Modules {
    /// Reads `dir/modules.json`: a Transformer at the directory's root, a Pooling module, an
    /// optional Normalize; any other module (a Dense layer, say) would change the embeddings,
    /// so it is refused. Without the file: mean pooling from `1_Pooling`, normalised.
    fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("modules.json");
        if !path.exists() {
            return Ok(Self { pooling: Some(dir.join("1_Pooling").join("config.json")), normalize: true });
        }
        let bad = |reason: String| Error::BadFile { path: path.clone(), reason };
        let json = read_json(&path)?;
        let list = json.as_array().ok_or_else(|| bad("not a list of modules".into()))?;
        let mut modules = Self { pooling: None, normalize: false };
        for module in list {
            let kind = module
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("a module without a type: {module}")))?;
            let sub = module.get("path").and_then(Value::as_str).unwrap_or("");
            match kind.rsplit('.').next().unwrap_or(kind) {
                "Transformer" if sub.is_empty() => {}
                "Transformer" => {
                    return Err(bad(format!(
                        "the Transformer module is in `{sub}`; only one at the directory's root loads"
                    )))
                }
                "Pooling" => modules.pooling = Some(dir.join(sub).join("config.json")),
                "Normalize" => modules.normalize = true,
                other => {
                    return Err(bad(format!(
                        "module `{other}` is not supported (only Transformer, Pooling and Normalize): the embeddings \
                         would differ from sentence-transformers'"
                    )))
                }
            }
        }
        if modules.pooling.is_none() {
            return Err(bad("no Pooling module: an encoder gives one vector per token, not per text".into()));
        }
        Ok(modules)
    }
}

/// Refuses a pooling configuration other than the mean over tokens of width `d`.
fn check_mean_pooling(path: &Path, d: usize) -> Result<()> {
    let bad = |reason: String| Error::BadFile { path: path.into(), reason };
    let json = read_json(path)?;
    let config = json.as_object().ok_or_else(|| bad("not a pooling configuration".into()))?;
    for (key, value) in config {
        let on = value.as_bool();
        match key.as_str() {
            "pooling_mode_mean_tokens" if on != Some(true) => {
                return Err(bad("only mean pooling is supported (pooling_mode_mean_tokens is not true)".into()))
            }
            "pooling_mode_mean_tokens" => {}
            mode if mode.starts_with("pooling_mode_") && on == Some(true) => {
                return Err(bad(format!("only mean pooling is supported, and {mode} is true")))
            }
            "word_embedding_dimension" if value.as_u64() != Some(d as u64) => {
                return Err(bad(format!("word_embedding_dimension is {value}, the model's width is {d}")))
            }
            _ => {}
        }
    }
    if !config.contains_key("pooling_mode_mean_tokens") {
        return Err(bad("only mean pooling is supported (no pooling_mode_mean_tokens)".into()));
    }
    Ok(())
}

/// A sentence-transformers model: texts in, one unit-length (when the model normalises) vector
/// of width `D` per text out. `M` is a [`Bert`] type, such as [`MiniLmL6`](crate::models::MiniLmL6).
#[derive(Debug, Clone)]
pub struct SentenceEncoder<M> {
    /// The encoder.
    pub model: M,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// Whether embeddings are scaled to unit length: the model lists a `Normalize` module in
    /// `modules.json` (or has no `modules.json`).
    pub normalize: bool,
    /// Tensors of the checkpoint the encoder does not use (the heads of a `BertFor...` model).
    pub unused: Vec<String>,
}

impl<
        const V: usize,
        const D: usize,
        const H: usize,
        const HD: usize,
        const F: usize,
        const L: usize,
        const P: usize,
        const TT: usize,
        N: NormPlacement,
        A: Activation,
        K: PositionKind,
        E: FloatDtype,
        Dev: Device<E>,
        Pool: Presence,
    > SentenceEncoder<Bert<V, D, H, HD, F, L, P, TT, N, A, K, E, Dev, Pool>>
{
    /// Loads the model in directory `dir` onto `dev`. An error says what is missing or which
    /// dimensions of `config.json` differ from the model type.
    pub fn load(dir: &Path, dev: &Dev) -> Result<Self> {
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let mismatches = Bert::<V, D, H, HD, F, L, P, TT, N, A, K, E, Dev, Pool>::config_mismatches(&config);
        if !mismatches.is_empty() {
            return Err(Error::InvalidConfig(format!(
                "{} does not describe this model type:\n{}",
                dir.join("config.json").display(),
                mismatches.join("\n")
            )));
        }
        // sentence-transformers truncates to max_seq_length (256 for all-MiniLM-L6-v2).
        let max_len = match dir.join("sentence_bert_config.json") {
            p if p.exists() => match read_json(&p)?.get("max_seq_length") {
                None => P,
                Some(v) => {
                    v.as_u64().filter(|&n| n >= 2).map(|n| n.min(P as u64) as usize).ok_or_else(|| Error::BadFile {
                        path: p.clone(),
                        reason: format!("max_seq_length is {v}; it must be a whole number of at least 2"),
                    })?
                }
            },
            _ => P,
        };
        let Modules { pooling, normalize } = Modules::read(dir)?;
        if let Some(pooling) = pooling.filter(|p| p.exists()) {
            check_mean_pooling(&pooling, D)?;
        }
        let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"), max_len.min(P))?;
        if tokenizer.vocab_size() > V {
            return Err(Error::InvalidConfig(format!(
                "the tokenizer has {} ids, the model only {V}",
                tokenizer.vocab_size()
            )));
        }
        let mut model = crate::try_build::<Bert<V, D, H, HD, F, L, P, TT, N, A, K, E, Dev, Pool>, E, Dev>(dev)?;
        let unused = load_hf_bert(&mut model, &dir.join("model.safetensors"))?.unused;
        set_layer_norm_eps(&mut model, config.layer_norm_eps)?;
        set_dropout(&mut model, 0.0)?;
        Ok(Self { model, tokenizer, normalize, unused })
    }

    /// The embeddings `(B, D)` of `texts`, as one padded batch.
    pub fn embed(&self, texts: &[&str]) -> Result<Tensor<(usize, Const<D>), E, Dev>> {
        let tokens = Tokens::<V>::from_sequences(&self.tokenizer.encode_batch(texts)?)?;
        let pooled = mean_pool(&self.model.forward(&tokens, None)?, tokens.lengths())?;
        Ok(if self.normalize { l2_normalize(pooled) } else { pooled })
    }

    /// The embedding of every text, in order, computed in batches of at most `batch_size` texts
    /// of similar length (less padding); the result does not depend on the batching.
    pub fn embed_all(&self, texts: &[&str], batch_size: usize) -> Result<Vec<Vec<E>>> {
        if batch_size == 0 {
            return Err(Error::InvalidConfig("batch size must be at least 1".into()));
        }
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(texts[i].len()));
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(batch_size) {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
            let rows = self.embed(&batch)?.as_vec();
            for (row, &i) in rows.chunks_exact(D).zip(chunk) {
                out[i] = row.to_vec();
            }
        }
        Ok(out)
    }
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine_similarity<E: FloatDtype>(a: &[E], b: &[E]) -> f64 {
    let dot = |x: &[E], y: &[E]| {
        x.iter().zip(y).map(|(p, q)| p.to_f64().unwrap_or(0.0) * q.to_f64().unwrap_or(0.0)).sum::<f64>()
    };
    let norms = (dot(a, a) * dot(b, b)).sqrt();
    if norms == 0.0 {
        0.0
    } else {
        dot(a, b) / norms
    }
}
