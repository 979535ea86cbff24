//! The encoder (section 3.1): a stack of `L` identical layers of self-attention and feed-forward.

use super::{Activation, MaskSpec, MultiHeadAttention, NormPlacement, PositionWiseFeedForward, Residual};
use super::{AttentionWeights, KvCache, LayerAttention, Stack};
use crate::error::Result;
use crate::shape::Hidden;
use crate::FloatDtype;
use dfdx::prelude::*;

/// One encoder layer: self-attention, then the feed-forward network, each in a residual
/// connection with layer norm placed as `N` says.
///
/// **PyTorch equivalent**: `torch.nn.TransformerEncoderLayer(D, H, F, batch_first=True,
/// norm_first=N::PRE, activation=A)`.
///
/// # Generics
/// - `D`: model width; `H` heads of width `HD`; `F`: feed-forward width.
/// - `N`: [`PostNorm`](super::PostNorm) or [`PreNorm`](super::PreNorm).
/// - `A`: the feed-forward [`Activation`].
#[derive(Debug, Clone, crate::Model)]
#[model(bound = "A: Activation")]
pub struct EncoderLayer<
    const D: usize,
    const H: usize,
    const HD: usize,
    const F: usize,
    N: NormPlacement,
    A,
    E: Dtype,
    Dev: Storage<E>,
> {
    /// Multi-head self-attention.
    pub self_attn: MultiHeadAttention<D, H, HD, E, Dev, N::Bias>,
    /// Position-wise feed-forward network.
    pub ffn: PositionWiseFeedForward<D, F, A, E, Dev, N::Bias>,
    /// The residual connection (norm and dropout) of the attention sub-layer.
    pub norm1: Residual<D, N, E, Dev>,
    /// The residual connection of the feed-forward sub-layer.
    pub norm2: Residual<D, N, E, Dev>,
}

impl<
        const D: usize,
        const H: usize,
        const HD: usize,
        const F: usize,
        N: NormPlacement,
        A: Activation,
        E: FloatDtype,
        Dev: Device<E>,
    > EncoderLayer<D, H, HD, F, N, A, E, Dev>
{
    /// `(B, S, D) -> (B, S, D)`; `mask` says which keys each position may attend to.
    pub fn forward<B: Dim, S: Dim, T: Tape<E, Dev>>(
        &self,
        x: Hidden<B, S, D, E, Dev, T>,
        mask: &MaskSpec,
    ) -> Result<Hidden<B, S, D, E, Dev, T>> {
        self.forward_recording(x, mask, None)
    }

    /// [`Self::forward`], also appending the layer's attention weights to `record` when given.
    pub fn forward_recording<B: Dim, S: Dim, T: Tape<E, Dev>>(
        &self,
        x: Hidden<B, S, D, E, Dev, T>,
        mask: &MaskSpec,
        record: Option<&mut Vec<LayerAttention>>,
    ) -> Result<Hidden<B, S, D, E, Dev, T>> {
        let mut weights = None;
        let x = self.norm1.around(x, |x| {
            if record.is_some() {
                let input = x.retaped::<NoneTape>();
                weights = Some(AttentionWeights::of(&self.self_attn.weights(&input, &input, mask)?));
            }
            self.self_attn.self_attention(x, mask)
        })?;
        if let (Some(record), Some(self_attn)) = (record, weights) {
            record.push(LayerAttention { self_attn, cross_attn: None });
        }
        self.norm2.around(x, |x| Ok(self.ffn.forward(x)))
    }
}

impl<
        const D: usize,
        const H: usize,
        const HD: usize,
        const F: usize,
        N: NormPlacement,
        A: Activation,
        E: FloatDtype,
        Dev: Device<E>,
    > EncoderLayer<D, H, HD, F, N, A, E, Dev>
{
    /// The layer as a causal (GPT-style) block over new positions `x: (B, Snew, D)`, attending
    /// to the positions in `cache` and to themselves, and appending their keys and values;
    /// `key_starts` gives each row's left padding (see [`MaskSpec::key_starts`]).
    pub fn forward_cached(
        &self,
        x: Hidden<usize, usize, D, E, Dev>,
        cache: &mut Option<KvCache<D, H, HD, E, Dev>>,
        key_starts: Option<&[usize]>,
    ) -> Result<Hidden<usize, usize, D, E, Dev>> {
        let x = self.norm1.around(x, |x| self.self_attn.self_attention_cached(x, cache, key_starts))?;
        self.norm2.around(x, |x| Ok(self.ffn.forward(x)))
    }
}

/// `L` encoder layers, then a final norm if `N` has one.
///
/// **PyTorch equivalent**: `torch.nn.TransformerEncoder(layer, L, norm=...)`.
pub type Encoder<const D: usize, const H: usize, const HD: usize, const F: usize, const L: usize, N, A, E, Dev> =
    Stack<EncoderLayer<D, H, HD, F, N, A, E, Dev>, L, D, N, E, Dev>;

impl<
        const D: usize,
        const H: usize,
        const HD: usize,
        const F: usize,
        const L: usize,
        N: NormPlacement,
        A: Activation,
        E: FloatDtype,
        Dev: Device<E>,
    > Encoder<D, H, HD, F, L, N, A, E, Dev>
{
    /// `(B, S, D) -> (B, S, D)`.
    pub fn forward<B: Dim, S: Dim, T: Tape<E, Dev>>(
        &self,
        x: Hidden<B, S, D, E, Dev, T>,
        mask: &MaskSpec,
    ) -> Result<Hidden<B, S, D, E, Dev, T>> {
        self.forward_recording(x, mask, None)
    }

    /// [`Self::forward`], also appending each layer's attention weights to `record` when given.
    pub fn forward_recording<B: Dim, S: Dim, T: Tape<E, Dev>>(
        &self,
        mut x: Hidden<B, S, D, E, Dev, T>,
        mask: &MaskSpec,
        mut record: Option<&mut Vec<LayerAttention>>,
    ) -> Result<Hidden<B, S, D, E, Dev, T>> {
        for layer in &self.layers.modules {
            x = layer.forward_recording(x, mask, record.as_deref_mut())?;
        }
        Ok(self.norm.forward(x))
    }
}
