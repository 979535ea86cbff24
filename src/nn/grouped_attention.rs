//! Grouped-query attention (Ainslie et al., 2023), as Llama 2 and 3 use it: `H` query heads
//! share `KVH` key/value heads, `H / KVH` queries per group, which shrinks the projections of
//! keys and values and the cache that holds them by that factor. Multi-query attention (PaLM)
//! is `KVH = 1`; `KVH = H` is multi-head attention.

use super::{scaled_dot_product_attention, HeadMerge, HeadProjection, KvCache, MaskSpec, NoBias, RotaryEmbedding};
use crate::error::Result;
use crate::shape::{Heads, Hidden};
use crate::FloatDtype;
use dfdx::prelude::*;

/// Causal self-attention of width `D` with `H` query heads and `KVH` key/value heads of width
/// `HD`, rotary positions on queries and keys, and no biases (Llama's attention).
///
/// Query head `h` reads key/value head `h / (H / KVH)`, as Hugging Face's `repeat_kv` arranges
/// them. `H` must be a multiple of `KVH`: otherwise the model does not build (a constant
/// evaluation error at `cargo build`; `cargo check` does not evaluate it).
///
/// **PyTorch equivalent**: Hugging Face's `LlamaAttention` (`q_proj`, `k_proj`, `v_proj`,
/// `o_proj`).
#[derive(Debug, Clone, crate::Model)]
pub struct GroupedQueryAttention<
    const D: usize,
    const H: usize,
    const KVH: usize,
    const HD: usize,
    E: Dtype,
    Dev: Storage<E>,
> {
    /// Queries: `(B, S, D) -> (B, H, S, HD)`.
    pub w_q: HeadProjection<D, H, HD, E, Dev, NoBias>,
    /// Keys: `(B, S, D) -> (B, KVH, S, HD)`.
    pub w_k: HeadProjection<D, KVH, HD, E, Dev, NoBias>,
    /// Values: `(B, S, D) -> (B, KVH, S, HD)`.
    pub w_v: HeadProjection<D, KVH, HD, E, Dev, NoBias>,
    /// The heads' merge: `(B, H, S, HD) -> (B, S, D)`.
    pub w_o: HeadMerge<H, HD, D, E, Dev, NoBias>,
}

impl<const D: usize, const H: usize, const KVH: usize, const HD: usize, E: FloatDtype, Dev: Device<E>>
    GroupedQueryAttention<D, H, KVH, HD, E, Dev>
{
    /// Queries per key/value head.
    pub const GROUP: usize = {
        assert!(KVH > 0 && H.is_multiple_of(KVH), "grouped-query attention needs H to be a multiple of KVH");
        H / KVH
    };

    /// Self-attention over `x: (B, S, D)` at positions `offset .. offset + S` (rotated by `rope`),
    /// under `mask` (causal for a language model, with padding lengths). Returns `(B, S, D)`.
    pub fn forward<B: Dim, S: Dim, T: Tape<E, Dev>>(
        &self,
        x: Hidden<B, S, D, E, Dev, T>,
        rope: &RotaryEmbedding<HD, E, Dev>,
        offset: usize,
        mask: &MaskSpec,
    ) -> Result<Hidden<B, S, D, E, Dev, T>> {
        // Evaluated when the type is built: heads that do not group evenly do not compile.
        let _ = Self::GROUP;
        let q = rope.apply(self.w_q.forward(x.retaped::<T>()), offset)?; // (B, H, S, HD)
        let k = rope.apply(self.w_k.forward(x.retaped::<T>()), offset)?; // (B, KVH, S, HD)
        let v = self.w_v.forward(x); // (B, KVH, S, HD)
        self.attend(q, k, v, mask)
    }

    /// Self-attention of new positions `x: (B, Snew, D)` after the `cache`d ones, over those and
    /// themselves, appending their keys and values to `cache`: only the `KVH` key/value heads
    /// are stored. Equals [`Self::forward`] over the whole sequence, at the new positions.
    /// `key_starts` gives each row's left padding (see [`MaskSpec::key_starts`]).
    pub fn forward_cached(
        &self,
        x: Hidden<usize, usize, D, E, Dev>,
        rope: &RotaryEmbedding<HD, E, Dev>,
        cache: &mut Option<KvCache<D, KVH, HD, E, Dev>>,
        key_starts: Option<&[usize]>,
    ) -> Result<Hidden<usize, usize, D, E, Dev>> {
        let _ = Self::GROUP;
        let past = KvCache::positions(cache, x.shape().0)?;
        let q = rope.apply(self.w_q.forward(x.clone()), past)?;
        let [k_new, v_new] = HeadProjection::forward_shared([&self.w_k, &self.w_v], x);
        let all = KvCache::append(cache, rope.apply(k_new, past)?, v_new);
        let mask = MaskSpec { causal: true, query_offset: past, key_lengths: None, key_starts };
        self.attend(q, all.keys, all.values, &mask)
    }

    /// Queries `(B, H, Sq, HD)` over `KVH` heads of keys and values `(B, KVH, Sk, HD)`, merged
    /// back to `(B, Sq, D)`. The `H / KVH` query heads of a group are stacked along the query
    /// axis, `(B, KVH, G * Sq, HD)` (the same memory), so that each key/value head is read in
    /// place rather than copied for every query head that shares it.
    fn attend<B: Dim, Sq: Dim, Sk: Dim, T: Tape<E, Dev>>(
        &self,
        q: Heads<B, H, Sq, HD, E, Dev, T>,
        k: Heads<B, KVH, Sk, HD, E, Dev, T>,
        v: Heads<B, KVH, Sk, HD, E, Dev, T>,
        mask: &MaskSpec,
    ) -> Result<Hidden<B, Sq, D, E, Dev, T>> {
        let (b, _, sq, _) = *q.shape();
        let sk = k.shape().2;
        mask.check_batch(b.size())?;
        let group = Self::GROUP;
        let stacked = q.contiguous().reshape_like(&(b, Const::<KVH>, group * sq.size(), Const::<HD>));
        let bias = mask.grouped_bias::<B, Sk, E, Dev>(stacked.device(), (b, sq.size(), sk), group);
        // Each of q, k and v carries the operations recorded on its branch; the products merge them.
        let heads = scaled_dot_product_attention(stacked, k, v, bias.as_ref(), 0.0); // (B, KVH, G * Sq, HD)
        Ok(self.w_o.forward(heads.reshape_like(&(b, Const::<H>, sq, Const::<HD>))))
    }
}
