//! Beam search for encoder-decoder models (Wu et al., 2016: length-normalised scores).

use crate::error::{Error, Result};
use crate::models::Seq2Seq;
use crate::shape::Tokens;
use crate::FloatDtype;
use dfdx::prelude::*;

/// How wide and how long to search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BeamConfig {
    /// Hypotheses kept per step (1 is greedy decoding).
    pub width: usize,
    /// α of the length penalty `((5 + len) / 6)^α`: 0 compares raw log-probabilities, which
    /// favour short outputs; 1 compares about per-token averages (Wu et al. used 0.6 for
    /// translation). On the built-in tasks, whose outputs are as long as their inputs, 1 keeps
    /// beam search from dropping repeated symbols.
    pub length_penalty: f64,
    /// Most tokens per output (EOS not counted).
    pub max_len: usize,
}

struct Hypothesis<S> {
    tokens: Vec<usize>,
    log_prob: f64,
    state: S,
}

fn score(log_prob: f64, len: usize, alpha: f64) -> f64 {
    log_prob / ((5.0 + len as f64) / 6.0).powf(alpha)
}

fn log_softmax<E: FloatDtype>(logits: &[E]) -> Vec<f64> {
    let xs: Vec<f64> = logits.iter().map(|x| x.to_f64().unwrap_or(f64::NEG_INFINITY)).collect();
    let max = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let log_z = max + xs.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
    xs.iter().map(|x| x - log_z).collect()
}

/// Checks `cfg` for beam search with `M` before anything is decoded: a width of at least 1 whose
/// hypotheses fit in memory, a finite length penalty.
pub fn check_beam_config<M, const SV: usize, const TV: usize, E, Dev>(cfg: &BeamConfig) -> Result<()>
where
    M: Seq2Seq<SV, TV, E, Dev>,
    E: FloatDtype,
    Dev: Device<E>,
{
    if cfg.width == 0 {
        return Err(Error::InvalidConfig("beam width must be at least 1".into()));
    }
    if !cfg.length_penalty.is_finite() {
        return Err(Error::InvalidConfig(format!(
            "--length-penalty must be a finite number (0 for raw log-probabilities, 1 for about per-token \
             averages), got {}",
            cfg.length_penalty
        )));
    }
    // Each live hypothesis holds a decoding state and expands to up to TV candidates.
    let per_hypothesis = M::MAX_LEN as u64 * M::TRAIN_BYTES_PER_TOKEN + 24 * TV as u64;
    crate::memory::check_memory("--beam-width", cfg.width, per_hypothesis)
}

/// Decodes each source of `src` with beam search: at every step the `width` most probable
/// continuations of the live hypotheses survive; a hypothesis ends at `eos`; the answer is the
/// ended (or, failing that, live) hypothesis with the best length-normalised log-probability.
/// Returns the tokens between `bos` and `eos`. With `width = 1` it equals greedy decoding.
pub fn beam_search<M, const SV: usize, const TV: usize, E, Dev>(
    model: &M,
    src: &Tokens<SV>,
    bos: usize,
    eos: usize,
    cfg: &BeamConfig,
) -> Result<Vec<Vec<usize>>>
where
    M: Seq2Seq<SV, TV, E, Dev>,
    M::State: Clone,
    E: FloatDtype,
    Dev: Device<E>,
{
    check_beam_config::<M, SV, TV, E, Dev>(cfg)?;
    if bos >= TV || eos >= TV {
        return Err(Error::InvalidConfig(format!(
            "bos {bos} and eos {eos} must be below the target vocabulary of {TV}"
        )));
    }
    Error::check_positions(cfg.max_len + 1, 0, M::MAX_LEN)?;
    (0..src.batch())
        .map(|item| {
            let one = Tokens::<SV>::from_sequences(&[src.sequence(item).to_vec()])?;
            let memory = model.encode_source(&one)?;
            let start = model.start_decoding(&memory, one.lengths())?;
            let mut live = vec![Hypothesis { tokens: vec![bos], log_prob: 0.0, state: start }];
            let mut ended: Vec<(Vec<usize>, f64)> = Vec::new();
            let mut truncated: Vec<(Vec<usize>, f64)> = Vec::new();
            for _ in 0..=cfg.max_len {
                let mut candidates: Vec<(usize, usize, f64)> = Vec::new(); // (hypothesis, token, log-prob)
                let mut states = Vec::with_capacity(live.len());
                for (h, hyp) in live.iter().enumerate() {
                    let mut state = hyp.state.clone();
                    let last = Tokens::<TV>::from_sequences(&[vec![hyp.tokens[hyp.tokens.len() - 1]]])?;
                    let lp = log_softmax(&model.decode_step(&mut state, &last)?.as_vec());
                    let mut order: Vec<usize> = (0..TV).collect();
                    order.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]).then(a.cmp(&b)));
                    candidates.extend(order.into_iter().take(cfg.width).map(|t| (h, t, hyp.log_prob + lp[t])));
                    states.push(state);
                }
                candidates.sort_by(|a, b| b.2.total_cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
                let mut next = Vec::with_capacity(cfg.width);
                for (h, token, log_prob) in candidates.into_iter().take(cfg.width) {
                    let mut tokens = live[h].tokens.clone();
                    if token == eos {
                        ended.push((tokens[1..].to_vec(), log_prob));
                    } else if tokens.len() <= cfg.max_len {
                        tokens.push(token);
                        next.push(Hypothesis { tokens, log_prob, state: states[h].clone() });
                    } else {
                        // Out of room: kept only as a fallback, since it has not paid for its
                        // EOS and would otherwise outscore hypotheses that have.
                        truncated.push((tokens[1..].to_vec(), live[h].log_prob));
                    }
                }
                // Stop once no live hypothesis can beat the best ended one: log-probabilities
                // only fall, so with α = 0 this is exact; with α > 0 we search to max_len.
                let best_ended = ended
                    .iter()
                    .map(|(t, lp)| score(*lp, t.len(), cfg.length_penalty))
                    .fold(f64::NEG_INFINITY, f64::max);
                let best_live = next.iter().map(|h| h.log_prob).fold(f64::NEG_INFINITY, f64::max);
                live = next;
                if live.is_empty() || (cfg.length_penalty == 0.0 && best_live < best_ended) {
                    break;
                }
            }
            truncated.extend(live.into_iter().map(|h| (h.tokens[1..].to_vec(), h.log_prob)));
            let pool = if ended.is_empty() { truncated } else { ended };
            Ok(pool
                .into_iter()
                .max_by(|a, b| {
                    score(a.1, a.0.len(), cfg.length_penalty).total_cmp(&score(b.1, b.0.len(), cfg.length_penalty))
                })
                .map(|(tokens, _)| tokens)
                .unwrap_or_default())
        })
        .collect()
}
