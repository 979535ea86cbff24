//! The dimension vocabulary and typed token batches.
//!
//! Model widths are const generics; batch (`B`) and sequence (`S`) lengths are any dfdx [`Dim`]:
//! `usize` at run time or `Const<N>`. The aliases here name the tensors that flow through a model,
//! so a signature reads as its shape: `Hidden<B, S, D>` is `(B, S, D)`.

use crate::error::{Error, Result};
use dfdx::prelude::*;

/// Activations of a model of width `D`: `(B, S, D)`.
pub type Hidden<B, S, const D: usize, E, Dev, T = NoneTape> = Tensor<(B, S, Const<D>), E, Dev, T>;

/// Per-head activations: `(B, H, S, HD)`.
pub type Heads<B, const H: usize, S, const HD: usize, E, Dev, T = NoneTape> =
    Tensor<(B, Const<H>, S, Const<HD>), E, Dev, T>;

/// Attention weights of `H` heads, queries over keys: `(B, H, Sq, Sk)`.
pub type AttentionMap<B, const H: usize, Sq, Sk, E, Dev, T = NoneTape> = Tensor<(B, Const<H>, Sq, Sk), E, Dev, T>;

/// An additive attention mask shared by all heads: `(B, Sq, Sk)`.
pub type MaskBias<B, Sq, Sk, E, Dev> = Tensor<(B, Sq, Sk), E, Dev>;

/// Scores over a vocabulary of `V` tokens: `(B, S, V)`.
pub type Logits<B, S, const V: usize, E, Dev, T = NoneTape> = Tensor<(B, S, Const<V>), E, Dev, T>;

/// Logits of a recorded (training) pass over run-time batch and sequence lengths.
pub type TrainLogits<const V: usize, E, Dev> = Logits<usize, usize, V, E, Dev, OwnedTape<E, Dev>>;

/// Hidden vectors of a recorded (training) pass over run-time batch and sequence lengths.
pub type TrainHidden<const D: usize, E, Dev> = Hidden<usize, usize, D, E, Dev, OwnedTape<E, Dev>>;

/// A batch of right-padded token sequences over a vocabulary of `V` tokens.
///
/// The vocabulary is part of the type, so source tokens cannot be fed to a target embedding of
/// another size, and labels cannot be paired with logits over another vocabulary: both are type
/// errors. Ids are checked against `V` once, when the batch is made.
///
/// ```
/// use typeformer::shape::Tokens;
/// let batch = Tokens::<10>::from_sequences(&[vec![1, 2, 3], vec![4]]).unwrap();
/// assert_eq!((batch.batch(), batch.seq_len()), (2, 3));
/// assert_eq!(batch.lengths(), &[3, 1]);
/// assert!(Tokens::<10>::from_sequences(&[vec![10]]).is_err()); // 10 is not below V = 10
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens<const V: usize> {
    ids: Vec<usize>,
    batch: usize,
    seq: usize,
    lengths: Vec<usize>,
}

impl<const V: usize> Tokens<V> {
    /// Pads `sequences` on the right to the longest one. Padding positions hold id 0 and are
    /// masked wherever the batch is used as keys or labels.
    pub fn from_sequences(sequences: &[Vec<usize>]) -> Result<Self> {
        if sequences.is_empty() {
            return Err(Error::InvalidConfig("a token batch needs at least one sequence".into()));
        }
        let seq = sequences.iter().map(Vec::len).max().unwrap_or(0);
        if seq == 0 {
            return Err(Error::InvalidConfig("every sequence in the batch is empty".into()));
        }
        let mut ids = vec![0; sequences.len() * seq];
        for (item, s) in sequences.iter().enumerate() {
            ids[item * seq..item * seq + s.len()].copy_from_slice(s);
        }
        let lengths = sequences.iter().map(Vec::len).collect();
        Self::new(ids, sequences.len(), seq, lengths)
    }

    /// A batch from row-major ids of shape `(batch, seq)` and the valid length of each row.
    pub fn new(ids: Vec<usize>, batch: usize, seq: usize, lengths: Vec<usize>) -> Result<Self> {
        if ids.len() != batch * seq {
            return Err(Error::DimMismatch {
                what: "number of token ids (batch * seq)",
                expected: batch * seq,
                found: ids.len(),
            });
        }
        if lengths.len() != batch {
            return Err(Error::DimMismatch {
                what: "number of lengths (one per batch item)",
                expected: batch,
                found: lengths.len(),
            });
        }
        if let Some(&bad) = lengths.iter().find(|&&l| l > seq) {
            return Err(Error::DimMismatch {
                what: "sequence length within the padded batch",
                expected: seq,
                found: bad,
            });
        }
        for (i, &token) in ids.iter().enumerate() {
            let (item, position) = (i / seq.max(1), i % seq.max(1));
            if token >= V && position < lengths[item] {
                return Err(Error::TokenOutOfRange { token, item, position, vocab: V });
            }
        }
        let mut ids = ids;
        // Padding ids are never looked at, but they must still index the embedding table.
        for (item, &len) in lengths.iter().enumerate() {
            ids[item * seq + len..(item + 1) * seq].fill(0);
        }
        Ok(Self { ids, batch, seq, lengths })
    }

    /// Number of sequences.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Padded length.
    pub fn seq_len(&self) -> usize {
        self.seq
    }
    /// Valid length of each sequence.
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }
    /// Row-major ids, `(batch, seq)`, with 0 at padding positions.
    pub fn ids(&self) -> &[usize] {
        &self.ids
    }
    /// True when no sequence is padded.
    pub fn is_full(&self) -> bool {
        self.lengths.iter().all(|&l| l == self.seq)
    }
    /// Number of non-padding tokens.
    pub fn num_tokens(&self) -> usize {
        self.lengths.iter().sum()
    }
    /// The ids on `dev` as a `(B, S)` tensor.
    pub fn to_tensor<Dev: TensorFromVec<usize>>(&self, dev: &Dev) -> Tensor<(usize, usize), usize, Dev> {
        dev.tensor_from_vec(self.ids.clone(), (self.batch, self.seq))
    }
    /// Sequences `rows` of the batch with the batch's padded length: one replica's share of a
    /// global batch in data-parallel training computes exactly what those rows compute in the
    /// whole batch. An error when `rows` is empty or reaches past the batch.
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Result<Self> {
        if rows.is_empty() || rows.end > self.batch {
            return Err(Error::InvalidConfig(format!(
                "rows {}..{} of a batch of {} sequences: expected a non-empty range within it",
                rows.start, rows.end, self.batch
            )));
        }
        let ids = self.ids[rows.start * self.seq..rows.end * self.seq].to_vec();
        Ok(Self { ids, batch: rows.len(), seq: self.seq, lengths: self.lengths[rows].to_vec() })
    }
    /// Sequence `item` without its padding.
    pub fn sequence(&self, item: usize) -> &[usize] {
        &self.ids[item * self.seq..item * self.seq + self.lengths[item]]
    }
}
