//! A stack of `L` identical layers with an optional final norm: the shape shared by the
//! encoder, the decoder and a GPT's blocks.

use super::{FinalNorm, NormPlacement};
use crate::FloatDtype;
use dfdx::prelude::*;

/// `L` layers of type `Layer`, named `layers.0` .. `layers.{L-1}`, then a final norm of width
/// `D` when the placement `N` has one. [`Encoder`](super::Encoder) and
/// [`Decoder`](super::Decoder) are stacks of their layers.
#[derive(Debug, Clone)]
pub struct Stack<Layer, const L: usize, const D: usize, N: NormPlacement, E: Dtype, Dev: Storage<E>> {
    /// The layers.
    pub layers: Repeated<Layer, L>,
    /// The final norm (present when `N::FINAL_NORM`).
    pub norm: FinalNorm<D, N, E, Dev>,
}

impl<Layer, const L: usize, const D: usize, N, E, Dev> TensorCollection<E, Dev> for Stack<Layer, L, D, N, E, Dev>
where
    Layer: TensorCollection<E, Dev>,
    N: NormPlacement,
    E: FloatDtype,
    Dev: Device<E>,
{
    type To<E2: Dtype, D2: Device<E2>> = Stack<Layer::To<E2, D2>, L, D, N, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, Dev>>(visitor: &mut V) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::module("layers", |s| &s.layers, |s| &mut s.layers),
                Self::module("norm", |s| &s.norm, |s| &mut s.norm),
            ),
            |(layers, norm)| Stack { layers, norm },
        )
    }
}

impl<Layer, const L: usize, const D: usize, N, E, Dev> BuildOnDevice<Dev, E> for Stack<Layer, L, D, N, E, Dev>
where
    Layer: TensorCollection<E, Dev, To<E, Dev> = Layer>,
    N: NormPlacement,
    E: FloatDtype,
    Dev: Device<E>,
{
    type Built = Self;
}

/// Trainable parameters of one layer of width `d` with `attentions` attention blocks (`h` heads
/// of width `hd`), a feed-forward network of width `f` and `norms` layer norms; biases counted
/// only when `bias`. An encoder layer has 1 attention and 2 norms, a decoder layer 2 and 3.
pub const fn layer_params(
    d: usize,
    h: usize,
    hd: usize,
    f: usize,
    attentions: usize,
    norms: usize,
    bias: bool,
) -> usize {
    let b = bias as usize;
    let mha = 3 * (h * hd * d + b * h * hd) + (d * h * hd + b * d);
    let ffn = d * f + b * f + f * d + b * d;
    attentions * mha + ffn + norms * norm_params(d, bias)
}

/// Trainable parameters of a layer norm of width `d`.
pub const fn norm_params(d: usize, bias: bool) -> usize {
    (1 + bias as usize) * d
}
