//! The workloads `benches/compare` (CPU, against PyTorch) and `benches/gpu` share: the GPT-style
//! model of the issue, its training batch and step, and greedy generation with or without the
//! KV cache. Included by both with `#[path]`; any device.

#![allow(dead_code)] // each bench uses its own subset

use typeformer::prelude::*;
use typeformer::train::{label_smoothed_cross_entropy, Adam};

/// The d-512 encoder of the issue: 8 heads, d_ff 2048, 6 post-LN ReLU layers.
pub type Encoder512<Dev> = Encoder<512, 8, 64, 2048, 6, PostNorm, Relu, f32, Dev>;

typeformer::transformer! {
    /// The GPT-style training workload: d 128, 4 heads, 4 layers, d_ff 512, vocab 256, context 128.
    pub BenchGpt: DecoderOnly {
        vocab: 256, d_model: 128, heads: 4, d_ff: 512, layers: 4, max_len: 256,
        positional: learned, norm: pre, activation: gelu, dropout: 0.0,
    }
}

/// `batch` deterministic sequences of `seq + 1` tokens, as (inputs, next-token labels).
pub fn gpt_batch(batch: usize, seq: usize) -> typeformer::Result<(Tokens<256>, Tokens<256>)> {
    let ids: Vec<Vec<usize>> = (0..batch).map(|i| (0..=seq).map(|t| (i * 31 + t * 7) % 256).collect()).collect();
    let inputs = Tokens::from_sequences(&ids.iter().map(|s| s[..seq].to_vec()).collect::<Vec<_>>())?;
    let labels = Tokens::from_sequences(&ids.iter().map(|s| s[1..].to_vec()).collect::<Vec<_>>())?;
    Ok((inputs, labels))
}

/// One training step: forward, loss, backward, Adam; the gradients are zeroed and handed back.
pub fn gpt_train_step<Dev: Device<f32>>(
    model: &mut BenchGpt<f32, Dev>,
    opt: &mut Adam<f32, Dev>,
    batch: &(Tokens<256>, Tokens<256>),
    grads: Gradients<f32, Dev>,
) -> typeformer::Result<Gradients<f32, Dev>> {
    let logits = model.forward_traced(&batch.0, grads)?;
    let mut g = typeformer::train::backward(label_smoothed_cross_entropy(logits, &batch.1, 0.0)?)?;
    opt.update(model, &g, 1e-4)?;
    model.zero_grads(&mut g);
    Ok(g)
}

/// Continues `prompt` by `new` greedy tokens, with the KV cache (`cached`) or recomputing the
/// whole sequence for every token.
pub fn greedy<Dev: Device<f32>>(model: &BenchGpt<f32, Dev>, prompt: &[usize], new: usize, cached: bool) -> Vec<usize> {
    let mut sequence = prompt.to_vec();
    let mut state = model.start();
    let mut next = Tokens::<256>::from_sequences(std::slice::from_ref(&sequence)).unwrap();
    for _ in 0..new {
        let logits = if cached {
            model.step(&mut state, &next).unwrap()
        } else {
            model.forward(&Tokens::from_sequences(std::slice::from_ref(&sequence)).unwrap()).unwrap()
        };
        let (_, len, _) = *logits.shape();
        let token = typeformer::generate::argmax(&logits.as_vec()[(len - 1) * 256..]);
        sequence.push(token);
        next = Tokens::from_sequences(&[vec![token]]).unwrap();
    }
    sequence
}
