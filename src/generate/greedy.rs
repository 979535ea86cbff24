//! Greedy autoregressive decoding: one token at a time, each the most likely next one.

use crate::error::{Error, Result};
use crate::models::Seq2Seq;
use crate::shape::Tokens;
use crate::FloatDtype;
use dfdx::prelude::*;

/// Decodes every source of `src` greedily: the decoder starts from `bos`, and a sequence ends at
/// `eos` or after `max_len` tokens. Returns the tokens between `bos` and `eos`.
///
/// The encoder runs once; each step feeds only the newest token, with the keys and values of
/// earlier positions cached.
pub fn greedy_decode<M, const SV: usize, const TV: usize, E, Dev>(
    model: &M,
    src: &Tokens<SV>,
    bos: usize,
    eos: usize,
    max_len: usize,
) -> Result<Vec<Vec<usize>>>
where
    M: Seq2Seq<SV, TV, E, Dev>,
    E: FloatDtype,
    Dev: Device<E>,
{
    if bos >= TV || eos >= TV {
        return Err(Error::InvalidConfig(format!(
            "bos {bos} and eos {eos} must be below the target vocabulary of {TV}"
        )));
    }
    Error::check_positions(max_len + 1, 0, M::MAX_LEN)?;
    let batch = src.batch();
    let memory = model.encode_source(src)?;
    let mut state = model.start_decoding(&memory, src.lengths())?;
    let mut prefixes = vec![vec![bos]; batch];
    let mut done = vec![false; batch];
    for _ in 0..max_len {
        // Only the newest token goes in: earlier positions live in the key/value cache.
        let last: Vec<Vec<usize>> = prefixes.iter().map(|p| vec![p[p.len() - 1]]).collect();
        let logits = model.decode_step(&mut state, &Tokens::<TV>::from_sequences(&last)?)?.as_vec(); // (B, 1, TV)
        for (item, prefix) in prefixes.iter_mut().enumerate() {
            let next = if done[item] { eos } else { argmax(&logits[item * TV..(item + 1) * TV]) };
            done[item] |= next == eos;
            prefix.push(next);
        }
        if done.iter().all(|&d| d) {
            break;
        }
    }
    Ok(prefixes.into_iter().map(|p| p[1..].iter().copied().take_while(|&t| t != eos).collect()).collect())
}

/// Index of the largest value (the first one on ties); NaN never wins.
pub fn argmax<E: FloatDtype>(xs: &[E]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] || xs[best].is_nan() {
            best = i;
        }
    }
    best
}
