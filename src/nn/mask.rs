//! Attention masks as additive biases: 0 where a query may attend, a large negative number where
//! it may not.

use dfdx::prelude::*;

use crate::error::{Error, Result};

/// The bias added to masked scores. Finite, so that a query whose keys are all masked gets
/// uniform (finite) weights instead of `0/0 = NaN`; `exp(-1e9)` is exactly 0 in f32 and f64, so a
/// masked key whose row has any unmasked key gets exactly zero weight.
pub const MASKED: f64 = -1e9;

/// Which keys each query may see.
#[derive(Debug, Clone, Copy, Default)]
pub struct MaskSpec<'a> {
    /// Query `i` (at absolute position `query_offset + i`) may see keys `0..=query_offset + i` only.
    pub causal: bool,
    /// Absolute position of the first query (the number of cached keys during incremental decoding).
    pub query_offset: usize,
    /// Valid key length of each batch item: keys at or past it are padding.
    pub key_lengths: Option<&'a [usize]>,
    /// First valid key of each batch item: keys before it are padding (the left padding of
    /// prompts of different lengths generated together, see
    /// [`generate_batch`](crate::generate::generate_batch)).
    pub key_starts: Option<&'a [usize]>,
}

impl<'a> MaskSpec<'a> {
    /// No masking at all.
    pub fn none() -> Self {
        Self::default()
    }
    /// Only padded keys are masked.
    pub fn padding(key_lengths: &'a [usize]) -> Self {
        Self { key_lengths: Some(key_lengths), ..Self::default() }
    }
    /// Future keys are masked, and padded ones if `key_lengths` is given.
    pub fn causal(key_lengths: Option<&'a [usize]>) -> Self {
        Self { causal: true, key_lengths, ..Self::default() }
    }

    /// Checks that the mask gives one key length per batch item (of `batch`), if it gives any.
    pub fn check_batch(&self, batch: usize) -> Result<()> {
        let per_item = [
            ("key lengths in the mask (one per batch item)", self.key_lengths),
            ("key starts in the mask (one per batch item)", self.key_starts),
        ];
        for (what, values) in per_item {
            match values {
                Some(values) if values.len() != batch => {
                    return Err(Error::DimMismatch { what, expected: batch, found: values.len() })
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The additive bias `(B, Sq, Sk)`, or `None` when nothing is masked (saves the addition).
    pub fn bias<B: Dim, Sq: Dim, Sk: Dim, E: Dtype, Dev: Device<E>>(
        &self,
        dev: &Dev,
        shape: (B, Sq, Sk),
    ) -> Option<Tensor<(B, Sq, Sk), E, Dev>> {
        let bias = self.values::<E>(shape.0.size(), shape.1.size(), shape.2.size(), 1)?;
        Some(dev.tensor_from_vec(bias, shape))
    }

    /// [`Self::bias`] for `groups` query heads that share their keys, stacked along the query
    /// axis: `(B, groups * Sq, Sk)`, row `r` that of query `r % Sq`.
    pub(crate) fn grouped_bias<B: Dim, Sk: Dim, E: Dtype, Dev: Device<E>>(
        &self,
        dev: &Dev,
        shape: (B, usize, Sk),
        groups: usize,
    ) -> Option<Tensor<(B, usize, Sk), E, Dev>> {
        let bias = self.values::<E>(shape.0.size(), shape.1, shape.2.size(), groups)?;
        Some(dev.tensor_from_vec(bias, (shape.0, groups * shape.1, shape.2)))
    }

    /// The bias values `(b, groups * sq, sk)`, or `None` when nothing is masked.
    fn values<E: Dtype>(&self, b: usize, sq: usize, sk: usize, groups: usize) -> Option<Vec<E>> {
        let padded = self.key_lengths.is_some_and(|l| l.iter().any(|&len| len < sk))
            || self.key_starts.is_some_and(|s| s.iter().any(|&start| start > 0));
        if !self.causal && !padded {
            return None;
        }
        let masked = E::from_f64(MASKED).unwrap();
        let rows = groups * sq;
        let mut bias = vec![E::default(); b * rows * sk];
        for item in 0..b {
            let valid = self.key_lengths.map_or(sk, |l| l[item]);
            let start = self.key_starts.map_or(0, |s| s[item]);
            for r in 0..rows {
                let q = r % sq;
                let row = &mut bias[(item * rows + r) * sk..(item * rows + r + 1) * sk];
                for (k, v) in row.iter_mut().enumerate() {
                    if k >= valid || k < start || (self.causal && k > self.query_offset + q) {
                        *v = masked;
                    }
                }
            }
        }
        Some(bias)
    }
}
