//! Autoregressive generation from a decoder-only language model.

use super::Sampler;
use crate::error::{Error, Result};
use crate::models::LanguageModel;
use crate::shape::Tokens;
use crate::FloatDtype;
use dfdx::prelude::*;
use std::ops::ControlFlow;

/// When to stop generating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateConfig {
    /// At most this many new tokens.
    pub max_new_tokens: usize,
    /// Stop after producing any of these (it is included in the output).
    pub stop_tokens: Vec<usize>,
}

/// Continues `prompt` one token at a time, calling `on_token` as each is chosen, and returns the
/// new tokens. The prompt is processed in one pass; each further step feeds one token and reuses
/// the cached keys and values.
///
/// Errors: an empty prompt, a token outside the vocabulary, or a prompt plus `max_new_tokens`
/// longer than the model's `P` positions.
pub fn generate<M, const V: usize, E, Dev>(
    model: &M,
    prompt: &[usize],
    cfg: &GenerateConfig,
    sampler: &mut Sampler,
    mut on_token: impl FnMut(usize),
) -> Result<Vec<usize>>
where
    M: LanguageModel<V, E, Dev>,
    E: FloatDtype,
    Dev: Device<E>,
{
    generate_while::<M, V, E, Dev>(model, prompt, cfg, sampler, |t| {
        on_token(t);
        ControlFlow::Continue(())
    })
}

/// [`generate`], stopping early when `on_token` says so (the reader of the text went away).
pub fn generate_while<M, const V: usize, E, Dev>(
    model: &M,
    prompt: &[usize],
    cfg: &GenerateConfig,
    sampler: &mut Sampler,
    mut on_token: impl FnMut(usize) -> ControlFlow<()>,
) -> Result<Vec<usize>>
where
    M: LanguageModel<V, E, Dev>,
    E: FloatDtype,
    Dev: Device<E>,
{
    if prompt.is_empty() {
        return Err(Error::InvalidConfig("the prompt is empty: generation needs at least one token".into()));
    }
    let context = M::CONTEXT;
    if prompt.len() >= context {
        return Err(Error::InvalidConfig(format!(
            "the prompt has {} tokens but the model's context is {context} positions: shorten it to at most {} tokens",
            prompt.len(),
            context - 1
        )));
    }
    if cfg.max_new_tokens > context - prompt.len() {
        return Err(Error::InvalidConfig(format!(
            "a prompt of {} tokens plus {} new tokens needs {} positions, but the model's context is {context}: \
             ask for at most {} new tokens or shorten the prompt",
            prompt.len(),
            cfg.max_new_tokens,
            (prompt.len() as u128) + cfg.max_new_tokens as u128,
            context - prompt.len()
        )));
    }
    let mut state = model.start();
    let mut input = Tokens::<V>::from_sequences(&[prompt.to_vec()])?;
    let mut out = Vec::with_capacity(cfg.max_new_tokens);
    while out.len() < cfg.max_new_tokens {
        let logits = model.step(&mut state, &input)?.as_vec(); // (1, S, V)
        let last = &logits[logits.len() - V..];
        let next = sampler.sample(last);
        out.push(next);
        if on_token(next).is_break() || cfg.stop_tokens.contains(&next) {
            break;
        }
        input = Tokens::from_sequences(&[vec![next]])?;
    }
    Ok(out)
}
