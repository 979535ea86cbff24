//! The block of Llama-style models: pre-norm residuals with RMSNorm, grouped-query attention
//! with rotary positions, and the SwiGLU feed-forward network.

use super::{skip_connection, CausalBlock, GroupedQueryAttention, KvCache, MaskSpec, RmsNorm, RotaryPositions, SwiGlu};
use crate::error::Result;
use crate::shape::Hidden;
use crate::FloatDtype;
use dfdx::prelude::*;

/// `x = x + attn(attn_norm(x))`, then `x = x + ffn(ffn_norm(x))`: one decoder layer of Llama,
/// of width `D`, with `H` query heads and `KVH` key/value heads of width `HD`, and a SwiGLU
/// feed-forward network of hidden width `F`. No biases, no dropout (Llama trains without).
///
/// **PyTorch equivalent**: Hugging Face's `LlamaDecoderLayer` (`input_layernorm`, `self_attn`,
/// `post_attention_layernorm`, `mlp`).
///
/// ```
/// use typeformer::prelude::*;
/// use typeformer::nn::{CausalBlock, LlamaBlock, MaskSpec, RotaryPositions};
/// type Block = LlamaBlock<16, 4, 2, 4, 32, f32, Cpu>;
/// let dev = Cpu::seed_from_u64(0);
/// let block = dev.build_module::<Block, f32>();
/// let positions = RotaryPositions::<64, 4, 10_000, f32, Cpu>::default();
/// let x: Tensor<(usize, usize, Const<16>), f32, Cpu> = dev.sample_normal_like(&(2, 5, Const));
/// let y = block.forward(x, &positions, &MaskSpec::causal(None)).unwrap();
/// assert_eq!(y.shape(), &(2, 5, Const::<16>));
/// assert_eq!(<Block as CausalBlock<16, RotaryPositions<64, 4, 10_000, f32, Cpu>, f32, Cpu>>::NUM_PARAMS, 2336);
/// ```
#[derive(Debug, Clone, crate::Model)]
pub struct LlamaBlock<
    const D: usize,
    const H: usize,
    const KVH: usize,
    const HD: usize,
    const F: usize,
    E: Dtype,
    Dev: Storage<E>,
> {
    /// The norm before attention (`input_layernorm`).
    pub attn_norm: RmsNorm<D, E, Dev>,
    /// Causal grouped-query self-attention.
    pub attn: GroupedQueryAttention<D, H, KVH, HD, E, Dev>,
    /// The norm before the feed-forward network (`post_attention_layernorm`).
    pub ffn_norm: RmsNorm<D, E, Dev>,
    /// `down(silu(gate(x)) * up(x))`.
    pub ffn: SwiGlu<D, F, E, Dev>,
}

impl<
        const D: usize,
        const H: usize,
        const KVH: usize,
        const HD: usize,
        const F: usize,
        const P: usize,
        const BASE: usize,
        E: FloatDtype,
        Dev: Device<E>,
    > CausalBlock<D, RotaryPositions<P, HD, BASE, E, Dev>, E, Dev> for LlamaBlock<D, H, KVH, HD, F, E, Dev>
{
    type Cache = KvCache<D, KVH, HD, E, Dev>;
    const NUM_PARAMS: usize = 2 * D + 2 * D * H * HD + 2 * D * KVH * HD + 3 * D * F;
    const HEADS: usize = H;
    const FF: usize = F;

    fn describe() -> String {
        format!("LlamaBlock(heads {H} x {HD}, kv heads {KVH}, swiglu {F}, rmsnorm)")
    }

    fn forward<B: Dim, S: Dim, T: Tape<E, Dev>>(
        &self,
        x: Hidden<B, S, D, E, Dev, T>,
        positions: &RotaryPositions<P, HD, BASE, E, Dev>,
        mask: &MaskSpec,
    ) -> Result<Hidden<B, S, D, E, Dev, T>> {
        let rope = positions.tables(x.device())?;
        let x = skip_connection(x, |x| self.attn.forward(self.attn_norm.forward(x), rope, mask.query_offset, mask))?;
        skip_connection(x, |x| Ok(self.ffn.forward(self.ffn_norm.forward(x))))
    }

    const LEFT_PADDING: bool = true;
    fn forward_cached(
        &self,
        x: Hidden<usize, usize, D, E, Dev>,
        positions: &RotaryPositions<P, HD, BASE, E, Dev>,
        cache: &mut Option<Self::Cache>,
        key_starts: Option<&[usize]>,
    ) -> Result<Hidden<usize, usize, D, E, Dev>> {
        let rope = positions.tables(x.device())?;
        let x = skip_connection(x, |x| self.attn.forward_cached(self.attn_norm.forward(x), rope, cache, key_starts))?;
        skip_connection(x, |x| Ok(self.ffn.forward(self.ffn_norm.forward(x))))
    }
}
