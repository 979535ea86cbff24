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
    on_token: impl FnMut(usize) -> ControlFlow<()>,
) -> Result<Vec<usize>>
where
    M: LanguageModel<V, E, Dev>,
    E: FloatDtype,
    Dev: Device<E>,
{
    if prompt.is_empty() {
        return Err(Error::InvalidConfig("the prompt is empty: generation needs at least one token".into()));
    }
    Session::<M, V, E, Dev>::new(model).generate_while(prompt, cfg, sampler, on_token)
}

/// A generation that outlives one call: the model's keys and values for every token fed so far,
/// so that a conversation continues where it stopped instead of recomputing its history.
pub struct Session<'m, M: LanguageModel<V, E, Dev>, const V: usize, E: FloatDtype, Dev: Device<E>> {
    model: &'m M,
    state: M::State,
    tokens: Vec<usize>,
}

impl<'m, M: LanguageModel<V, E, Dev>, const V: usize, E: FloatDtype, Dev: Device<E>> Session<'m, M, V, E, Dev> {
    /// A session with nothing fed yet.
    pub fn new(model: &'m M) -> Self {
        Self { model, state: model.start(), tokens: Vec::new() }
    }

    /// The tokens whose keys and values the session holds, in order.
    pub fn tokens(&self) -> &[usize] {
        &self.tokens
    }

    /// Positions still free in the model's context.
    pub fn room(&self) -> usize {
        M::CONTEXT - self.tokens.len()
    }

    /// Forgets everything fed so far.
    pub fn reset(&mut self) {
        self.state = self.model.start();
        self.tokens.clear();
    }

    /// Feeds `input` (at least one token) after the tokens already fed, then samples up to
    /// `cfg.max_new_tokens` tokens, calling `on_token` as each is chosen, and returns them.
    /// Every chosen token but the last is fed as it is chosen; the last is returned unfed, so
    /// the next call's input starts with it (or with whatever the caller puts there instead).
    ///
    /// With `cfg.max_new_tokens` 0 nothing is fed and nothing returned. Errors: empty input, a
    /// token outside the vocabulary, or more positions than the model's context holds (nothing
    /// is fed then); a failed step starts the session over.
    pub fn generate_while(
        &mut self,
        input: &[usize],
        cfg: &GenerateConfig,
        sampler: &mut Sampler,
        mut on_token: impl FnMut(usize) -> ControlFlow<()>,
    ) -> Result<Vec<usize>> {
        if input.is_empty() {
            return Err(Error::InvalidConfig("nothing to feed: generation needs at least one new token".into()));
        }
        let (context, used) = (M::CONTEXT, self.tokens.len());
        let n = input.len();
        if used + n >= context {
            return Err(if used == 0 {
                Error::InvalidConfig(format!(
                    "the prompt has {n} tokens but the model's context is {context} positions: shorten it to at most {} tokens",
                    context - 1
                ))
            } else {
                // The input and at least one token after it.
                Error::ContextFull { needed: used + n + 1, context }
            });
        }
        if cfg.max_new_tokens > context - used - n {
            return Err(Error::InvalidConfig(format!(
                "a prompt of {} tokens plus {} new tokens needs {} positions, but the model's context is {context}: \
                 ask for at most {} new tokens or shorten the prompt",
                used + n,
                cfg.max_new_tokens,
                (used + n) as u128 + cfg.max_new_tokens as u128,
                context - used - n
            )));
        }
        let mut feed = Tokens::<V>::from_sequences(&[input.to_vec()])?;
        let mut fed = input.to_vec();
        let mut out = Vec::with_capacity(cfg.max_new_tokens);
        while out.len() < cfg.max_new_tokens {
            let logits = match self.model.step(&mut self.state, &feed) {
                Ok(logits) => logits.as_vec(), // (1, S, V)
                Err(e) => {
                    // The state may hold part of this step: start over rather than trust it.
                    self.reset();
                    return Err(e);
                }
            };
            self.tokens.append(&mut fed);
            let next = sampler.sample(&logits[logits.len() - V..]);
            out.push(next);
            if on_token(next).is_break() || cfg.stop_tokens.contains(&next) {
                break;
            }
            feed = Tokens::from_sequences(&[vec![next]])?;
            fed = vec![next];
        }
        Ok(out)
    }
}

/// Continues several prompts together, one batch through the model per step (its weights read
/// once per step for every sequence, rather than once per sequence), and returns each prompt's
/// new tokens. Prompts of different lengths are padded on the left, so that every row's next
/// token is at the same position, and the padding is masked out of attention; that needs a
/// model whose attention depends on relative positions only (rotary, as the Llama family's):
/// others refuse prompts of different lengths (equal lengths work with any model).
///
/// Each sequence stops on its own, after `cfg.max_new_tokens` tokens or on one of
/// `cfg.stop_tokens` (included); a stopped row is fed padding until the others are done.
/// `on_token(i, token)` is called as prompt `i` gets each token. `sampler` draws for every
/// row in turn, so with temperature the tokens differ from separate runs with the same seed;
/// greedy tokens are those of [`generate`] on each prompt alone (up to rounding: near-ties can
/// flip).
///
/// Errors: no prompts, an empty prompt, a token outside the vocabulary, or the longest prompt
/// plus `max_new_tokens` longer than the model's context.
pub fn generate_batch<M, const V: usize, E, Dev>(
    model: &M,
    prompts: &[Vec<usize>],
    cfg: &GenerateConfig,
    sampler: &mut Sampler,
    mut on_token: impl FnMut(usize, usize),
) -> Result<Vec<Vec<usize>>>
where
    M: LanguageModel<V, E, Dev>,
    E: FloatDtype,
    Dev: Device<E>,
{
    if prompts.is_empty() {
        return Err(Error::InvalidConfig("no prompts: batched generation needs at least one".into()));
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(Error::InvalidConfig(format!("prompt {i} is empty: generation needs at least one token")));
    }
    // Checked unpadded, so that an error names the token's own position in its prompt.
    Tokens::<V>::from_sequences(prompts)?;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let context = M::CONTEXT;
    if longest >= context {
        let i = prompts.iter().position(|p| p.len() == longest).unwrap_or(0);
        return Err(Error::InvalidConfig(format!(
            "prompt {i} has {longest} tokens but the model's context is {context} positions: shorten it to at \
             most {} tokens",
            context - 1
        )));
    }
    if cfg.max_new_tokens > context - longest {
        return Err(Error::InvalidConfig(format!(
            "the longest prompt has {longest} tokens; with {} new tokens it needs {} positions, but the model's \
             context is {context}: ask for at most {} new tokens or shorten the prompt",
            cfg.max_new_tokens,
            longest as u128 + cfg.max_new_tokens as u128,
            context - longest
        )));
    }
    let left_padding: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    // Padding ids are masked out; they only need to index the embedding table.
    let rows: Vec<Vec<usize>> = prompts
        .iter()
        .zip(&left_padding)
        .map(|(p, &pad)| std::iter::repeat_n(0, pad).chain(p.iter().copied()).collect())
        .collect();
    let mut state = model.start_padded(left_padding)?;
    let mut out: Vec<Vec<usize>> = vec![Vec::with_capacity(cfg.max_new_tokens); prompts.len()];
    let mut done = vec![cfg.max_new_tokens == 0; prompts.len()];
    if done.iter().all(|&d| d) {
        return Ok(out);
    }
    // The prompts in chunks of positions, so that the logits of a chunk, `(B, chunk, V)`, stay
    // under 2^24 values (64 MiB in f32) however many prompts there are; only the last
    // position's are used. Chunked, the cache computes what one pass computes.
    let chunk = ((1usize << 24) / (prompts.len() * V)).max(1);
    let mut logits = Vec::new();
    for first in (0..longest).step_by(chunk) {
        let end = (first + chunk).min(longest);
        let part: Vec<Vec<usize>> = rows.iter().map(|r| r[first..end].to_vec()).collect();
        logits = model.step(&mut state, &Tokens::<V>::from_sequences(&part)?)?.as_vec();
        // (B, S, V)
    }
    loop {
        let per_row = logits.len() / prompts.len();
        let mut next = vec![0; prompts.len()];
        for (i, row) in logits.chunks(per_row).enumerate() {
            if done[i] {
                continue;
            }
            let token = sampler.sample(&row[row.len() - V..]);
            out[i].push(token);
            on_token(i, token);
            done[i] = out[i].len() == cfg.max_new_tokens || cfg.stop_tokens.contains(&token);
            next[i] = token;
        }
        if done.iter().all(|&d| d) {
            break;
        }
        let feed = Tokens::<V>::from_sequences(&next.into_iter().map(|t| vec![t]).collect::<Vec<_>>())?;
        logits = model.step(&mut state, &feed)?.as_vec();
    }
    Ok(out)
}
