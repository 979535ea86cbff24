//! Llama-family weights from a GGUF file (llama.cpp's format) into a typed
//! [`Llama`](crate::models::Llama): the file's hyperparameters are checked against the type,
//! every difference listed by name, and llama.cpp's names and row order mapped onto ours.

use super::checkpoint::{build_for_restore, restore_from, restore_in_place, Read, Source, TensorFile};
use super::{Gguf, GgufValue};
use crate::error::{Error, Result};
use crate::models::LlamaModel;
use crate::FloatDtype;
use dfdx::prelude::*;
use std::collections::HashMap;

impl TensorFile for Gguf {
    fn names(&self) -> Vec<String> {
        self.tensors.iter().map(|t| t.name.clone()).collect()
    }
    fn read<E: FloatDtype>(&self, name: &str) -> Option<Read<E>> {
        let shape = self.tensor(name)?.shape.clone();
        Some(match self.read_f32(name) {
            Ok(values) => Ok((values.into_iter().map(|v| E::from_f32(v).unwrap_or(E::nan())).collect(), shape)),
            Err(e) => Err(e.to_string()),
        })
    }
}

/// Where a parameter of a Llama model with `heads` query and `kv_heads` key/value heads comes
/// from in a llama.cpp file. GGUF stores matrices `[out, in]` (as PyTorch does; ours are
/// `(in, out)`), and the rows of the query and key projections reordered for llama.cpp's
/// rotation, which this undoes.
pub fn gguf_llama_source(ours: &str, heads: usize, kv_heads: usize) -> Option<Source> {
    let matrix = |name: String| Some(Source::new(name).transposed());
    match ours {
        "embed.weight" => return Some(Source::new("token_embd.weight")),
        "norm.weight" => return Some(Source::new("output_norm.weight")),
        "head.weight" => return matrix("output.weight".into()),
        _ => {}
    }
    let rest = ours.strip_prefix("blocks.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let theirs = |name: &str| format!("blk.{layer}.{name}.weight");
    match part {
        "attn_norm.weight" => Some(Source::new(theirs("attn_norm"))),
        "ffn_norm.weight" => Some(Source::new(theirs("ffn_norm"))),
        "attn.w_q.weight" => Some(Source::new(theirs("attn_q")).rope_rows_of(heads).transposed()),
        "attn.w_k.weight" => Some(Source::new(theirs("attn_k")).rope_rows_of(kv_heads).transposed()),
        "attn.w_v.weight" => matrix(theirs("attn_v")),
        "attn.w_o.weight" => matrix(theirs("attn_output")),
        "ffn.gate.weight" => matrix(theirs("ffn_gate")),
        "ffn.up.weight" => matrix(theirs("ffn_up")),
        "ffn.down.weight" => matrix(theirs("ffn_down")),
        _ => None,
    }
}

/// The file's value of `key` as a whole number, or why not.
fn whole(file: &Gguf, key: &str) -> std::result::Result<Option<u64>, String> {
    match file.get(key) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| format!("{key} is {v:?}, not a whole number")),
    }
}

/// A Llama model type's hyperparameters, read off [`LlamaModel`] once so that the checks below
/// are compiled once rather than for every model type.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hyperparameters {
    pub vocab: usize,
    pub width: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_width: usize,
    pub ff: usize,
    pub layers: usize,
    pub context: usize,
    pub base: usize,
    pub tied: bool,
}

impl Hyperparameters {
    pub(super) fn of<M: LlamaModel<E, Dev>, E: FloatDtype, Dev: Device<E>>() -> Self {
        Self {
            vocab: M::VOCAB,
            width: M::WIDTH,
            heads: M::HEADS,
            kv_heads: M::KV_HEADS,
            head_width: M::HEAD_WIDTH,
            ff: M::FEED_FORWARD,
            layers: M::LAYERS,
            context: M::CONTEXT,
            base: M::ROPE_BASE,
            tied: M::TIED,
        }
    }
}

/// Compares the hyperparameters a GGUF file states with those of the model type and returns the
/// RMSNorm epsilon it states; an error lists every difference by its key.
fn check_hyperparameters(file: &Gguf, ours: Hyperparameters) -> Result<f64> {
    let Hyperparameters { vocab, width, heads, kv_heads, head_width, ff, layers, context, base, .. } = ours;
    let arch = file.get("general.architecture").and_then(GgufValue::as_str).unwrap_or("(none)");
    if arch != "llama" {
        return Err(Error::BadFile {
            path: file.path.clone(),
            reason: format!("general.architecture is `{arch}`; this loads Llama-family files (`llama`)"),
        });
    }
    let mut problems = Vec::new();
    let mut expect = |key: &str, want: usize, default: Option<usize>| match whole(file, key) {
        Err(e) => problems.push(e),
        Ok(None) if default.is_none() => problems.push(format!("{key} is missing; the model type has {want}")),
        Ok(found) => {
            let found = found.map_or(default.unwrap_or(want), |v| v as usize);
            if found != want {
                problems.push(format!("{key} is {found} in the file; the model type has {want}"));
            }
        }
    };
    expect("llama.block_count", layers, None);
    expect("llama.embedding_length", width, None);
    expect("llama.attention.head_count", heads, None);
    expect("llama.attention.head_count_kv", kv_heads, Some(heads));
    expect("llama.feed_forward_length", ff, None);
    // GGUF states a head width only as the rotary dimension count; Llama's is D / H otherwise.
    match (whole(file, "llama.rope.dimension_count"), whole(file, "llama.embedding_length"), whole(file, "llama.attention.head_count")) {
        (Ok(Some(found)), _, _) if found as usize != head_width => problems.push(format!(
            "llama.rope.dimension_count (the head width) is {found} in the file; the model type has {head_width}"
        )),
        (Ok(None), Ok(Some(d)), Ok(Some(h))) if h > 0 && (d / h) as usize != head_width => problems.push(format!(
            "the file's heads are {} wide (llama.embedding_length / llama.attention.head_count); the model type's are {head_width}",
            d / h
        )),
        _ => {}
    }
    match file.get("llama.rope.freq_base") {
        None if base != 10_000 => {
            problems.push(format!("llama.rope.freq_base is missing (10000); the model type has {base}"))
        }
        None => {}
        Some(v) => match v.as_f64() {
            Some(found) if found == base as f64 => {}
            Some(found) => {
                problems.push(format!("llama.rope.freq_base is {found} in the file; the model type has {base}"))
            }
            None => problems.push(format!("llama.rope.freq_base is {v:?}, not a number")),
        },
    }
    if let Some(kind) = file.get("llama.rope.scaling.type").and_then(GgufValue::as_str) {
        if kind != "none" {
            problems.push(format!("llama.rope.scaling.type is `{kind}`: scaled rotary positions are not supported"));
        }
    }
    if let Some(found) = whole(file, "llama.context_length").ok().flatten() {
        if (found as usize) < context {
            problems.push(format!(
                "llama.context_length is {found} in the file; the model type's context ({context}) is longer than it was trained for"
            ));
        }
    }
    let file_vocab = match whole(file, "llama.vocab_size") {
        Ok(Some(v)) => Some(v as usize),
        _ => file.get("tokenizer.ggml.tokens").and_then(GgufValue::as_array).map(<[GgufValue]>::len),
    };
    if let Some(found) = file_vocab {
        if found != vocab {
            problems.push(format!("the vocabulary has {found} tokens in the file; the model type has {vocab}"));
        }
    }
    let eps = match file.get("llama.attention.layer_norm_rms_epsilon") {
        None => 1e-5,
        Some(v) => match v.as_f64().filter(|&e| crate::nn::check_scalar("eps", e).is_ok()) {
            Some(e) => e,
            None => {
                problems
                    .push(format!("llama.attention.layer_norm_rms_epsilon is {v:?}; it must be a number in (0, 1)"));
                1e-5
            }
        },
    };
    verdict(&file.path, "the file", problems, eps)
}

/// `value` when the hyperparameters agreed, otherwise the error listing each difference.
pub(super) fn verdict(path: &std::path::Path, what: &str, problems: Vec<String>, value: f64) -> Result<f64> {
    if problems.is_empty() {
        return Ok(value);
    }
    Err(Error::CheckpointMismatch {
        path: path.into(),
        problems: format!("{what} is not this model type:\n{}", problems.join("\n")),
    })
}

/// Loads the weights of the Llama-family GGUF `file` into `model`, dequantized to `E`, after
/// checking the file's hyperparameters against the model's type (every difference listed by
/// key), and sets the RMSNorm epsilon the file states. Every tensor of the file must map onto
/// a parameter and every parameter have its tensor, of its shape; on any problem the model is
/// left unchanged.
///
/// A tied model ([`TiedOutput`](crate::models::TiedOutput)) takes files without
/// `output.weight`; an untied one ([`UntiedOutputNoBias`](crate::models::UntiedOutputNoBias))
/// needs it.
pub fn load_gguf_llama<M: LlamaModel<E, Dev>, E: FloatDtype, Dev: Device<E>>(model: &mut M, file: &Gguf) -> Result<()> {
    let ours = Hyperparameters::of::<M, E, Dev>();
    let eps = check_hyperparameters(file, ours)?;
    let map = |name: &str| gguf_llama_source(name, ours.heads, ours.kv_heads);
    restore_from(model, file, &HashMap::new(), &file.path, &map, &|_| false)?;
    crate::nn::set_scalar(model, "eps", eps)
}

/// A Llama model of this type built on `dev` with the weights of the GGUF `file`: as
/// [`load_gguf_llama`], without a model to keep unchanged on an error, so without the staging
/// copy that needs: peak memory is one f32 copy of the weights (and one tensor's bytes).
pub fn read_gguf_llama<M, E, Dev>(dev: &Dev, file: &Gguf) -> Result<M>
where
    M: LlamaModel<E, Dev> + BuildOnDevice<Dev, E, Built = M> + TensorCollection<E, Dev, To<E, Dev> = M>,
    E: FloatDtype,
    Dev: Device<E>,
{
    let ours = Hyperparameters::of::<M, E, Dev>();
    let eps = check_hyperparameters(file, ours)?;
    let map = |name: &str| gguf_llama_source(name, ours.heads, ours.kv_heads);
    let mut model: M = build_for_restore(dev, &map)?;
    crate::nn::set_dropout(&mut model, 0.0)?; // Llama trains without
    restore_in_place(&mut model, file, &HashMap::new(), &file.path, &map, &|_| false)?;
    crate::nn::set_scalar(&mut model, "eps", eps)?;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_names_map_onto_ours() {
        assert_eq!(gguf_llama_source("embed.weight", 9, 3), Some(Source::new("token_embd.weight")));
        assert_eq!(
            gguf_llama_source("blocks.7.attn.w_k.weight", 9, 3),
            Some(Source::new("blk.7.attn_k.weight").rope_rows_of(3).transposed())
        );
        assert_eq!(
            gguf_llama_source("blocks.0.ffn.down.weight", 9, 3),
            Some(Source::new("blk.0.ffn_down.weight").transposed())
        );
        assert_eq!(gguf_llama_source("blocks.x.attn_norm.weight", 9, 3), None);
        assert_eq!(gguf_llama_source("blocks.1.attn.w_q.bias", 9, 3), None);
    }
}
