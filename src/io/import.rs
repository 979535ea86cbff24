//! Weights trained elsewhere: PyTorch's `nn.Transformer` family and Hugging Face's BERT and
//! GPT-2 checkpoints, saved as safetensors, mapped by name onto our models.
//!
//! Each format is a function from one of our dotted parameter names to the [`Source`] tensor in
//! the file (renamed, one block of a packed Q/K/V matrix, transposed). Our projections store
//! their weights `(in, out)`, the layout the matrix product reads in place, so PyTorch's
//! `nn.Linear` weights (`[out, in]`) are transposed and GPT-2's `Conv1D` ones (`[in, out]`) are not. [`import_weights`]
//! then checks every name, shape and dtype and reports all problems at once.

use super::{import_weights, parameter_shapes, tensor_names, Source, Transpose};
use crate::error::{Error, Result};
use crate::models::BertConfig;
use crate::FloatDtype;
use dfdx::nn::tensor_collection::TensorCollection;
use dfdx::prelude::*;
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;

/// Splits `ours` into its leading path and the last two segments: `(path., module, param)`.
fn split_tail(ours: &str) -> Option<(&str, &str, &str)> {
    let (rest, param) = ours.rsplit_once('.')?;
    match rest.rsplit_once('.') {
        Some((path, module)) => Some((&ours[..path.len() + 1], module, param)),
        None => Some(("", rest, param)),
    }
}

/// The index of a Q/K/V projection in a packed `[3 * D, ...]` matrix.
fn qkv_index(module: &str) -> Option<usize> {
    ["w_q", "w_k", "w_v"].iter().position(|&m| m == module)
}

/// Our parameter `ours` from a file that stores projection weights `[out, in]`, as PyTorch and
/// typeformer checkpoints from before the `(in, out)` layout do.
pub(crate) fn out_in_source(ours: &str) -> Source {
    match split_tail(ours) {
        Some((_, module, param)) => linear(Source::new(ours), module, param),
        None => Source::new(ours),
    }
}

/// The modules that project out of the blocks: an untied output head (`head` of a
/// decoder-only model, `generator` of an encoder-decoder) and BERT's `pooler`.
const HEADS: [&str; 3] = ["head", "generator", "pooler"];

/// Whether `ours` is the weight of an output head or pooler (see [`HEADS`]), the projections
/// typeformer stored `[out, in]` longest.
pub(crate) fn is_head_weight(ours: &str) -> bool {
    split_tail(ours).is_some_and(|(_, module, param)| param == "weight" && HEADS.contains(&module))
}

/// `source`, transposed when it is the weight of a projection stored `(in, out)` here and
/// `[out, in]` in a PyTorch `nn.Linear`.
/// Head projections, once stored `(H, HD, D)`, read as `[H * HD, D]`; the others as `[out, ...in]`.
fn linear(source: Source, module: &str, param: &str) -> Source {
    match (module, param) {
        (m, "weight") if qkv_index(m).is_some() => source.transposed_as(Transpose::LastAxisColumns),
        ("w_o" | "linear1" | "linear2", "weight") => source.transposed(),
        (m, "weight") if HEADS.contains(&m) => source.transposed(),
        _ => source,
    }
}

/// PyTorch's names for one of our parameters, for `nn.MultiheadAttention`,
/// `nn.TransformerEncoderLayer`, `nn.TransformerDecoderLayer`, `nn.TransformerEncoder`/`Decoder`
/// (with `norm`) and `nn.Transformer`: Q/K/V come from the packed `in_proj_weight`/`in_proj_bias`,
/// the output projection is `out_proj`, the feed-forward layers `linear1`/`linear2`, and
/// cross-attention is `multihead_attn`.
pub fn torch_source(ours: &str) -> Option<Source> {
    let (path, module, param) = split_tail(ours)?;
    let path = path.replace("ffn.", "").replace("cross_attn.", "multihead_attn.");
    let source = match (module, param) {
        (m, "weight" | "bias") if qkv_index(m).is_some() => {
            Source::new(format!("{path}in_proj_{param}")).part(qkv_index(m)?, 3)
        }
        ("w_o", _) => Source::new(format!("{path}out_proj.{param}")),
        _ => Source::new(format!("{path}{module}.{param}")),
    };
    Some(linear(source, module, param))
}

/// Hugging Face `BertModel` names for a [`Bert`](crate::models::Bert) parameter, under `prefix`
/// (`""`, or `"bert."` in checkpoints of models with heads).
pub fn hf_bert_source(ours: &str, prefix: &str) -> Option<Source> {
    let segments: Vec<&str> = ours.split('.').collect();
    let (module, param) = match segments[..] {
        [.., module, param] => (module, param),
        _ => return None,
    };
    let theirs = match segments[..] {
        ["embed", "weight"] => "embeddings.word_embeddings.weight".to_string(),
        ["pos", "weight"] => "embeddings.position_embeddings.weight".to_string(),
        ["token_type", "weight"] => "embeddings.token_type_embeddings.weight".to_string(),
        ["embed_norm", param] => format!("embeddings.LayerNorm.{param}"),
        ["pooler", param] => format!("pooler.dense.{param}"),
        ["encoder", "layers", i, ref inner @ ..] => {
            let inner = match inner {
                ["self_attn", "w_q", param] => format!("attention.self.query.{param}"),
                ["self_attn", "w_k", param] => format!("attention.self.key.{param}"),
                ["self_attn", "w_v", param] => format!("attention.self.value.{param}"),
                ["self_attn", "w_o", param] => format!("attention.output.dense.{param}"),
                ["norm1", param] => format!("attention.output.LayerNorm.{param}"),
                ["ffn", "linear1", param] => format!("intermediate.dense.{param}"),
                ["ffn", "linear2", param] => format!("output.dense.{param}"),
                ["norm2", param] => format!("output.LayerNorm.{param}"),
                _ => return None,
            };
            format!("encoder.layer.{i}.{inner}")
        }
        _ => return None,
    };
    Some(linear(Source::new(format!("{prefix}{theirs}")), module, param))
}

/// Hugging Face `GPT2Model` names for a [`DecoderOnly`](crate::models::DecoderOnly) parameter,
/// under `prefix` (`""`, or `"transformer."` in `GPT2LMHeadModel` state dicts). GPT-2's `Conv1D`
/// layers store weights `[in, out]`, as our projections do; Q, K and V are the three blocks of
/// `c_attn`'s last axis.
pub fn hf_gpt2_source(ours: &str, prefix: &str) -> Option<Source> {
    let segments: Vec<&str> = ours.split('.').collect();
    let conv = |name: String, param: &str| Source::new(format!("{prefix}{name}.{param}"));
    Some(match segments[..] {
        ["embed", "weight"] => Source::new(format!("{prefix}wte.weight")),
        ["pos", "weight"] => Source::new(format!("{prefix}wpe.weight")),
        ["norm", param] => Source::new(format!("{prefix}ln_f.{param}")),
        // `lm_head` is an `nn.Linear`: `[vocab, width]`.
        ["head", "weight"] => Source::new("lm_head.weight").transposed(),
        ["blocks", i, ref inner @ ..] => match inner {
            ["norm1", param] => Source::new(format!("{prefix}h.{i}.ln_1.{param}")),
            ["norm2", param] => Source::new(format!("{prefix}h.{i}.ln_2.{param}")),
            ["self_attn", m, param] if qkv_index(m).is_some() => {
                conv(format!("h.{i}.attn.c_attn"), param).part_of_last_axis(qkv_index(m)?, 3)
            }
            ["self_attn", "w_o", param] => conv(format!("h.{i}.attn.c_proj"), param),
            ["ffn", "linear1", param] => conv(format!("h.{i}.mlp.c_fc"), param),
            ["ffn", "linear2", param] => conv(format!("h.{i}.mlp.c_proj"), param),
            _ => return None,
        },
        _ => return None,
    })
}

/// Loads a PyTorch state dict saved as safetensors (`safetensors.torch.save_file(m.state_dict())`)
/// of the module that corresponds to `model`: see [`torch_source`]. Every tensor must be used.
pub fn load_torch<M: TensorCollection<E, Dev> + Clone, E: FloatDtype, Dev: Device<E>>(
    model: &mut M,
    path: &Path,
) -> Result<()> {
    load_torch_under(model, path, "")
}

/// Loads the tensors under `prefix` (such as `"encoder."` of an `nn.Transformer`) of a PyTorch
/// state dict into `model`, ignoring the file's other tensors. With an empty prefix every tensor
/// must be used.
pub fn load_torch_under<M: TensorCollection<E, Dev> + Clone, E: FloatDtype, Dev: Device<E>>(
    model: &mut M,
    path: &Path,
    prefix: &str,
) -> Result<()> {
    let map = |ours: &str| torch_source(&format!("{prefix}{ours}"));
    import_weights(model, path, &map, &|name| !name.starts_with(prefix)).map(|_| ())
}

/// The prefix under which `anchor` appears in the file's `names`, if it has one of `prefixes`.
fn detect_prefix<'p>(names: &[String], anchor: &str, prefixes: &[&'p str]) -> &'p str {
    prefixes.iter().copied().find(|p| names.iter().any(|n| *n == format!("{p}{anchor}"))).unwrap_or("")
}

/// What a Hugging Face import left unread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HfImport {
    /// Tensors of the file that the model type has no place for, by name: the heads of a
    /// `BertForPreTraining`, `BertForMaskedLM` or `BertForSequenceClassification` checkpoint
    /// (`cls.*`, `classifier.*`), or a pooler the model type leaves out.
    pub unused: Vec<String>,
}

/// Loads a Hugging Face BERT checkpoint into a [`Bert`](crate::models::Bert): the
/// `model.safetensors` of a `BertModel`, or the encoder of any `BertFor...` model (under
/// `bert.`). Tensors outside the encoder (task heads) and a pooler that the model type leaves
/// out ([`NoPooler`](crate::models::NoPooler)) are skipped and listed in the result; the
/// integer buffer `embeddings.position_ids` is skipped; every other tensor must be used, and
/// every parameter must be in the file (a `BertForMaskedLM` has no pooler: load it into a
/// `NoPooler` type). Layer-norm epsilon is not in the file: set it from `config.json` with
/// [`set_layer_norm_eps`](crate::nn::set_layer_norm_eps).
pub fn load_hf_bert<M: TensorCollection<E, Dev> + Clone, E: FloatDtype, Dev: Device<E>>(
    model: &mut M,
    path: &Path,
) -> Result<HfImport> {
    let names = tensor_names(path)?;
    let prefix = detect_prefix(&names, "embeddings.word_embeddings.weight", &["bert."]);
    let read: HashSet<String> = parameter_shapes(model)?
        .into_iter()
        .filter_map(|(ours, _)| hf_bert_source(&ours, prefix).map(|s| s.name))
        .collect();
    let encoder = ["embeddings.", "encoder."].map(|part| format!("{prefix}{part}"));
    let skippable = |name: &str| {
        let in_encoder = encoder.iter().any(|p| name.starts_with(p.as_str()));
        let pooler = name.starts_with(&format!("{prefix}pooler."));
        !read.contains(name) && (pooler || !in_encoder)
    };
    let buffer = |name: &str| name.ends_with("embeddings.position_ids");
    import_weights(model, path, &|ours| hf_bert_source(ours, prefix), &|name| buffer(name) || skippable(name))?;
    let mut unused: Vec<String> = names.into_iter().filter(|n| !buffer(n) && skippable(n)).collect();
    unused.sort();
    Ok(HfImport { unused })
}

/// Loads a Hugging Face GPT-2 checkpoint of any size into a
/// [`DecoderOnly`](crate::models::DecoderOnly) of the same dimensions (pre-LN, tanh GELU, learned
/// positions): tied ([`TiedOutput`](crate::models::TiedOutput)), or untied with `lm_head.weight`
/// as its head ([`UntiedOutputNoBias`](crate::models::UntiedOutputNoBias): GPT-2's `lm_head` has
/// no bias). The causal-mask buffers (`attn.bias`, `attn.masked_bias`) and, for a tied model,
/// `lm_head.weight` (a copy of `wte`) are skipped.
pub fn load_hf_gpt2<M: TensorCollection<E, Dev> + Clone, E: FloatDtype, Dev: Device<E>>(
    model: &mut M,
    path: &Path,
) -> Result<HfImport> {
    let names = tensor_names(path)?;
    let prefix = detect_prefix(&names, "wte.weight", &["transformer."]);
    let ignore =
        |name: &str| name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") || name == "lm_head.weight";
    import_weights(model, path, &|ours| hf_gpt2_source(ours, prefix), &ignore)?;
    Ok(HfImport::default())
}

impl BertConfig {
    /// Reads `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let json = read_json(path)?;
        let bad = |reason: String| Error::BadFile { path: path.into(), reason };
        let int = |key: &str| {
            json.get(key).and_then(Value::as_u64).map(|v| v as usize).ok_or_else(|| bad(format!("no integer `{key}`")))
        };
        let text = |key: &str| -> Result<Option<&str>> {
            match json.get(key) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(other) => Err(bad(format!("`{key}` is {other}, not a name"))),
            }
        };
        if let Some(kind) = text("position_embedding_type")? {
            if kind != "absolute" {
                return Err(bad(format!("position_embedding_type `{kind}` is not supported (only `absolute`)")));
            }
        }
        if let Some(kind) = text("model_type")? {
            if kind != "bert" {
                return Err(bad(format!("model_type is `{kind}`: this loads BERT models")));
            }
        }
        let activation = text("hidden_act")?.unwrap_or("gelu").to_string();
        Ok(Self {
            vocab: int("vocab_size")?,
            d_model: int("hidden_size")?,
            heads: int("num_attention_heads")?,
            d_ff: int("intermediate_size")?,
            layers: int("num_hidden_layers")?,
            positions: int("max_position_embeddings")?,
            token_types: int("type_vocab_size")?,
            activation,
            layer_norm_eps: match json.get("layer_norm_eps") {
                None => 1e-12,
                Some(v) => v
                    .as_f64()
                    .filter(|&eps| crate::nn::check_scalar("eps", eps).is_ok())
                    .ok_or_else(|| bad(format!("`layer_norm_eps` is {v}; it must be a number in (0, 1)")))?,
            },
        })
    }
}

/// Reads a JSON file of a model directory.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    serde_json::from_str(&text).map_err(|e| Error::BadFile { path: path.into(), reason: format!("not JSON ({e})") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_names_for_attention_layers_and_stacks() {
        let q = torch_source("encoder.layers.1.self_attn.w_k.bias").unwrap();
        assert_eq!(q, Source::new("encoder.layers.1.self_attn.in_proj_bias").part(1, 3));
        let o = torch_source("decoder.layers.0.cross_attn.w_o.weight").unwrap();
        assert_eq!(o, Source::new("decoder.layers.0.multihead_attn.out_proj.weight").transposed());
        let v = Source::new("in_proj_weight").part(2, 3).transposed_as(Transpose::LastAxisColumns);
        assert_eq!(torch_source("w_v.weight").unwrap(), v);
        assert_eq!(torch_source("ffn.linear1.weight").unwrap(), Source::new("linear1.weight").transposed());
        assert_eq!(torch_source("encoder.norm.bias").unwrap(), Source::new("encoder.norm.bias"));
    }

    #[test]
    fn hugging_face_names() {
        let s = hf_bert_source("encoder.layers.3.norm1.weight", "bert.").unwrap();
        assert_eq!(s, Source::new("bert.encoder.layer.3.attention.output.LayerNorm.weight"));
        let s = hf_gpt2_source("blocks.2.self_attn.w_v.weight", "").unwrap();
        assert_eq!(s, Source::new("h.2.attn.c_attn.weight").part_of_last_axis(2, 3));
        assert_eq!(
            hf_gpt2_source("blocks.0.self_attn.w_q.bias", "").unwrap(),
            Source::new("h.0.attn.c_attn.bias").part_of_last_axis(0, 3)
        );
        let s = hf_bert_source("encoder.layers.0.ffn.linear2.weight", "").unwrap();
        assert_eq!(s, Source::new("encoder.layer.0.output.dense.weight").transposed());
        assert_eq!(hf_bert_source("pooler.weight", "").unwrap(), Source::new("pooler.dense.weight").transposed());
        assert!(hf_bert_source("encoder.layers.0.cross_attn.w_q.weight", "").is_none());
    }
}
