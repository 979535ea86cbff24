//! Which embedding tables an encoder-decoder model has, chosen by type (section 3.4).

use crate::nn::init::embedding_init;
use crate::nn::{OptionalLinear, Presence, TokenEmbedding};
use crate::FloatDtype;
use dfdx::prelude::*;
use std::marker::PhantomData;

/// Whether the target embedding is its own table and whether the output projection is.
pub trait LayoutFlags: 'static + Copy + Default + std::fmt::Debug + Send + Sync {
    /// Source and target share one table.
    const SHARED: bool;
    /// The output projection is the target embedding, transposed.
    const TIED: bool;
    /// An untied output projection has a bias (GPT-2's `lm_head` and Llama's have none).
    const HEAD_BIAS: bool = true;
    /// Short name, for summaries.
    const NAME: &'static str;
}

/// An embedding layout valid for a source vocabulary `SV`, target vocabulary `TV` and width `D`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an embedding layout for a source vocabulary of {SV} tokens and a target vocabulary of {TV}",
    label = "source and target embeddings can be shared only when SV == TV",
    note = "use `SeparateTied` or `Separate` for two vocabularies"
)]
pub trait EmbeddingLayout<const SV: usize, const TV: usize, const D: usize>: LayoutFlags {
    /// The table that embeds target tokens.
    fn target<'a, E: FloatDtype, Dev: Device<E>>(
        src: &'a TokenEmbedding<SV, D, E, Dev>,
        tgt: &'a TargetEmbedding<TV, D, Self, E, Dev>,
    ) -> &'a TokenEmbedding<TV, D, E, Dev>;
}

/// One table for source tokens, target tokens and the output projection: the paper's choice
/// ("we share the same weight matrix between the two embedding layers and the pre-softmax linear
/// transformation"). Needs `SV == TV`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SharedTied;
/// Separate source and target tables; the output projection is the target table.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeparateTied;
/// Separate source and target tables and a separate output projection (with bias).
#[derive(Debug, Default, Clone, Copy)]
pub struct Separate;

impl LayoutFlags for SharedTied {
    const SHARED: bool = true;
    const TIED: bool = true;
    const NAME: &'static str = "shared, tied";
}
impl LayoutFlags for SeparateTied {
    const SHARED: bool = false;
    const TIED: bool = true;
    const NAME: &'static str = "separate, tied";
}
impl LayoutFlags for Separate {
    const SHARED: bool = false;
    const TIED: bool = false;
    const NAME: &'static str = "separate, untied";
}

/// A decoder-only model whose output projection is its token embedding, transposed (GPT-2).
#[derive(Debug, Default, Clone, Copy)]
pub struct TiedOutput;
/// A decoder-only model with its own output projection (with bias).
#[derive(Debug, Default, Clone, Copy)]
pub struct UntiedOutput;
/// A decoder-only model with its own output projection without a bias, as Hugging Face's
/// `GPT2LMHeadModel` with `tie_word_embeddings=False` (its `lm_head` is `bias=False`) and Llama.
#[derive(Debug, Default, Clone, Copy)]
pub struct UntiedOutputNoBias;

impl LayoutFlags for TiedOutput {
    const SHARED: bool = true;
    const TIED: bool = true;
    const NAME: &'static str = "tied";
}
impl LayoutFlags for UntiedOutput {
    const SHARED: bool = true;
    const TIED: bool = false;
    const NAME: &'static str = "untied";
}
impl LayoutFlags for UntiedOutputNoBias {
    const SHARED: bool = true;
    const TIED: bool = false;
    const HEAD_BIAS: bool = false;
    const NAME: &'static str = "untied, no bias";
}

const PRESENT: &str = "the layout says this table exists";

impl<const V: usize, const D: usize> EmbeddingLayout<V, V, D> for SharedTied {
    fn target<'a, E: FloatDtype, Dev: Device<E>>(
        src: &'a TokenEmbedding<V, D, E, Dev>,
        _: &'a TargetEmbedding<V, D, Self, E, Dev>,
    ) -> &'a TokenEmbedding<V, D, E, Dev> {
        src
    }
}
impl<const SV: usize, const TV: usize, const D: usize> EmbeddingLayout<SV, TV, D> for SeparateTied {
    fn target<'a, E: FloatDtype, Dev: Device<E>>(
        _: &'a TokenEmbedding<SV, D, E, Dev>,
        tgt: &'a TargetEmbedding<TV, D, Self, E, Dev>,
    ) -> &'a TokenEmbedding<TV, D, E, Dev> {
        tgt.table.as_ref().expect(PRESENT)
    }
}
impl<const SV: usize, const TV: usize, const D: usize> EmbeddingLayout<SV, TV, D> for Separate {
    fn target<'a, E: FloatDtype, Dev: Device<E>>(
        _: &'a TokenEmbedding<SV, D, E, Dev>,
        tgt: &'a TargetEmbedding<TV, D, Self, E, Dev>,
    ) -> &'a TokenEmbedding<TV, D, E, Dev> {
        tgt.table.as_ref().expect(PRESENT)
    }
}

/// The target embedding table, present unless the layout shares the source one.
#[derive(Debug, Clone)]
pub struct TargetEmbedding<const TV: usize, const D: usize, L, E: Dtype, Dev: Storage<E>> {
    /// The table, `None` when shared with the source.
    pub table: Option<TokenEmbedding<TV, D, E, Dev>>,
    layout: PhantomData<L>,
}

impl<const TV: usize, const D: usize, L: LayoutFlags, E: FloatDtype, Dev: Device<E>> TensorCollection<E, Dev>
    for TargetEmbedding<TV, D, L, E, Dev>
{
    type To<E2: Dtype, D2: Device<E2>> = TargetEmbedding<TV, D, L, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, Dev>>(visitor: &mut V) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        if L::SHARED {
            visitor.visit_fields((), |()| TargetEmbedding { table: None, layout: PhantomData })
        } else {
            // Visited in place: the tensor is `tgt_embed.weight`, as for the source table.
            visitor.visit_fields(
                Self::tensor(
                    "weight",
                    |s| &s.table.as_ref().expect(PRESENT).weight,
                    |s| &mut s.table.as_mut().expect(PRESENT).weight,
                    embedding_init::<_, _, _, D>(),
                ),
                |weight| TargetEmbedding { table: Some(TokenEmbedding { weight }), layout: PhantomData },
            )
        }
    }
}

/// An untied output projection of the layout `L`: present unless `L` ties it to the target
/// embedding, with a bias unless `L` says otherwise.
#[derive(Debug, Default, Clone, Copy)]
pub struct OutputHead<L>(PhantomData<L>);

impl<L: LayoutFlags> Presence for OutputHead<L> {
    const PRESENT: bool = !L::TIED;
    const BIAS: bool = L::HEAD_BIAS;
}

/// The pre-softmax projection `(D -> TV)`, present unless the layout ties it to the target
/// embedding.
pub type Generator<const D: usize, const TV: usize, L, E, Dev> = OptionalLinear<D, TV, OutputHead<L>, E, Dev>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_untied_generator_is_x_w_plus_b() {
        let dev = Cpu::seed_from_u64(3);
        let generator = Generator::<8, 5, Separate, f64, Cpu>::build(&dev);
        let tied = dev.build_module::<TokenEmbedding<5, 8, f64, Cpu>, f64>();
        let h: Tensor<(usize, usize, Const<8>), f64, Cpu> = dev.sample_normal_like(&(2, 3, Const));
        let got = generator.logits(h.clone(), &tied).as_vec();
        let linear = generator.linear.as_ref().expect("untied");
        let (w, b) = (linear.weight.as_vec(), linear.bias.as_vec()); // w: (8, 5), (in, out)
        let hs = h.as_vec();
        for (row, x) in hs.chunks_exact(8).enumerate() {
            for v in 0..5 {
                let want = b[v] + (0..8).map(|k| x[k] * w[k * 5 + v]).sum::<f64>();
                assert!((got[row * 5 + v] - want).abs() < 1e-12, "row {row}, vocab {v}");
            }
        }
    }
}
