//! Pictures of what a task model attends to: its self- and cross-attention maps over a source
//! and its own greedy output, one heatmap per layer and head.

use crate::data::{symbol_text, token_text, BOS, EOS};
use crate::error::{Error, Result};
use crate::generate::greedy_decode;
use crate::io::{write_heatmaps_png, Heatmap};
use crate::models::Seq2Seq;
use crate::shape::Tokens;
use crate::FloatDtype;
use dfdx::prelude::*;

/// Which attention sub-layers a plot shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKind {
    /// The encoder's self-attention over the source.
    EncoderSelf,
    /// The decoder's masked self-attention over its own inputs.
    DecoderSelf,
    /// The decoder's attention over the encoded source.
    Cross,
}

impl AttentionKind {
    fn name(self) -> &'static str {
        match self {
            AttentionKind::EncoderSelf => "encoder self-attention",
            AttentionKind::DecoderSelf => "decoder self-attention",
            AttentionKind::Cross => "cross-attention",
        }
    }
}

/// The maps an attention plot draws: kinds, and optionally one layer and one head (all
/// otherwise). Layers and heads count from 0, as in the parameter names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttentionSelection {
    /// The kinds of attention, drawn in this order.
    pub kinds: Vec<AttentionKind>,
    /// One layer of each stack, or all.
    pub layer: Option<usize>,
    /// One head of each layer, or all.
    pub head: Option<usize>,
}

impl AttentionSelection {
    /// Every head of every decoder layer's cross-attention.
    pub fn cross() -> Self {
        Self { kinds: vec![AttentionKind::Cross], layer: None, head: None }
    }
}

/// Decodes `source` greedily with `model`, then draws the selected attention maps of a pass
/// over that source and the model's own output to a PNG at `path`: one row of maps per layer,
/// one map per head, tokens on the axes (queries down, keys across). Returns the decoded output.
pub fn plot_attention<M, const V: usize, E, Dev>(
    model: &M,
    source: &[usize],
    selection: &AttentionSelection,
    path: &std::path::Path,
    title: &str,
) -> Result<Vec<usize>>
where
    M: Seq2Seq<V, V, E, Dev>,
    E: FloatDtype,
    Dev: Device<E>,
{
    if selection.kinds.is_empty() {
        return Err(Error::InvalidConfig("choose at least one kind of attention to plot".into()));
    }
    let src = Tokens::<V>::from_sequences(&[source.to_vec()])?;
    let max_len = (source.len() + 1).min(M::MAX_LEN - 1);
    let decoded = greedy_decode::<M, V, V, E, Dev>(model, &src, BOS, EOS, max_len)?.remove(0);
    let tgt_in: Vec<usize> = std::iter::once(BOS).chain(decoded.iter().copied()).collect();
    let maps = model.attention(&src, &Tokens::<V>::from_sequences(std::slice::from_ref(&tgt_in))?)?;
    let labels = |ids: &[usize]| ids.iter().map(|&t| token_text(t)).collect::<Vec<_>>();
    let (src_labels, tgt_labels) = (labels(source), labels(&tgt_in));
    let mut heatmaps = Vec::new();
    let mut heads = 0;
    for &kind in &selection.kinds {
        let layers = match kind {
            AttentionKind::EncoderSelf => &maps.encoder,
            AttentionKind::DecoderSelf | AttentionKind::Cross => &maps.decoder,
        };
        let chosen = pick("layer", selection.layer, layers.len(), kind)?;
        for l in chosen {
            let (weights, rows, cols) = match kind {
                AttentionKind::EncoderSelf => (&layers[l].self_attn, &src_labels, &src_labels),
                AttentionKind::DecoderSelf => (&layers[l].self_attn, &tgt_labels, &tgt_labels),
                AttentionKind::Cross => {
                    let cross = layers[l]
                        .cross_attn
                        .as_ref()
                        .ok_or_else(|| Error::InvalidConfig("the decoder recorded no cross-attention".into()))?;
                    (cross, &tgt_labels, &src_labels)
                }
            };
            let chosen_heads = pick("head", selection.head, weights.heads(), kind)?;
            heads = heads.max(chosen_heads.len());
            for h in chosen_heads {
                let map = weights.map(0, h).ok_or_else(|| Error::InvalidConfig(format!("no head {h}")))?;
                heatmaps.push(Heatmap {
                    title: format!("{}, layer {l}, head {h}", kind.name()),
                    rows: rows.clone(),
                    cols: cols.clone(),
                    weights: map.into_iter().map(<[f32]>::to_vec).collect(),
                });
            }
        }
    }
    let heading = format!("{title}: {} -> {}", symbol_text(source), symbol_text(&decoded));
    let caption = "rows: queries (the decoder reads <s> then its output), columns: keys";
    write_heatmaps_png(path, &heading, caption, &heatmaps, heads)?;
    Ok(decoded)
}

/// The indices `0..count`, or the one asked for, checked against `count`.
fn pick(what: &str, asked: Option<usize>, count: usize, kind: AttentionKind) -> Result<Vec<usize>> {
    match asked {
        None => Ok((0..count).collect()),
        Some(i) if i < count => Ok(vec![i]),
        Some(i) => Err(Error::InvalidConfig(format!(
            "--{what} {i} does not exist: the model's {} has {what}s 0 to {}",
            kind.name(),
            count.saturating_sub(1)
        ))),
    }
}
