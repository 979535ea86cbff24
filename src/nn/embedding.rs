//! Token embeddings scaled by sqrt(d_model), and the tied output projection (section 3.4).

use super::init::embedding_init;
use crate::shape::{Hidden, Logits};
use crate::FloatDtype;
use dfdx::prelude::*;

/// A table of `V` learned vectors of width `D`; looking up a token multiplies its vector by
/// `sqrt(D)`, as in section 3.4 of "Attention Is All You Need" (arXiv 1706.03762).
///
/// The same table can serve as the output projection ([`TokenEmbedding::logits`]): the paper
/// shares it between both embedding layers and the pre-softmax linear transformation.
///
/// **PyTorch equivalent**: `torch.nn.Embedding(V, D)` followed by `* math.sqrt(D)`.
///
/// # Generics
/// - `V`: vocabulary size.
/// - `D`: model width.
#[derive(Debug, Clone)]
pub struct TokenEmbedding<const V: usize, const D: usize, E: Dtype, Dev: Storage<E>> {
    /// `(V, D)`, initialised uniformly with variance 1/D, so that scaled embeddings have unit
    /// variance.
    pub weight: Tensor<Rank2<V, D>, E, Dev>,
}

impl<const V: usize, const D: usize, E: FloatDtype, Dev: Device<E>> TensorCollection<E, Dev>
    for TokenEmbedding<V, D, E, Dev>
{
    type To<E2: Dtype, D2: Device<E2>> = TokenEmbedding<V, D, E2, D2>;

    fn iter_tensors<Vis: ModuleVisitor<Self, E, Dev>>(
        visitor: &mut Vis,
    ) -> Result<Option<Self::To<Vis::E2, Vis::D2>>, Vis::Err> {
        visitor.visit_fields(
            Self::tensor("weight", |s| &s.weight, |s| &mut s.weight, embedding_init::<_, _, _, D>()),
            |weight| TokenEmbedding { weight },
        )
    }
}

impl<const V: usize, const D: usize, E: FloatDtype, Dev: Device<E>> TokenEmbedding<V, D, E, Dev> {
    /// Looks up `ids: (B, S)` and scales by `sqrt(D)`: `(B, S, D)`. The tape, if any, travels
    /// on the ids. Ids must be below `V` ([`Tokens`](crate::shape::Tokens) guarantees it).
    pub fn forward<B: Dim, S: Dim, T: Tape<E, Dev>>(
        &self,
        ids: Tensor<(B, S), usize, Dev, T>,
    ) -> Hidden<B, S, D, E, Dev, T> {
        let (ids, tape) = ids.split_tape();
        let scale = E::from_f64((D as f64).sqrt()).unwrap();
        self.weight.clone().put_tape(tape).gather(ids) * scale // (B, S, D)
    }

    /// Looks up `ids: (B, S)` without scaling, as GPT-2 and BERT do: `(B, S, D)`.
    pub fn lookup<B: Dim, S: Dim, T: Tape<E, Dev>>(
        &self,
        ids: Tensor<(B, S), usize, Dev, T>,
    ) -> Hidden<B, S, D, E, Dev, T> {
        let (ids, tape) = ids.split_tape();
        self.weight.clone().put_tape(tape).gather(ids) // (B, S, D)
    }

    /// The tied output projection: `h @ weightᵀ`, `(B, S, D) -> (B, S, V)`.
    ///
    /// The model width of `h` must equal the embedding width, a type equality:
    /// ```compile_fail
    /// # use dfdx::prelude::*; use typeformer::nn::TokenEmbedding;
    /// let dev = Cpu::default();
    /// let emb = dev.build_module::<TokenEmbedding<100, 16, f32, Cpu>, f32>();
    /// let h: Tensor<(usize, usize, Const<32>), f32, _> = dev.zeros_like(&(2, 3, Const));
    /// let _ = emb.logits(h); // width 32 is not 16
    /// ```
    pub fn logits<B: Dim, S: Dim, T: Tape<E, Dev>>(&self, h: Hidden<B, S, D, E, Dev, T>) -> Logits<B, S, V, E, Dev, T> {
        let table = self.weight.retaped::<T>().permute::<_, Axes2<1, 0>>(); // (D, V), read in place
        super::project::<super::NoBias, _, _, _, _, _, _, _>(h, table, None)
        // (B, S, D) x (D, V)
    }
}

build_on_device!([const V: usize, const D: usize] TokenEmbedding<V, D, E, Dev>);
