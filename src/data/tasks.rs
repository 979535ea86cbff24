//! Built-in sequence-to-sequence tasks generated from a seeded RNG: nothing to download.
//!
//! Token ids: 0 is padding, 1 begins a target, 2 ends it, and symbols are `3..3 + symbols`.

use crate::error::{Error, Result};
use crate::shape::Tokens;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

/// Padding.
pub const PAD: usize = 0;
/// Beginning of a target sequence (the decoder's first input).
pub const BOS: usize = 1;
/// End of a target sequence.
pub const EOS: usize = 2;
/// The id of the first symbol.
pub const FIRST_SYMBOL: usize = 3;

/// What the model must learn to do with a sequence of symbols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    /// Output the input.
    Copy,
    /// Output the input backwards.
    Reverse,
    /// Output the input's symbols in ascending order.
    Sort,
}

impl Task {
    /// All tasks.
    pub const ALL: [Task; 3] = [Task::Copy, Task::Reverse, Task::Sort];

    /// The target for `source`.
    pub fn apply(self, source: &[usize]) -> Vec<usize> {
        let mut target = source.to_vec();
        match self {
            Task::Copy => {}
            Task::Reverse => target.reverse(),
            Task::Sort => target.sort_unstable(),
        }
        target
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Task::Copy => "copy",
            Task::Reverse => "reverse",
            Task::Sort => "sort",
        })
    }
}

impl FromStr for Task {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Task::ALL
            .into_iter()
            .find(|t| t.to_string() == s)
            .ok_or_else(|| Error::InvalidConfig(format!("unknown task `{s}`; expected one of copy, reverse, sort")))
    }
}

/// A task and the sequences it draws: `symbols` distinct symbols, lengths in `min_len..=max_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskSpec {
    /// The transformation.
    pub task: Task,
    /// Number of distinct symbols.
    pub symbols: usize,
    /// Shortest source.
    pub min_len: usize,
    /// Longest source.
    pub max_len: usize,
}

/// One source sequence and its target (without BOS/EOS).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Example {
    /// Symbol ids.
    pub source: Vec<usize>,
    /// Symbol ids.
    pub target: Vec<usize>,
}

/// A batch ready for teacher forcing: the decoder reads `BOS t1 .. tn` and must predict
/// `t1 .. tn EOS`.
#[derive(Debug, Clone)]
pub struct Seq2SeqBatch<const SV: usize, const TV: usize> {
    /// Sources.
    pub src: Tokens<SV>,
    /// Decoder inputs.
    pub tgt_in: Tokens<TV>,
    /// Labels, aligned with `tgt_in`.
    pub labels: Tokens<TV>,
}

impl<const SV: usize, const TV: usize> Seq2SeqBatch<SV, TV> {
    /// Pads `examples` into a batch; errors on an id outside either vocabulary.
    pub fn new(examples: &[Example]) -> Result<Self> {
        let src: Vec<Vec<usize>> = examples.iter().map(|e| e.source.clone()).collect();
        let tgt_in: Vec<Vec<usize>> =
            examples.iter().map(|e| std::iter::once(BOS).chain(e.target.iter().copied()).collect()).collect();
        let labels: Vec<Vec<usize>> =
            examples.iter().map(|e| e.target.iter().copied().chain(std::iter::once(EOS)).collect()).collect();
        Ok(Self {
            src: Tokens::from_sequences(&src)?,
            tgt_in: Tokens::from_sequences(&tgt_in)?,
            labels: Tokens::from_sequences(&labels)?,
        })
    }
}

impl TaskSpec {
    /// Checks that the task fits a model with vocabulary `vocab` and `positions` positions.
    pub fn validate(&self, vocab: usize, positions: usize) -> Result<()> {
        if self.symbols < 2 {
            return Err(Error::InvalidConfig(format!("--symbols must be at least 2, got {}", self.symbols)));
        }
        if FIRST_SYMBOL + self.symbols > vocab {
            return Err(Error::InvalidConfig(format!(
                "--symbols {} does not fit the model's vocabulary of {vocab} tokens ({FIRST_SYMBOL} are reserved): at most {}",
                self.symbols,
                vocab - FIRST_SYMBOL
            )));
        }
        if self.min_len == 0 || self.min_len > self.max_len {
            return Err(Error::InvalidConfig(format!(
                "lengths must satisfy 1 <= --min-len <= --max-len, got {}..={}",
                self.min_len, self.max_len
            )));
        }
        // The decoder reads BOS plus the target and predicts one more token.
        if self.max_len + 1 > positions {
            return Err(Error::InvalidConfig(format!(
                "--max-len {} needs {} positions but the model has {positions}: at most {}",
                self.max_len,
                self.max_len + 1,
                positions - 1
            )));
        }
        Ok(())
    }

    /// Draws one example.
    pub fn sample(&self, rng: &mut impl Rng) -> Example {
        let len = rng.gen_range(self.min_len..=self.max_len);
        let source: Vec<usize> = (0..len).map(|_| FIRST_SYMBOL + rng.gen_range(0..self.symbols)).collect();
        let target = self.task.apply(&source);
        Example { source, target }
    }

    /// Number of distinct sources the spec can draw (saturating).
    pub fn space(&self) -> u128 {
        (self.min_len..=self.max_len)
            .fold(0u128, |acc, len| acc.saturating_add((self.symbols as u128).saturating_pow(len as u32)))
    }
}

/// An endless stream of training examples that never repeats a held-out source.
#[derive(Debug, Clone)]
pub struct TaskData {
    /// The task.
    pub spec: TaskSpec,
    rng: StdRng,
    held_out: Vec<Example>,
    held_out_sources: HashSet<Vec<usize>>,
}

impl TaskData {
    /// Draws `held_out` distinct examples for evaluation (from a stream derived from `seed`),
    /// then trains on examples drawn from `seed` whose sources are not among them.
    pub fn new(spec: TaskSpec, held_out: usize, seed: u64) -> Result<Self> {
        // Leave at least half of the sequence space for training.
        if (held_out as u128).saturating_mul(2) > spec.space() {
            return Err(Error::InvalidConfig(format!(
                "{held_out} held-out sequences would leave too little to train on: the task has only {} distinct sources",
                spec.space()
            )));
        }
        let mut eval_rng = StdRng::seed_from_u64(seed ^ 0x5eed_e7a1_0000_0001);
        let mut seen = HashSet::new();
        let mut examples = Vec::with_capacity(held_out);
        while examples.len() < held_out {
            let e = spec.sample(&mut eval_rng);
            if seen.insert(e.source.clone()) {
                examples.push(e);
            }
        }
        Ok(Self { spec, rng: StdRng::seed_from_u64(seed), held_out: examples, held_out_sources: seen })
    }

    /// The evaluation examples.
    pub fn held_out(&self) -> &[Example] {
        &self.held_out
    }

    /// `n` fresh training examples.
    pub fn train_examples(&mut self, n: usize) -> Vec<Example> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let e = self.spec.sample(&mut self.rng);
            if !self.held_out_sources.contains(&e.source) {
                out.push(e);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_the_task() {
        assert_eq!(Task::Reverse.apply(&[3, 4, 5]), vec![5, 4, 3]);
        assert_eq!(Task::Sort.apply(&[5, 3, 4, 3]), vec![3, 3, 4, 5]);
        assert_eq!(Task::Copy.apply(&[4, 3]), vec![4, 3]);
    }

    #[test]
    fn training_never_sees_a_held_out_source() {
        let spec = TaskSpec { task: Task::Reverse, symbols: 3, min_len: 1, max_len: 4 };
        let mut data = TaskData::new(spec, 20, 7).unwrap();
        let held: HashSet<_> = data.held_out().iter().map(|e| e.source.clone()).collect();
        assert_eq!(held.len(), 20);
        assert!(data.train_examples(2000).iter().all(|e| !held.contains(&e.source)));
    }

    #[test]
    fn too_small_a_space_is_an_error() {
        let spec = TaskSpec { task: Task::Copy, symbols: 2, min_len: 1, max_len: 2 };
        let err = TaskData::new(spec, 4, 0).unwrap_err().to_string();
        assert!(err.contains("only 6 distinct sources"), "{err}");
    }

    #[test]
    fn specs_that_do_not_fit_the_model_are_rejected() {
        let spec = TaskSpec { task: Task::Copy, symbols: 10, min_len: 1, max_len: 40 };
        assert!(spec.validate(13, 41).is_ok());
        assert!(spec.validate(13, 40).unwrap_err().to_string().contains("at most 39"));
        assert!(spec.validate(12, 41).unwrap_err().to_string().contains("at most 9"));
        let zero = TaskSpec { min_len: 0, ..spec };
        assert!(zero.validate(13, 41).is_err());
    }
}
