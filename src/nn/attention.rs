//! Scaled dot-product attention and multi-head attention (section 3.2).
//!
//! Heads are carried by the type: a projection typed `(H, HD, D)` turns `(B, S, D)` into
//! `(B, H, S, HD)`, and the output projection typed `(D, H, HD)` merges them back. Nothing needs
//! `D == H * HD` (heads and head width are independent, as in T5), and no run-time reshape can
//! disagree with the model's dimensions.

use super::init::uniform_fan_in;
use super::{bias_options, dropout_when_training, project, project_shared, BiasKind, MaskSpec, WithBias};
use crate::error::{Error, Result};
use crate::shape::{AttentionMap, Heads, Hidden, MaskBias};
use crate::FloatDtype;
use dfdx::prelude::*;

/// `softmax(q kᵀ / sqrt(HD) + bias)`: `(B, H, Sq, HD) x (B, H, Sk, HD) -> (B, H, Sq, Sk)`.
///
/// `bias` is an additive mask `(B, Sq, Sk)` (see [`MaskSpec::bias`]), shared by all heads.
pub fn attention_weights<B: Dim, const H: usize, Sq: Dim, Sk: Dim, const HD: usize, E, Dev, T>(
    q: Heads<B, H, Sq, HD, E, Dev, T>,
    k: Heads<B, H, Sk, HD, E, Dev, T>,
    bias: Option<&Tensor<(B, Sq, Sk), E, Dev>>,
) -> Tensor<(B, Const<H>, Sq, Sk), E, Dev, T>
where
    E: FloatDtype,
    Dev: Device<E>,
    T: Tape<E, Dev>,
{
    let scale = E::from_f64(1.0 / (HD as f64).sqrt()).unwrap();
    let scores = crate::kernels::batched_matmul(q, k.permute::<_, Axes4<0, 1, 3, 2>>()); // (B, H, Sq, Sk)
    crate::kernels::attention_softmax(scores, scale, bias)
}

/// `Attention(Q, K, V) = softmax(Q Kᵀ / sqrt(d_k)) V` (equation 1), with an optional additive
/// mask and dropout on the weights when traced. Returns `(B, H, Sq, HD)`.
pub fn scaled_dot_product_attention<B: Dim, const H: usize, Sq: Dim, Sk: Dim, const HD: usize, E, Dev, T>(
    q: Heads<B, H, Sq, HD, E, Dev, T>,
    k: Heads<B, H, Sk, HD, E, Dev, T>,
    v: Heads<B, H, Sk, HD, E, Dev, T>,
    bias: Option<&Tensor<(B, Sq, Sk), E, Dev>>,
    dropout_p: f64,
) -> Heads<B, H, Sq, HD, E, Dev, T>
where
    E: FloatDtype,
    Dev: Device<E>,
    T: Tape<E, Dev>,
{
    let weights = dropout_when_training(attention_weights(q, k, bias), dropout_p);
    // (B, H, Sq, Sk) x (B, H, Sk, HD), stored (B, Sq, H, HD): the heads' merge reads it in place.
    crate::kernels::batched_matmul_heads_last(weights, v).permute::<_, Axes4<0, 2, 1, 3>>()
}

/// A projection from width `D` into `H` heads of width `HD`: `(B, S, D) -> (B, H, S, HD)`.
///
/// The weight `(D, H, HD)` is PyTorch's `[H*HD, D]` Linear weight transposed (see
/// [`Linear`](super::Linear)).
#[derive(Debug, Clone)]
pub struct HeadProjection<const D: usize, const H: usize, const HD: usize, E: Dtype, Dev: Storage<E>, Bias = WithBias> {
    /// `(D, H, HD)`.
    pub weight: Tensor<Rank3<D, H, HD>, E, Dev>,
    /// `(H, HD)`; fixed zeros under [`NoBias`](super::NoBias).
    pub bias: Tensor<Rank2<H, HD>, E, Dev>,
    bias_kind: std::marker::PhantomData<Bias>,
}

impl<const D: usize, const H: usize, const HD: usize, E: FloatDtype, Dev: Device<E>, Bias: BiasKind>
    TensorCollection<E, Dev> for HeadProjection<D, H, HD, E, Dev, Bias>
{
    type To<E2: Dtype, D2: Device<E2>> = HeadProjection<D, H, HD, E2, D2, Bias>;

    fn iter_tensors<V: ModuleVisitor<Self, E, Dev>>(visitor: &mut V) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::tensor("weight", |s| &s.weight, |s| &mut s.weight, uniform_fan_in::<_, _, _, D>()),
                Self::tensor(
                    "bias",
                    |s| &s.bias,
                    |s| &mut s.bias,
                    bias_options::<Bias, _, _, _>(uniform_fan_in::<_, _, _, D>()),
                ),
            ),
            |(weight, bias)| HeadProjection { weight, bias, bias_kind: Default::default() },
        )
    }
}

impl<const D: usize, const H: usize, const HD: usize, E: FloatDtype, Dev: Device<E>, Bias: BiasKind>
    HeadProjection<D, H, HD, E, Dev, Bias>
{
    /// `(B, S, D) -> (B, H, S, HD)`.
    pub fn forward<B: Dim, S: Dim, T: Tape<E, Dev>>(
        &self,
        x: Hidden<B, S, D, E, Dev, T>,
    ) -> Heads<B, H, S, HD, E, Dev, T> {
        let [y] = Self::forward_shared([self], x);
        y
    }

    /// One input through several projections (self-attention's queries, keys and values) as
    /// one pass over their products; `x`'s tape goes with the first output.
    pub(super) fn forward_shared<const P: usize, B: Dim, S: Dim, T: Tape<E, Dev>>(
        projections: [&Self; P],
        x: Hidden<B, S, D, E, Dev, T>,
    ) -> [Heads<B, H, S, HD, E, Dev, T>; P] {
        let (b, s, _) = *x.shape();
        let maps = projections.map(|p| {
            let w = p.weight.retaped::<T>().reshape_like(&(Const::<D>, H * HD)); // (D, H*HD)
            (w, Some(p.bias.retaped::<T>().reshape_like(&(H * HD,))))
        });
        project_shared::<Bias, P, _, _, _, _, _, _, _>(x, maps).map(|y| {
            y.reshape_like(&(b, s, Const::<H>, Const::<HD>)) // (B, S, H, HD)
                .permute::<_, Axes4<0, 2, 1, 3>>() // (B, H, S, HD)
        })
    }
}

/// Concatenates `H` heads of width `HD` and projects them to width `D`:
/// `(B, H, S, HD) -> (B, S, D)`. The weight `(H, HD, D)` is PyTorch's `out_proj.weight [D, H*HD]`
/// transposed.
#[derive(Debug, Clone)]
pub struct HeadMerge<const H: usize, const HD: usize, const D: usize, E: Dtype, Dev: Storage<E>, Bias = WithBias> {
    /// `(H, HD, D)`.
    pub weight: Tensor<Rank3<H, HD, D>, E, Dev>,
    /// `(D,)`; fixed zeros under [`NoBias`](super::NoBias).
    pub bias: Tensor<Rank1<D>, E, Dev>,
    bias_kind: std::marker::PhantomData<Bias>,
}

impl<const H: usize, const HD: usize, const D: usize, E: FloatDtype, Dev: Device<E>, Bias: BiasKind>
    TensorCollection<E, Dev> for HeadMerge<H, HD, D, E, Dev, Bias>
{
    type To<E2: Dtype, D2: Device<E2>> = HeadMerge<H, HD, D, E2, D2, Bias>;

    fn iter_tensors<V: ModuleVisitor<Self, E, Dev>>(visitor: &mut V) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::tensor("weight", |s| &s.weight, |s| &mut s.weight, uniform_fan_in::<_, _, _, D>()),
                Self::tensor(
                    "bias",
                    |s| &s.bias,
                    |s| &mut s.bias,
                    bias_options::<Bias, _, _, _>(TensorOptions::reset_to_zeros()),
                ),
            ),
            |(weight, bias)| HeadMerge { weight, bias, bias_kind: Default::default() },
        )
    }
}

impl<const H: usize, const HD: usize, const D: usize, E: FloatDtype, Dev: Device<E>, Bias: BiasKind>
    HeadMerge<H, HD, D, E, Dev, Bias>
{
    /// `(B, H, S, HD) -> (B, S, D)`.
    pub fn forward<B: Dim, S: Dim, T: Tape<E, Dev>>(
        &self,
        x: Heads<B, H, S, HD, E, Dev, T>,
    ) -> Hidden<B, S, D, E, Dev, T> {
        let (b, _, s, _) = *x.shape();
        // No copy when the heads are stored (B, S, H, HD), as `scaled_dot_product_attention`
        // returns them from the CPU kernels (f32, f64); a copy otherwise.
        let x = x.permute::<_, Axes4<0, 2, 1, 3>>().reshape_like(&(b, s, H * HD)); // (B, S, H*HD)
        let w = self.weight.retaped::<T>().reshape_like(&(H * HD, Const::<D>)); // (H*HD, D)
        project::<Bias, _, _, _, _, _, _, _>(x, w, Some(self.bias.retaped::<T>()))
        // (B, S, D)
    }
}

/// Multi-head attention (section 3.2.2): `Concat(head_1..head_H) W_O` with
/// `head_i = Attention(Q W_Q_i, K W_K_i, V W_V_i)`.
///
/// **PyTorch equivalent**: `torch.nn.MultiheadAttention(D, H, dropout=0.1, batch_first=True)`
/// with `HD = D / H`.
///
/// # Generics
/// - `D`: model width (queries, keys and values all have it).
/// - `H`: number of heads.
/// - `HD`: width of each head.
///
/// ```
/// use typeformer::prelude::*;
/// let dev = Cpu::default();
/// let mha = dev.build_module::<MultiHeadAttention<16, 4, 4, f32, Cpu>, f32>();
/// let x: Tensor<(usize, usize, Const<16>), f32, _> = dev.sample_normal_like(&(2, 5, Const));
/// let y = mha.self_attention(x, &MaskSpec::causal(None)).unwrap();
/// assert_eq!(y.shape(), &(2, 5, Const::<16>));
/// ```
#[derive(Debug, Clone)]
pub struct MultiHeadAttention<
    const D: usize,
    const H: usize,
    const HD: usize,
    E: Dtype,
    Dev: Storage<E>,
    Bias = WithBias,
> {
    /// Query projection.
    pub w_q: HeadProjection<D, H, HD, E, Dev, Bias>,
    /// Key projection.
    pub w_k: HeadProjection<D, H, HD, E, Dev, Bias>,
    /// Value projection.
    pub w_v: HeadProjection<D, H, HD, E, Dev, Bias>,
    /// Output projection.
    pub w_o: HeadMerge<H, HD, D, E, Dev, Bias>,
    /// Dropout on the attention weights when training (0.1 by default, as in PyTorch).
    pub dropout: f64,
}

impl<const D: usize, const H: usize, const HD: usize, E: FloatDtype, Dev: Device<E>, Bias: BiasKind>
    TensorCollection<E, Dev> for MultiHeadAttention<D, H, HD, E, Dev, Bias>
{
    type To<E2: Dtype, D2: Device<E2>> = MultiHeadAttention<D, H, HD, E2, D2, Bias>;

    fn iter_tensors<V: ModuleVisitor<Self, E, Dev>>(visitor: &mut V) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::module("w_q", |s| &s.w_q, |s| &mut s.w_q),
                Self::module("w_k", |s| &s.w_k, |s| &mut s.w_k),
                Self::module("w_v", |s| &s.w_v, |s| &mut s.w_v),
                Self::module("w_o", |s| &s.w_o, |s| &mut s.w_o),
                Self::scalar("dropout", |s| &s.dropout, |s| &mut s.dropout, ScalarOptions::from_default(0.1)),
            ),
            |(w_q, w_k, w_v, w_o, dropout)| MultiHeadAttention { w_q, w_k, w_v, w_o, dropout },
        )
    }
}

impl<const D: usize, const H: usize, const HD: usize, E: FloatDtype, Dev: Device<E>, Bias: BiasKind>
    MultiHeadAttention<D, H, HD, E, Dev, Bias>
{
    /// Self-attention: queries, keys and values all come from `x: (B, S, D)`.
    pub fn self_attention<B: Dim, S: Dim, T: Tape<E, Dev>>(
        &self,
        x: Hidden<B, S, D, E, Dev, T>,
        mask: &MaskSpec,
    ) -> Result<Hidden<B, S, D, E, Dev, T>> {
        // One pass over the three projections' products (each (B, H, S, HD)).
        let [q, k, v] = HeadProjection::forward_shared([&self.w_q, &self.w_k, &self.w_v], x);
        self.attend_heads(q, k, v, mask)
    }

    /// Cross-attention: queries from `x: (B, Sq, D)`, keys and values from `memory: (B, Sk, D)`
    /// (the encoder's output). Gradients flow into `memory` too.
    pub fn cross_attention<B: Dim, Sq: Dim, Sk: Dim, T: Tape<E, Dev>>(
        &self,
        x: Hidden<B, Sq, D, E, Dev, T>,
        memory: &Hidden<B, Sk, D, E, Dev>,
        mask: &MaskSpec,
    ) -> Result<Hidden<B, Sq, D, E, Dev, T>> {
        let b = x.shape().0;
        if memory.shape().0.size() != b.size() {
            return Err(Error::DimMismatch {
                what: "batch size of keys/values vs queries",
                expected: b.size(),
                found: memory.shape().0.size(),
            });
        }
        // Queries (B, H, Sq, HD); keys and values, (B, H, Sk, HD) each, record their ops on a fresh
        // tape that merges into the query's one.
        let q = self.w_q.forward(x);
        let [k, v] = HeadProjection::forward_shared([&self.w_k, &self.w_v], memory.retaped::<T>());
        self.attend_heads(q, k, v, mask)
    }
}

build_on_device!([const D: usize, const H: usize, const HD: usize, Bias: BiasKind] HeadProjection<D, H, HD, E, Dev, Bias>);
build_on_device!([const H: usize, const HD: usize, const D: usize, Bias: BiasKind] HeadMerge<H, HD, D, E, Dev, Bias>);
build_on_device!([const D: usize, const H: usize, const HD: usize, Bias: BiasKind] MultiHeadAttention<D, H, HD, E, Dev, Bias>);

/// Keys and values an attention layer of width `D` has already computed, `(B, H, S, HD)` each:
/// the positions generated so far (self-attention), or the encoder memory (cross-attention).
///
/// Incremental decoding appends one position per step instead of recomputing the whole prefix.
/// The cache carries the width of the layer that made it, so handing it to a layer of another
/// width is a type error.
#[derive(Debug, Clone)]
pub struct KvCache<const D: usize, const H: usize, const HD: usize, E: Dtype, Dev: Storage<E>> {
    /// `(B, H, S, HD)`.
    pub keys: Heads<usize, H, usize, HD, E, Dev>,
    /// `(B, H, S, HD)`.
    pub values: Heads<usize, H, usize, HD, E, Dev>,
    width: std::marker::PhantomData<Const<D>>,
}

impl<const D: usize, const H: usize, const HD: usize, E: Dtype, Dev: Storage<E>> KvCache<D, H, HD, E, Dev> {
    /// A cache of the keys and values `(B, H, S, HD)` of a layer of width `D`.
    pub fn new(keys: Heads<usize, H, usize, HD, E, Dev>, values: Heads<usize, H, usize, HD, E, Dev>) -> Self {
        Self { keys, values, width: std::marker::PhantomData }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.keys.shape().2
    }
    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of positions `cache` holds, after checking that it was made for a batch of
    /// `batch` sequences.
    pub(crate) fn positions(cache: &Option<Self>, batch: usize) -> Result<usize> {
        match cache {
            None => Ok(0),
            Some(c) if c.keys.shape().0 != batch => Err(Error::DimMismatch {
                what: "batch size of the new positions vs the cache",
                expected: c.keys.shape().0,
                found: batch,
            }),
            Some(c) => Ok(c.len()),
        }
    }

    /// Appends the keys and values of new positions `(B, H, Snew, HD)` to `cache` and returns
    /// the cache (`(B, H, Spast + Snew, HD)` each; tensors share their buffers).
    pub(crate) fn append(
        cache: &mut Option<Self>,
        keys: Heads<usize, H, usize, HD, E, Dev>,
        values: Heads<usize, H, usize, HD, E, Dev>,
    ) -> Self
    where
        E: FloatDtype,
        Dev: Device<E>,
    {
        let (keys, values) = match cache.take() {
            Some(c) => ((c.keys, keys).concat_along(Axis::<2>), (c.values, values).concat_along(Axis::<2>)),
            None => (keys, values),
        };
        let all = Self::new(keys, values);
        *cache = Some(all.clone());
        all
    }
}

impl<const D: usize, const H: usize, const HD: usize, E: FloatDtype, Dev: Device<E>, Bias: BiasKind>
    MultiHeadAttention<D, H, HD, E, Dev, Bias>
{
    /// Projects `memory: (B, Sk, D)` to the keys and values that cross-attention reads at every
    /// decoding step.
    pub fn project_memory(&self, memory: &Hidden<usize, usize, D, E, Dev>) -> KvCache<D, H, HD, E, Dev> {
        let [keys, values] = HeadProjection::forward_shared([&self.w_k, &self.w_v], memory.clone());
        KvCache::new(keys, values)
    }

    /// Causal self-attention of new positions `x: (B, Snew, D)` over the cached ones and
    /// themselves, appending their keys and values to `cache`. Equals [`Self::self_attention`]
    /// with a causal mask over the whole sequence, at the new positions. `key_starts` gives each
    /// row's left padding, the positions its queries never see (see [`MaskSpec::key_starts`]).
    pub fn self_attention_cached(
        &self,
        x: Hidden<usize, usize, D, E, Dev>,
        cache: &mut Option<KvCache<D, H, HD, E, Dev>>,
        key_starts: Option<&[usize]>,
    ) -> Result<Hidden<usize, usize, D, E, Dev>> {
        let past = KvCache::positions(cache, x.shape().0)?;
        // (B, H, Snew, HD) each.
        let [q, k_new, v_new] = HeadProjection::forward_shared([&self.w_q, &self.w_k, &self.w_v], x);
        let all = KvCache::append(cache, k_new, v_new);
        let mask = MaskSpec { causal: true, query_offset: past, key_lengths: None, key_starts };
        self.attend_heads(q, all.keys, all.values, &mask)
    }

    /// Cross-attention of `x: (B, Sq, D)` over keys and values from [`Self::project_memory`].
    pub fn cross_attention_cached(
        &self,
        x: Hidden<usize, usize, D, E, Dev>,
        memory: &KvCache<D, H, HD, E, Dev>,
        mask: &MaskSpec,
    ) -> Result<Hidden<usize, usize, D, E, Dev>> {
        let b = x.shape().0;
        if memory.keys.shape().0 != b {
            return Err(Error::DimMismatch {
                what: "batch size of queries vs cached memory",
                expected: memory.keys.shape().0,
                found: b,
            });
        }
        let q = self.w_q.forward(x);
        self.attend_heads(q, memory.keys.clone(), memory.values.clone(), mask)
    }

    /// Masked attention of projected queries over projected keys and values, then the output
    /// projection: `(B, H, Sq, HD), (B, H, Sk, HD) -> (B, Sq, D)`.
    fn attend_heads<B: Dim, Sq: Dim, Sk: Dim, T: Tape<E, Dev>>(
        &self,
        q: Heads<B, H, Sq, HD, E, Dev, T>,
        keys: Heads<B, H, Sk, HD, E, Dev, T>,
        values: Heads<B, H, Sk, HD, E, Dev, T>,
        mask: &MaskSpec,
    ) -> Result<Hidden<B, Sq, D, E, Dev, T>> {
        let bias = mask_bias(&q, &keys, mask)?;
        let heads = scaled_dot_product_attention(q, keys, values, bias.as_ref(), self.dropout); // (B, H, Sq, HD)
        Ok(self.w_o.forward(heads)) // (B, Sq, D)
    }

    /// What the heads look at: the weights `softmax(q kᵀ / sqrt(HD) + mask)` of queries from
    /// `x: (B, Sq, D)` over keys from `keys_from: (B, Sk, D)` (`x` itself for self-attention, the
    /// encoder memory for cross-attention), without dropout: `(B, H, Sq, Sk)`, each row a
    /// distribution over the keys.
    pub fn weights<B: Dim, Sq: Dim, Sk: Dim>(
        &self,
        x: &Hidden<B, Sq, D, E, Dev>,
        keys_from: &Hidden<B, Sk, D, E, Dev>,
        mask: &MaskSpec,
    ) -> Result<AttentionMap<B, H, Sq, Sk, E, Dev>> {
        if keys_from.shape().0.size() != x.shape().0.size() {
            return Err(Error::DimMismatch {
                what: "batch size of keys vs queries",
                expected: x.shape().0.size(),
                found: keys_from.shape().0.size(),
            });
        }
        let q = self.w_q.forward(x.clone()); // (B, H, Sq, HD)
        let k = self.w_k.forward(keys_from.clone()); // (B, H, Sk, HD)
        let bias = mask_bias(&q, &k, mask)?;
        Ok(attention_weights(q, k, bias.as_ref()))
    }
}

/// A mask bias, or none when nothing is masked.
type OptionalBias<B, Sq, Sk, E, Dev> = Option<MaskBias<B, Sq, Sk, E, Dev>>;

/// The additive mask `(B, Sq, Sk)` for queries `q` over keys `k`, after checking that the mask
/// has one key length per batch item.
pub(super) fn mask_bias<B: Dim, const H: usize, Sq: Dim, Sk: Dim, const HD: usize, E, Dev, T>(
    q: &Heads<B, H, Sq, HD, E, Dev, T>,
    k: &Heads<B, H, Sk, HD, E, Dev, T>,
    mask: &MaskSpec,
) -> Result<OptionalBias<B, Sq, Sk, E, Dev>>
where
    E: FloatDtype,
    Dev: Device<E>,
    T: Tape<E, Dev>,
{
    let (b, _, sq, _) = *q.shape();
    let sk = k.shape().2;
    mask.check_batch(b.size())?;
    Ok(mask.bias::<B, Sq, Sk, E, Dev>(q.device(), (b, sq, sk)))
}

/// Attention weights copied off the device for inspection: `(B, H, Sq, Sk)` in row-major
/// order, each row a distribution over the keys (see [`MultiHeadAttention::weights`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionWeights {
    /// `[B, H, Sq, Sk]`.
    pub shape: [usize; 4],
    /// The weights, row-major.
    pub values: Vec<f32>,
}

impl AttentionWeights {
    /// Copies `weights: (B, H, Sq, Sk)` off its device.
    pub fn of<B: Dim, const H: usize, Sq: Dim, Sk: Dim, E: FloatDtype, Dev: Device<E>>(
        weights: &AttentionMap<B, H, Sq, Sk, E, Dev>,
    ) -> Self {
        let (b, _, sq, sk) = *weights.shape();
        let values = weights.as_vec().into_iter().map(|w| w.to_f32().unwrap_or(f32::NAN)).collect();
        Self { shape: [b.size(), H, sq.size(), sk.size()], values }
    }

    /// Number of heads.
    pub fn heads(&self) -> usize {
        self.shape[1]
    }

    /// The `Sq x Sk` map of head `head` for batch item `item`, one row per query; `None` when
    /// either is out of range.
    pub fn map(&self, item: usize, head: usize) -> Option<Vec<&[f32]>> {
        let [b, h, sq, sk] = self.shape;
        if item >= b || head >= h {
            return None;
        }
        let start = (item * h + head) * sq * sk;
        Some(self.values[start..start + sq * sk].chunks(sk.max(1)).take(sq).collect())
    }
}

/// The attention weights of one layer: its self-attention, and its cross-attention over the
/// encoder memory for a decoder layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerAttention {
    /// Self-attention, `(B, H, S, S)`.
    pub self_attn: AttentionWeights,
    /// Cross-attention, `(B, H, St, Ss)` (decoder layers only).
    pub cross_attn: Option<AttentionWeights>,
}
