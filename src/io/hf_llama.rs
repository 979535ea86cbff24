//! Llama-family checkpoints in Hugging Face's layout (a directory of `config.json` and
//! `model.safetensors`, or shards listed in `model.safetensors.index.json`) into a typed
//! [`Llama`](crate::models::Llama): the config is checked against the type, every difference
//! listed by key, and the weights (f32, f16 or bf16) mapped onto ours.

use super::checkpoint::{parse_safetensors, restore_from, Read, Source, TensorFile};
use super::gguf_llama::Hyperparameters;
use super::import::read_json;
use crate::error::{Error, Result};
use crate::models::LlamaModel;
use crate::FloatDtype;
use dfdx::prelude::*;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where a parameter of a Llama model comes from in a Hugging Face `LlamaForCausalLM`
/// checkpoint (matrices are `[out, in]` there, `(in, out)` here).
pub fn hf_llama_source(ours: &str) -> Option<Source> {
    let matrix = |name: String| Some(Source::new(name).transposed());
    match ours {
        "embed.weight" => return Some(Source::new("model.embed_tokens.weight")),
        "norm.weight" => return Some(Source::new("model.norm.weight")),
        "head.weight" => return matrix("lm_head.weight".into()),
        _ => {}
    }
    let (layer, part) = ours.strip_prefix("blocks.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let theirs = |name: &str| format!("model.layers.{layer}.{name}.weight");
    match part {
        "attn_norm.weight" => Some(Source::new(theirs("input_layernorm"))),
        "ffn_norm.weight" => Some(Source::new(theirs("post_attention_layernorm"))),
        "attn.w_q.weight" => matrix(theirs("self_attn.q_proj")),
        "attn.w_k.weight" => matrix(theirs("self_attn.k_proj")),
        "attn.w_v.weight" => matrix(theirs("self_attn.v_proj")),
        "attn.w_o.weight" => matrix(theirs("self_attn.o_proj")),
        "ffn.gate.weight" => matrix(theirs("mlp.gate_proj")),
        "ffn.up.weight" => matrix(theirs("mlp.up_proj")),
        "ffn.down.weight" => matrix(theirs("mlp.down_proj")),
        _ => None,
    }
}

/// The safetensors files of a checkpoint directory, read into memory, with which file holds
/// each tensor.
struct Shards {
    files: Vec<(PathBuf, Vec<u8>)>,
    index: HashMap<String, usize>,
}

impl Shards {
    fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let paths: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index_path.exists() {
            let index = read_json(&index_path)?;
            let map = index
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| Error::BadFile { path: index_path.clone(), reason: "no `weight_map` object".into() })?;
            let mut shards: Vec<PathBuf> = Vec::new();
            for file in map.values() {
                let name =
                    file.as_str().filter(|n| !n.contains('/') && !n.contains("..")).ok_or_else(|| Error::BadFile {
                        path: index_path.clone(),
                        reason: format!("`{file}` is not a file name of the directory"),
                    })?;
                if !shards.iter().any(|p| p.ends_with(name)) {
                    shards.push(dir.join(name));
                }
            }
            shards
        } else {
            return Err(Error::BadFile {
                path: dir.into(),
                reason:
                    "no model.safetensors or model.safetensors.index.json: not a Hugging Face checkpoint directory \
                         in safetensors (convert .bin checkpoints with transformers' save_pretrained)"
                        .into(),
            });
        };
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for path in paths {
            let bytes = std::fs::read(&path).map_err(Error::io(&path))?;
            let (file, _) = parse_safetensors(&path, &bytes)?;
            for name in file.names() {
                if let Some(earlier) = index.insert(name.clone(), files.len()) {
                    let first = files.get(earlier).map_or(&path, |(p, _): &(PathBuf, Vec<u8>)| p);
                    return Err(Error::BadFile {
                        path: path.clone(),
                        reason: format!("tensor `{name}` is also in {}: which one is meant?", first.display()),
                    });
                }
            }
            files.push((path, bytes));
        }
        Ok(Self { files, index })
    }
}

impl TensorFile for Shards {
    fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }
    fn read<E: FloatDtype>(&self, name: &str) -> Option<Read<E>> {
        let (path, bytes) = &self.files[*self.index.get(name)?];
        match parse_safetensors(path, bytes) {
            Ok((file, _)) => TensorFile::read(&file, name),
            Err(e) => Some(Err(e.to_string())),
        }
    }
}

/// What the config says, against the type: one line per difference.
struct Differences<'a> {
    json: &'a Value,
    problems: Vec<String>,
}

impl Differences<'_> {
    fn whole(&mut self, key: &str, want: usize, default: Option<usize>) {
        match (self.json.get(key), default) {
            (None, None) => self.problems.push(format!("{key} is missing; the model type has {want}")),
            (None, Some(d)) if d != want => {
                self.problems.push(format!("{key} is not given ({d} by default); the model type has {want}"))
            }
            (None, Some(_)) => {}
            (Some(v), _) => match v.as_u64() {
                Some(found) if found as usize == want => {}
                Some(found) => self.problems.push(format!("{key} is {found} in the config; the model type has {want}")),
                None => self.problems.push(format!("{key} is {v}, not a whole number")),
            },
        }
    }
}

/// Checks a Hugging Face Llama `config.json` against the model type; returns the RMSNorm eps.
fn check_config(path: &Path, json: &Value, ours: Hyperparameters) -> Result<f64> {
    let Hyperparameters { vocab, width, heads, kv_heads, head_width, ff, layers, context, base, tied } = ours;
    let kind = json.get("model_type").and_then(Value::as_str).unwrap_or("(none)");
    if kind != "llama" {
        return Err(Error::BadFile {
            path: path.into(),
            reason: format!("model_type is `{kind}`; this loads Llama-family checkpoints (`llama`)"),
        });
    }
    let mut d = Differences { json, problems: Vec::new() };
    d.whole("vocab_size", vocab, None);
    d.whole("hidden_size", width, None);
    d.whole("num_attention_heads", heads, None);
    d.whole("num_key_value_heads", kv_heads, Some(heads));
    d.whole("head_dim", head_width, Some(width / heads.max(1)));
    d.whole("intermediate_size", ff, None);
    d.whole("num_hidden_layers", layers, None);
    let mut problems = d.problems;
    if let Some(found) = json.get("max_position_embeddings").and_then(Value::as_u64) {
        if (found as usize) < context {
            problems.push(format!(
                "max_position_embeddings is {found}; the model type's context ({context}) is longer than it was trained for"
            ));
        }
    }
    // transformers 5 writes rope_parameters; earlier versions rope_theta and rope_scaling.
    let rope = json.get("rope_parameters");
    let theta = rope.and_then(|r| r.get("rope_theta")).or(json.get("rope_theta")).map(|v| v.as_f64());
    match theta {
        None if base != 10_000 => problems.push(format!("rope_theta is not given (10000); the model type has {base}")),
        None => {}
        Some(Some(t)) if t == base as f64 => {}
        Some(Some(t)) => problems.push(format!("rope_theta is {t} in the config; the model type has {base}")),
        Some(None) => problems.push("rope_theta is not a number".into()),
    }
    // Scaled rotary positions (linear, dynamic, YaRN, Llama 3.1's) are another computation:
    // anything but the default is refused, whichever key and spelling the config uses.
    for scaling in [rope, json.get("rope_scaling")].into_iter().flatten().filter(|s| !s.is_null()) {
        let kind = scaling.get("rope_type").or(scaling.get("type")).and_then(Value::as_str);
        if kind != Some("default") {
            problems.push(format!("rope scaling {scaling}: scaled rotary positions are not supported"));
        }
    }
    let file_tied = json.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false);
    if file_tied != tied {
        problems.push(format!(
            "tie_word_embeddings is {file_tied}; the model type's output is {} (use {})",
            if tied { "tied" } else { "untied" },
            if file_tied { "TiedOutput" } else { "UntiedOutputNoBias" }
        ));
    }
    for key in ["attention_bias", "mlp_bias"] {
        if json.get(key).and_then(Value::as_bool) == Some(true) {
            problems.push(format!("{key} is true: Llama blocks have no biases"));
        }
    }
    if let Some(act) = json.get("hidden_act").and_then(Value::as_str).filter(|a| *a != "silu") {
        problems.push(format!("hidden_act is `{act}`; SwiGLU uses silu"));
    }
    let eps = match json.get("rms_norm_eps") {
        None => 1e-6,
        Some(v) => match v.as_f64().filter(|&e| crate::nn::check_scalar("eps", e).is_ok()) {
            Some(e) => e,
            None => {
                problems.push(format!("rms_norm_eps is {v}; it must be a number in (0, 1)"));
                1e-6
            }
        },
    };
    super::gguf_llama::verdict(path, "the checkpoint", problems, eps)
}

/// Loads a Hugging Face Llama-family checkpoint directory (`config.json` and
/// `model.safetensors` or its shards; f32, f16 or bf16) into `model`, after checking the config
/// against the model's type (every difference listed by key), and sets the config's RMSNorm
/// eps. Every tensor must map onto a parameter (rotary `inv_freq` buffers, and a tied model's
/// copy of the embedding as `lm_head.weight`, are skipped) and every parameter have its tensor;
/// on any problem the model is left unchanged.
pub fn load_hf_llama<M: LlamaModel<E, Dev>, E: FloatDtype, Dev: Device<E>>(model: &mut M, dir: &Path) -> Result<()> {
    let config_path = dir.join("config.json");
    let json = read_json(&config_path)?;
    let eps = check_config(&config_path, &json, Hyperparameters::of::<M, E, Dev>())?;
    let shards = Shards::open(dir)?;
    let ignore = |name: &str| name.ends_with("rotary_emb.inv_freq") || (M::TIED && name == "lm_head.weight");
    restore_from(model, &shards, &HashMap::new(), dir, &hf_llama_source, &ignore)?;
    crate::nn::set_scalar(model, "eps", eps)
}
