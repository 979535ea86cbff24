//! The decoder (section 3.1): masked self-attention, cross-attention over the encoder's output,
//! and the feed-forward network, `L` times.

use super::{Activation, MaskSpec, MultiHeadAttention, NormPlacement, PositionWiseFeedForward, Residual};
use super::{AttentionWeights, KvCache, LayerAttention, Stack};
use crate::error::Result;
use crate::shape::Hidden;
use crate::FloatDtype;
use dfdx::prelude::*;

/// One decoder layer.
///
/// **PyTorch equivalent**: `torch.nn.TransformerDecoderLayer(D, H, F, batch_first=True,
/// norm_first=N::PRE, activation=A)`.
///
/// # Generics
/// - `D`: model width, which is also the width of the encoder memory it attends to.
/// - `H` heads of width `HD`; `F`: feed-forward width; `N`: norm placement; `A`: activation.
#[derive(Debug, Clone, crate::Model)]
#[model(bound = "A: Activation")]
pub struct DecoderLayer<
    const D: usize,
    const H: usize,
    const HD: usize,
    const F: usize,
    N: NormPlacement,
    A,
    E: Dtype,
    Dev: Storage<E>,
> {
    /// Masked (causal) self-attention.
    pub self_attn: MultiHeadAttention<D, H, HD, E, Dev, N::Bias>,
    /// Attention over the encoder's output.
    pub cross_attn: MultiHeadAttention<D, H, HD, E, Dev, N::Bias>,
    /// Position-wise feed-forward network.
    pub ffn: PositionWiseFeedForward<D, F, A, E, Dev, N::Bias>,
    /// Norm of the self-attention sub-layer.
    pub norm1: Residual<D, N, E, Dev>,
    /// Norm of the cross-attention sub-layer.
    pub norm2: Residual<D, N, E, Dev>,
    /// Norm of the feed-forward sub-layer.
    pub norm3: Residual<D, N, E, Dev>,
}

/// The masks of one decoder pass.
#[derive(Debug, Clone, Copy)]
pub struct DecoderMasks<'a> {
    /// Over the target itself: causal, plus target padding.
    pub self_mask: MaskSpec<'a>,
    /// Over the encoder memory: source padding.
    pub memory_mask: MaskSpec<'a>,
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
    > DecoderLayer<D, H, HD, F, N, A, E, Dev>
{
    /// `x: (B, St, D)` attending to itself and to `memory: (B, Ss, D)`; returns `(B, St, D)`.
    pub fn forward<B: Dim, St: Dim, Ss: Dim, T: Tape<E, Dev>>(
        &self,
        x: Hidden<B, St, D, E, Dev, T>,
        memory: &Hidden<B, Ss, D, E, Dev>,
        masks: &DecoderMasks,
    ) -> Result<Hidden<B, St, D, E, Dev, T>> {
        self.forward_recording(x, memory, masks, None)
    }

    /// [`Self::forward`], also appending the layer's self- and cross-attention weights to
    /// `record` when given.
    pub fn forward_recording<B: Dim, St: Dim, Ss: Dim, T: Tape<E, Dev>>(
        &self,
        x: Hidden<B, St, D, E, Dev, T>,
        memory: &Hidden<B, Ss, D, E, Dev>,
        masks: &DecoderMasks,
        record: Option<&mut Vec<LayerAttention>>,
    ) -> Result<Hidden<B, St, D, E, Dev, T>> {
        let recording = record.is_some();
        let (mut self_weights, mut cross_weights) = (None, None);
        let x = self.norm1.around(x, |x| {
            if recording {
                let input = x.retaped::<NoneTape>();
                self_weights = Some(AttentionWeights::of(&self.self_attn.weights(&input, &input, &masks.self_mask)?));
            }
            self.self_attn.self_attention(x, &masks.self_mask)
        })?;
        let x = self.norm2.around(x, |x| {
            if recording {
                let weights = self.cross_attn.weights(&x.retaped::<NoneTape>(), memory, &masks.memory_mask)?;
                cross_weights = Some(AttentionWeights::of(&weights));
            }
            self.cross_attn.cross_attention(x, memory, &masks.memory_mask)
        })?;
        if let (Some(record), Some(self_attn)) = (record, self_weights) {
            record.push(LayerAttention { self_attn, cross_attn: cross_weights });
        }
        self.norm3.around(x, |x| Ok(self.ffn.forward(x)))
    }
}

/// What one decoder layer of width `D` keeps between incremental decoding steps.
#[derive(Debug, Clone)]
pub struct DecoderLayerCache<const D: usize, const H: usize, const HD: usize, E: Dtype, Dev: Storage<E>> {
    /// Keys and values of the target positions decoded so far.
    pub self_kv: Option<KvCache<D, H, HD, E, Dev>>,
    /// Keys and values of the encoder memory, computed once.
    pub memory_kv: KvCache<D, H, HD, E, Dev>,
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
    > DecoderLayer<D, H, HD, F, N, A, E, Dev>
{
    /// A cache holding the projected `memory: (B, Ss, D)` and no target position yet.
    pub fn start_cache(&self, memory: &Hidden<usize, usize, D, E, Dev>) -> DecoderLayerCache<D, H, HD, E, Dev> {
        DecoderLayerCache { self_kv: None, memory_kv: self.cross_attn.project_memory(memory) }
    }

    /// New target positions `x: (B, Snew, D)` through the layer, reading and extending `cache`;
    /// `src_lengths` are the valid lengths of the source batch.
    pub fn forward_cached(
        &self,
        x: Hidden<usize, usize, D, E, Dev>,
        cache: &mut DecoderLayerCache<D, H, HD, E, Dev>,
        src_lengths: &[usize],
    ) -> Result<Hidden<usize, usize, D, E, Dev>> {
        let DecoderLayerCache { self_kv, memory_kv } = cache;
        let x = self.norm1.around(x, |x| self.self_attn.self_attention_cached(x, self_kv, None))?;
        let memory_mask = MaskSpec::padding(src_lengths);
        let x = self.norm2.around(x, |x| self.cross_attn.cross_attention_cached(x, memory_kv, &memory_mask))?;
        self.norm3.around(x, |x| Ok(self.ffn.forward(x)))
    }
}

/// `L` decoder layers, then a final norm if `N` has one.
///
/// **PyTorch equivalent**: `torch.nn.TransformerDecoder(layer, L, norm=...)`.
pub type Decoder<const D: usize, const H: usize, const HD: usize, const F: usize, const L: usize, N, A, E, Dev> =
    Stack<DecoderLayer<D, H, HD, F, N, A, E, Dev>, L, D, N, E, Dev>;

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
    > Decoder<D, H, HD, F, L, N, A, E, Dev>
{
    /// `x: (B, St, D)` over `memory: (B, Ss, D)`; returns `(B, St, D)`. The memory must have the
    /// decoder's width `D`: stacking a decoder on an encoder of another width does not compile.
    pub fn forward<B: Dim, St: Dim, Ss: Dim, T: Tape<E, Dev>>(
        &self,
        x: Hidden<B, St, D, E, Dev, T>,
        memory: &Hidden<B, Ss, D, E, Dev>,
        masks: &DecoderMasks,
    ) -> Result<Hidden<B, St, D, E, Dev, T>> {
        self.forward_recording(x, memory, masks, None)
    }

    /// [`Self::forward`], also appending each layer's attention weights to `record` when given.
    pub fn forward_recording<B: Dim, St: Dim, Ss: Dim, T: Tape<E, Dev>>(
        &self,
        mut x: Hidden<B, St, D, E, Dev, T>,
        memory: &Hidden<B, Ss, D, E, Dev>,
        masks: &DecoderMasks,
        mut record: Option<&mut Vec<LayerAttention>>,
    ) -> Result<Hidden<B, St, D, E, Dev, T>> {
        for layer in &self.layers.modules {
            x = layer.forward_recording(x, memory, masks, record.as_deref_mut())?;
        }
        Ok(self.norm.forward(x))
    }
}
