//! What a decoder-only model is made of, as traits: a position scheme, a causal block and a
//! final norm. A model type names its parts ([`CausalLm`](crate::models::CausalLm)); a new
//! block kind is a new type implementing [`CausalBlock`], not a parameter of every model.

use super::{
    Activation, EncoderLayer, FinalNorm, KvCache, MaskSpec, NormPlacement, PositionKind, PositionalEncoding, RmsNorm,
};
use crate::error::Result;
use crate::shape::Hidden;
use crate::FloatDtype;
use dfdx::prelude::*;

/// How a decoder-only model of width `D` knows where its tokens are: added to the embeddings
/// (learned, sinusoidal) or applied inside attention (rotary; then [`Self::embed`] is the
/// identity and the blocks read the scheme's tables).
pub trait PositionScheme<const D: usize, E: Dtype, Dev: Device<E>>:
    TensorCollection<E, Dev, To<E, Dev> = Self> + Clone + std::fmt::Debug
{
    /// Longest sequence (the model's context).
    const CONTEXT: usize;
    /// Trainable parameters.
    const NUM_PARAMS: usize;
    /// What it is, for summaries.
    fn describe() -> String;
    /// The embeddings `x: (B, S, D)` of positions `offset .. offset + S`, with their positions
    /// added where the scheme adds them. An error when they pass [`Self::CONTEXT`].
    fn embed<B: Dim, S: Dim, T: Tape<E, Dev>>(
        &self,
        x: Hidden<B, S, D, E, Dev, T>,
        offset: usize,
    ) -> Result<Hidden<B, S, D, E, Dev, T>>;
}

/// Position schemes that add a vector to each embedding (the paper's sinusoids, GPT's learned
/// table): the blocks themselves never see positions.
pub trait AbsolutePositions {}

impl<const P: usize, const D: usize, K: PositionKind, E: FloatDtype, Dev: Device<E>> PositionScheme<D, E, Dev>
    for PositionalEncoding<P, D, K, E, Dev>
{
    const CONTEXT: usize = P;
    const NUM_PARAMS: usize = if K::LEARNED { P * D } else { 0 };
    fn describe() -> String {
        format!("{} positions({P})", K::NAME)
    }
    fn embed<B: Dim, S: Dim, T: Tape<E, Dev>>(
        &self,
        x: Hidden<B, S, D, E, Dev, T>,
        offset: usize,
    ) -> Result<Hidden<B, S, D, E, Dev, T>> {
        self.forward(x, offset)
    }
}
impl<const P: usize, const D: usize, K, E: Dtype, Dev: Storage<E>> AbsolutePositions
    for PositionalEncoding<P, D, K, E, Dev>
{
}

/// One causal block of width `D` under the position scheme `Pos`: what a decoder-only model
/// stacks. Implemented by GPT's block ([`EncoderLayer`] under a causal mask, for absolute
/// positions) and Llama's ([`LlamaBlock`](super::LlamaBlock), for rotary positions of its own
/// head width).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a causal block of width {D} under the positions `{Pos}`",
    label = "this block does not fit these positions",
    note = "GPT blocks (`EncoderLayer`) take absolute positions (`PositionalEncoding`); Llama blocks take \
            `RotaryPositions` of their own head width, and both the model's width"
)]
pub trait CausalBlock<const D: usize, Pos, E: Dtype, Dev: Device<E>>:
    TensorCollection<E, Dev, To<E, Dev> = Self> + Clone + std::fmt::Debug
{
    /// What the block keeps between generation steps (its keys and values). It carries the
    /// block's width and heads, so a cache of another block is another type.
    type Cache: Clone + std::fmt::Debug;
    /// Trainable parameters.
    const NUM_PARAMS: usize;
    /// Query heads (for memory estimates).
    const HEADS: usize;
    /// Hidden width of the feed-forward network (for memory estimates).
    const FF: usize;
    /// What it is, for summaries.
    fn describe() -> String;
    /// `(B, S, D) -> (B, S, D)` at positions `0 .. S`; `mask` is causal, with padding lengths.
    fn forward<B: Dim, S: Dim, T: Tape<E, Dev>>(
        &self,
        x: Hidden<B, S, D, E, Dev, T>,
        positions: &Pos,
        mask: &MaskSpec,
    ) -> Result<Hidden<B, S, D, E, Dev, T>>;
    /// Whether rows of a batch may start at different positions, left-padded (see
    /// [`MaskSpec::key_starts`]): true where attention depends on relative positions only
    /// (rotary), so that a row shifted right by its padding computes what it computes alone.
    /// Absolute position embeddings would see shifted positions.
    const LEFT_PADDING: bool;
    /// New positions `x: (B, Snew, D)` after the ones in `cache`, attending to those and to
    /// themselves, and appending their keys and values to `cache`. `key_starts` gives each
    /// row's left padding (only where [`Self::LEFT_PADDING`]).
    fn forward_cached(
        &self,
        x: Hidden<usize, usize, D, E, Dev>,
        positions: &Pos,
        cache: &mut Option<Self::Cache>,
        key_starts: Option<&[usize]>,
    ) -> Result<Hidden<usize, usize, D, E, Dev>>;
}

impl<const D: usize, const H: usize, const HD: usize, const F: usize, N, A, Pos, E, Dev> CausalBlock<D, Pos, E, Dev>
    for EncoderLayer<D, H, HD, F, N, A, E, Dev>
where
    N: NormPlacement,
    A: Activation,
    Pos: AbsolutePositions,
    E: FloatDtype,
    Dev: Device<E>,
{
    type Cache = KvCache<D, H, HD, E, Dev>;
    const NUM_PARAMS: usize = super::layer_params(D, H, HD, F, 1, 2, <N::Bias as super::BiasKind>::ON);
    const HEADS: usize = H;
    const FF: usize = F;
    fn describe() -> String {
        format!("CausalBlock(heads {H} x {HD}, ffn {F}, {}, {})", A::NAME, N::NAME)
    }
    fn forward<B: Dim, S: Dim, T: Tape<E, Dev>>(
        &self,
        x: Hidden<B, S, D, E, Dev, T>,
        _: &Pos,
        mask: &MaskSpec,
    ) -> Result<Hidden<B, S, D, E, Dev, T>> {
        EncoderLayer::forward(self, x, mask)
    }
    const LEFT_PADDING: bool = false;
    fn forward_cached(
        &self,
        x: Hidden<usize, usize, D, E, Dev>,
        _: &Pos,
        cache: &mut Option<Self::Cache>,
        key_starts: Option<&[usize]>,
    ) -> Result<Hidden<usize, usize, D, E, Dev>> {
        EncoderLayer::forward_cached(self, x, cache, key_starts)
    }
}

/// The norm after a decoder-only stack: GPT's layer norm (or none, for post-norm stacks),
/// Llama's RMSNorm.
pub trait OutputNorm<const D: usize, E: Dtype, Dev: Device<E>>:
    TensorCollection<E, Dev, To<E, Dev> = Self> + Clone + std::fmt::Debug
{
    /// Trainable parameters.
    const NUM_PARAMS: usize;
    /// What it is, for summaries; `None` when there is no norm.
    fn describe() -> Option<&'static str>;
    /// Normalizes `x: (B, S, D)`.
    fn normalize<B: Dim, S: Dim, T: Tape<E, Dev>>(&self, x: Hidden<B, S, D, E, Dev, T>) -> Hidden<B, S, D, E, Dev, T>;
}

impl<const D: usize, N: NormPlacement, E: FloatDtype, Dev: Device<E>> OutputNorm<D, E, Dev>
    for FinalNorm<D, N, E, Dev>
{
    const NUM_PARAMS: usize = if N::FINAL_NORM { super::norm_params(D, <N::Bias as super::BiasKind>::ON) } else { 0 };
    fn describe() -> Option<&'static str> {
        N::FINAL_NORM.then_some("LayerNorm")
    }
    fn normalize<B: Dim, S: Dim, T: Tape<E, Dev>>(&self, x: Hidden<B, S, D, E, Dev, T>) -> Hidden<B, S, D, E, Dev, T> {
        self.forward(x)
    }
}

impl<const D: usize, E: FloatDtype, Dev: Device<E>> OutputNorm<D, E, Dev> for RmsNorm<D, E, Dev> {
    const NUM_PARAMS: usize = D;
    fn describe() -> Option<&'static str> {
        Some("RMSNorm")
    }
    fn normalize<B: Dim, S: Dim, T: Tape<E, Dev>>(&self, x: Hidden<B, S, D, E, Dev, T>) -> Hidden<B, S, D, E, Dev, T> {
        self.forward(x)
    }
}
