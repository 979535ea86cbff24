//! Attention masks as additive biases: 0 where a query may attend, a large negative number where
//! it may not.

use dfdx::prelude::*;

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

    /// The additive bias `(B, Sq, Sk)`, or `None` when nothing is masked (saves the addition).
    pub fn bias<B: Dim, Sq: Dim, Sk: Dim, E: Dtype, Dev: Device<E>>(
        &self,
        dev: &Dev,
        shape: (B, Sq, Sk),
    ) -> Option<Tensor<(B, Sq, Sk), E, Dev>> {
        let (b, sq, sk) = (shape.0.size(), shape.1.size(), shape.2.size());
        let padded = self.key_lengths.is_some_and(|l| l.iter().any(|&len| len < sk));
        if !self.causal && !padded {
            return None;
        }
        let masked = E::from_f64(MASKED).unwrap();
        let mut bias = vec![E::default(); b * sq * sk];
        for item in 0..b {
            let valid = self.key_lengths.map_or(sk, |l| l[item]);
            for q in 0..sq {
                let row = &mut bias[(item * sq + q) * sk..(item * sq + q + 1) * sk];
                for (k, v) in row.iter_mut().enumerate() {
                    if k >= valid || (self.causal && k > self.query_offset + q) {
                        *v = masked;
                    }
                }
            }
        }
        Some(dev.tensor_from_vec(bias, shape))
    }
}
