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

/// How symbols are written: symbol `i` (token id `FIRST_SYMBOL + i`) is the `i`-th character.
pub const SYMBOL_ALPHABET: &str = "0123456789abcdef";

/// The text of a token: its symbol's character, or `<s>`, `</s>`, `<pad>` for the special
/// tokens (`?` for an id outside the vocabulary).
pub fn token_text(id: usize) -> String {
    match id {
        PAD => "<pad>".into(),
        BOS => "<s>".into(),
        EOS => "</s>".into(),
        _ => symbol_text(&[id]),
    }
}

/// Symbols as text, one character each (`?` for a token that is not a symbol).
pub fn symbol_text(ids: &[usize]) -> String {
    ids.iter()
        .map(|&t| t.checked_sub(FIRST_SYMBOL).and_then(|i| SYMBOL_ALPHABET.chars().nth(i)).unwrap_or('?'))
        .collect()
}

/// Reads symbols written as [`symbol_text`] does (white space ignored) for a task of
/// `symbols` symbols.
pub fn parse_symbols(text: &str, symbols: usize) -> Result<Vec<usize>> {
    let alphabet: Vec<char> = SYMBOL_ALPHABET.chars().take(symbols).collect();
    let ids = text
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| {
            alphabet.iter().position(|&a| a == c.to_ascii_lowercase()).map(|i| FIRST_SYMBOL + i).ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "`{c}` is not one of the task's {symbols} symbols: write sequences with {}",
                    alphabet.iter().collect::<String>()
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if ids.is_empty() {
        return Err(Error::InvalidConfig(format!(
            "no symbols in `{text}`: write a sequence such as `{}`",
            alphabet.iter().take(5).collect::<String>()
        )));
    }
    Ok(ids)
}

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
        if self.symbols > vocab.saturating_sub(FIRST_SYMBOL) {
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
        if self.max_len >= positions {
            return Err(Error::InvalidConfig(format!(
                "--max-len {} needs {} positions but the model has {positions}: at most {}",
                self.max_len,
                self.max_len as u128 + 1,
                positions.saturating_sub(1)
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
        (self.min_len..=self.max_len).fold(0u128, |acc, len| acc.saturating_add(self.space_of_length(len)))
    }

    /// Number of distinct sources of length `len` (saturating).
    pub fn space_of_length(&self, len: usize) -> u128 {
        (self.symbols as u128).saturating_pow(len as u32)
    }

    /// Most held-out sources of length `len`: half of that length's sources, so that training
    /// sees every length. (With 10 symbols there are only 10 sources of length 1: held out
    /// without a cap, a 1000-sequence evaluation set takes all of them, and the model never
    /// trains on one-symbol inputs.)
    pub fn held_out_cap(&self, len: usize) -> u128 {
        self.space_of_length(len) / 2
    }
}

/// FNV-1a of `bytes`: a cheap fingerprint for telling that two runs were built alike.
pub(crate) fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// An endless stream of training examples that never repeats a held-out source.
#[derive(Debug, Clone)]
pub struct TaskData {
    /// The task.
    pub spec: TaskSpec,
    rng: StdRng,
    /// Seeds each step's dropout masks, apart from the examples' stream.
    dropout_rng: StdRng,
    held_out: Vec<Example>,
    held_out_sources: HashSet<Vec<usize>>,
}

impl TaskData {
    /// Draws `held_out` distinct examples for evaluation (from a stream derived from `seed`),
    /// at most half of the sources of any one length ([`TaskSpec::held_out_cap`]), then trains
    /// on examples drawn from `seed` whose sources are not among them.
    pub fn new(spec: TaskSpec, held_out: usize, seed: u64) -> Result<Self> {
        // Leave at least half of every length's sources for training.
        let capacity = (spec.min_len..=spec.max_len).fold(0u128, |acc, len| acc.saturating_add(spec.held_out_cap(len)));
        if held_out as u128 > capacity {
            return Err(Error::InvalidConfig(format!(
                "{held_out} held-out sequences would leave too little to train on: the task has only {} distinct \
                 sources, and at most {capacity} can be held out (half of those of each length)",
                spec.space()
            )));
        }
        let mut eval_rng = StdRng::seed_from_u64(seed ^ 0x5eed_e7a1_0000_0001);
        let mut seen = HashSet::new();
        let mut per_length = vec![0u128; spec.max_len + 1];
        let mut examples = Vec::with_capacity(held_out);
        while examples.len() < held_out {
            let e = spec.sample(&mut eval_rng);
            let len = e.source.len();
            if per_length[len] < spec.held_out_cap(len) && seen.insert(e.source.clone()) {
                per_length[len] += 1;
                examples.push(e);
            }
        }
        Ok(Self {
            spec,
            rng: StdRng::seed_from_u64(seed),
            dropout_rng: StdRng::seed_from_u64(seed ^ 0xd509_0a75_0000_0002),
            held_out: examples,
            held_out_sources: seen,
        })
    }

    /// Bytes one held-out example takes at most (its source and target, and the source again in
    /// the set that keeps training away from it), for checking an evaluation size up front.
    pub fn bytes_per_held_out(spec: &TaskSpec) -> u64 {
        (spec.max_len as u64).saturating_mul(24).saturating_add(120)
    }

    /// The evaluation examples.
    pub fn held_out(&self) -> &[Example] {
        &self.held_out
    }

    /// A fingerprint of the held-out examples (FNV-1a over the ids of their sources and
    /// targets), recorded with a run so that evaluating it later can tell that the same set was
    /// rebuilt: edited metadata (another task, lengths, symbols, seed), or a typeformer that
    /// draws held-out sets differently, would give another.
    pub fn held_out_digest(&self) -> String {
        let ids = self
            .held_out
            .iter()
            .flat_map(|e| e.source.iter().chain([&usize::MAX]).chain(&e.target).chain([&usize::MAX]).copied());
        let hash = fnv1a(ids.flat_map(|id| (id as u64).to_le_bytes()));
        format!("{hash:016x}")
    }

    /// A seed for the dropout masks of the next training step (see
    /// [`seed_dropout_per_example`](crate::nn::seed_dropout_per_example)), from a stream of its
    /// own: the examples drawn do not depend on whether a run uses dropout.
    pub fn dropout_seed(&mut self) -> u64 {
        self.dropout_rng.gen()
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
    fn symbols_are_written_and_read_back() {
        let ids = parse_symbols("0 1a", 11).unwrap();
        assert_eq!(ids, vec![3, 4, 13]);
        assert_eq!(symbol_text(&ids), "01a");
        assert_eq!(token_text(BOS), "<s>");
        let err = parse_symbols("019", 5).unwrap_err().to_string();
        assert!(err.contains("`9` is not one of the task's 5 symbols") && err.contains("01234"), "{err}");
        assert!(parse_symbols("  ", 5).unwrap_err().to_string().contains("no symbols"));
    }

    #[test]
    fn too_small_a_space_is_an_error() {
        let spec = TaskSpec { task: Task::Copy, symbols: 2, min_len: 1, max_len: 2 };
        // 2 + 4 sources, of which 1 + 2 may be held out.
        assert!(TaskData::new(spec, 3, 0).is_ok());
        let err = TaskData::new(spec, 4, 0).unwrap_err().to_string();
        assert!(err.contains("only 6 distinct sources") && err.contains("at most 3"), "{err}");
    }

    #[test]
    fn training_sees_every_length() {
        // 10 sources of length 1 and 100 of length 2: a 1000-example evaluation set drawn
        // without a cap would hold out all ten one-symbol sources.
        let spec = TaskSpec { task: Task::Reverse, symbols: 10, min_len: 1, max_len: 10 };
        let mut data = TaskData::new(spec, 1000, 0).unwrap();
        for len in 1..=3 {
            let held = data.held_out().iter().filter(|e| e.source.len() == len).count() as u128;
            assert!(held <= spec.space_of_length(len) / 2, "length {len}: {held} held out");
        }
        let trained: HashSet<usize> = data.train_examples(5000).iter().map(|e| e.source.len()).collect();
        assert_eq!(trained, (1..=10).collect());
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
