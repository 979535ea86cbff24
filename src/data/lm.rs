//! Data for language models: any text file as bytes, or the built-in addition task.

use crate::error::{Error, Result};
use crate::shape::Tokens;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::path::Path;

/// Byte-level vocabulary: every file is a sequence of tokens 0..=255.
pub const BYTE_VOCAB: usize = 256;

/// Inputs and next-token labels of one language-model batch.
pub type LmBatch = (Tokens<BYTE_VOCAB>, Tokens<BYTE_VOCAB>);

/// Where a language model's training text comes from.
#[derive(Debug, Clone)]
pub enum LmSource {
    /// A text file split into training and validation bytes.
    Text(ByteCorpus),
    /// `a+b=c` lines with held-out pairs.
    Addition(AdditionTask),
}

impl LmSource {
    /// `batch_size` training sequences of at most `context` tokens, drawn with `rng`.
    pub fn train_batch(&self, rng: &mut StdRng, batch_size: usize, context: usize) -> Result<LmBatch> {
        match self {
            LmSource::Text(c) => c.train_batch(rng, batch_size, context),
            LmSource::Addition(a) => a.train_batch(rng, batch_size),
        }
    }

    /// Fixed validation batches (the same on every call).
    pub fn validation_batches(&self, batch_size: usize, context: usize) -> Result<Vec<LmBatch>> {
        match self {
            LmSource::Text(c) => c.validation_batches(batch_size, context),
            LmSource::Addition(a) => a.validation_batches(batch_size),
        }
    }

    /// A one-line description, recorded in checkpoints.
    pub fn describe(&self) -> String {
        match self {
            LmSource::Text(c) => {
                format!("text: {} training and {} validation bytes, CRC-32 {:08x}", c.train.len(), c.val.len(), c.crc32)
            }
            LmSource::Addition(a) => format!("addition of up to {}-digit numbers", a.digits),
        }
    }
}

fn next_token_pair(seqs: &[&[u8]]) -> Result<LmBatch> {
    let inputs: Vec<Vec<usize>> = seqs.iter().map(|s| s[..s.len() - 1].iter().map(|&b| b as usize).collect()).collect();
    let labels: Vec<Vec<usize>> = seqs.iter().map(|s| s[1..].iter().map(|&b| b as usize).collect()).collect();
    Ok((Tokens::from_sequences(&inputs)?, Tokens::from_sequences(&labels)?))
}

/// The bytes of a text file: the first 90% for training, the rest for validation.
#[derive(Debug, Clone)]
pub struct ByteCorpus {
    /// Training bytes.
    pub train: Vec<u8>,
    /// Validation bytes.
    pub val: Vec<u8>,
    /// CRC-32 of all the bytes: what a resumed run checks it is trained on the same text.
    pub crc32: u32,
}

impl ByteCorpus {
    /// Fewest bytes a corpus may have: both splits need a few windows.
    pub const MIN_BYTES: usize = 64;

    /// Reads `path`; an error if it cannot be read, is shorter than [`Self::MIN_BYTES`], or is
    /// larger than a third of the available memory (the corpus is held in memory, split in
    /// two; a file that never ends, such as `/dev/zero`, stops there too).
    pub fn from_file(path: &Path) -> Result<Self> {
        use std::io::Read;
        let limit = crate::memory::available_memory().unwrap_or(u64::MAX) / 3;
        let file = std::fs::File::open(path).map_err(Error::io(path))?;
        let mut bytes = Vec::new();
        file.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(Error::io(path))?;
        if bytes.len() as u64 > limit {
            return Err(Error::InvalidConfig(format!(
                "{}: more than {} of text, a third of the memory available; a language model's corpus is held in \
                 memory",
                path.display(),
                crate::memory::human_bytes(u128::from(limit))
            )));
        }
        Self::from_bytes(bytes).map_err(|e| match e {
            Error::InvalidConfig(reason) => Error::InvalidConfig(format!("{}: {reason}", path.display())),
            other => other,
        })
    }

    /// Splits `bytes` 90/10.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        if bytes.len() < Self::MIN_BYTES {
            return Err(Error::InvalidConfig(format!(
                "the data has {} bytes; a language model needs at least {} to train and validate on",
                bytes.len(),
                Self::MIN_BYTES
            )));
        }
        let split = bytes.len() * 9 / 10;
        Ok(Self { val: bytes[split..].to_vec(), train: bytes[..split].to_vec(), crc32: crc32fast::hash(&bytes) })
    }

    fn window(data: &[u8], context: usize) -> usize {
        // A window of `len + 1` bytes gives `len` next-token predictions.
        context.min(data.len() - 1) + 1
    }

    fn train_batch(&self, rng: &mut StdRng, batch_size: usize, context: usize) -> Result<LmBatch> {
        let w = Self::window(&self.train, context);
        let seqs: Vec<&[u8]> = (0..batch_size)
            .map(|_| {
                let start = rng.gen_range(0..=self.train.len() - w);
                &self.train[start..start + w]
            })
            .collect();
        next_token_pair(&seqs)
    }

    fn validation_batches(&self, batch_size: usize, context: usize) -> Result<Vec<LmBatch>> {
        let w = Self::window(&self.val, context);
        // Non-overlapping windows from the start, at most 16 batches' worth.
        let windows: Vec<&[u8]> = self.val.chunks_exact(w).take(16 * batch_size).collect();
        let windows = if windows.is_empty() { vec![&self.val[..w]] } else { windows };
        windows.chunks(batch_size).map(next_token_pair).collect()
    }
}

/// Sums of two random numbers of up to `digits` digits, as the lines `a+b=c\n`.
///
/// The held-out pairs never appear in training; accuracy is measured on them by giving the
/// model `a+b=` and comparing what it writes up to the newline with `c`.
#[derive(Debug, Clone)]
pub struct AdditionTask {
    /// Most digits per operand.
    pub digits: u32,
    held_out: Vec<(u64, u64)>,
    held_out_set: HashSet<(u64, u64)>,
}

impl AdditionTask {
    /// The task with `held_out` evaluation pairs drawn from `seed`.
    pub fn new(digits: u32, held_out: usize, seed: u64) -> Result<Self> {
        if !(1..=9).contains(&digits) {
            return Err(Error::InvalidConfig(format!("addition digits must be in 1..=9, got {digits}")));
        }
        let space = 10u64.pow(digits) * 10u64.pow(digits);
        if (held_out as u64) * 2 > space {
            return Err(Error::InvalidConfig(format!(
                "{held_out} held-out pairs leave too little to train on ({space} pairs exist)"
            )));
        }
        let mut rng = StdRng::seed_from_u64(seed ^ 0xadd1_7100);
        let mut set = HashSet::new();
        let mut pairs = Vec::with_capacity(held_out);
        while pairs.len() < held_out {
            let pair = Self::draw(&mut rng, digits);
            if set.insert(pair) {
                pairs.push(pair);
            }
        }
        Ok(Self { digits, held_out: pairs, held_out_set: set })
    }

    fn draw(rng: &mut StdRng, digits: u32) -> (u64, u64) {
        // Draw the length first so that short numbers are as common as long ones.
        let mut number = || {
            let len = rng.gen_range(1..=digits);
            rng.gen_range(0..10u64.pow(len))
        };
        (number(), number())
    }

    /// The line for a pair: `a+b=c\n`.
    pub fn line(a: u64, b: u64) -> String {
        format!("{a}+{b}={}\n", a + b)
    }

    /// The evaluation pairs.
    pub fn held_out(&self) -> &[(u64, u64)] {
        &self.held_out
    }

    /// Longest line, in bytes.
    pub fn max_line_len(&self) -> usize {
        // digits + '+' + digits + '=' + (digits + 1) + '\n'
        3 * self.digits as usize + 4
    }

    fn train_batch(&self, rng: &mut StdRng, batch_size: usize) -> Result<LmBatch> {
        let mut lines = Vec::with_capacity(batch_size);
        while lines.len() < batch_size {
            let (a, b) = Self::draw(rng, self.digits);
            if !self.held_out_set.contains(&(a, b)) {
                lines.push(Self::line(a, b).into_bytes());
            }
        }
        next_token_pair(&lines.iter().map(Vec::as_slice).collect::<Vec<_>>())
    }

    fn validation_batches(&self, batch_size: usize) -> Result<Vec<LmBatch>> {
        let lines: Vec<Vec<u8>> = self.held_out.iter().map(|&(a, b)| Self::line(a, b).into_bytes()).collect();
        lines.chunks(batch_size).map(|c| next_token_pair(&c.iter().map(Vec::as_slice).collect::<Vec<_>>())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_or_empty_data_is_an_error() {
        let err = ByteCorpus::from_bytes(Vec::new()).unwrap_err().to_string();
        assert!(err.contains("has 0 bytes") && err.contains("at least 64"), "{err}");
    }

    #[test]
    fn batches_predict_the_next_byte() {
        let corpus = ByteCorpus::from_bytes((0..200u8).collect()).unwrap();
        let (x, y) = corpus.train_batch(&mut StdRng::seed_from_u64(0), 3, 8).unwrap();
        assert_eq!((x.batch(), x.seq_len()), (3, 8));
        for i in 0..3 {
            for (a, b) in x.sequence(i).iter().zip(y.sequence(i)) {
                assert_eq!(a + 1, *b);
            }
        }
        let val = corpus.validation_batches(4, 8).unwrap();
        assert!(val.iter().all(|(x, _)| x.sequence(0)[0] >= 180));
    }

    #[test]
    fn addition_lines_are_right_and_held_out_pairs_never_train() {
        assert_eq!(AdditionTask::line(123, 48), "123+48=171\n");
        let task = AdditionTask::new(2, 50, 1).unwrap();
        let held: HashSet<String> = task.held_out().iter().map(|&(a, b)| AdditionTask::line(a, b)).collect();
        let (x, y) = task.train_batch(&mut StdRng::seed_from_u64(5), 500).unwrap();
        for i in 0..500 {
            let mut line: Vec<u8> = x.sequence(i).iter().map(|&t| t as u8).collect();
            line.push(*y.sequence(i).last().unwrap() as u8);
            assert!(!held.contains(std::str::from_utf8(&line).unwrap()));
        }
        assert!(AdditionTask::new(1, 80, 0).is_err());
    }
}
