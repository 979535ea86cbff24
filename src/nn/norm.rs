//! Layer normalization (Ba et al., 2016), over the model width.

use super::{BiasKind, WithBias};
use crate::shape::Hidden;
use crate::FloatDtype;
use dfdx::prelude::*;

/// The visited fields of a layer norm (`weight`, `bias`, `eps`, with their initialisation),
/// for a `TensorCollection` impl: the norm's own (`layer_norm_fields!(Bias)`), or one whose
/// norm is its field `$field` and whose parameters take the norm's names in place
/// (`layer_norm_fields!(N::Bias, norm)`; `norm?` for an `Option` that the type says is `Some`).
macro_rules! layer_norm_fields {
    ($bias:ty) => {
        layer_norm_fields!(@ $bias, |s| s, |s| s)
    };
    ($bias:ty, $field:ident) => {
        layer_norm_fields!(@ $bias, |s| &s.$field, |s| &mut s.$field)
    };
    ($bias:ty, $field:ident?) => {
        layer_norm_fields!(
            @ $bias,
            |s| s.$field.as_ref().expect("the type says the norm exists"),
            |s| s.$field.as_mut().expect("the type says the norm exists")
        )
    };
    (@ $bias:ty, |$s:ident| $get:expr, |$m:ident| $get_mut:expr) => {
        (
            Self::tensor(
                "weight",
                |$s| &$get.weight,
                |$m| &mut $get_mut.weight,
                ::dfdx::nn::tensor_collection::TensorOptions::reset_to_ones(),
            ),
            Self::tensor(
                "bias",
                |$s| &$get.bias,
                |$m| &mut $get_mut.bias,
                $crate::nn::bias_options::<$bias, _, _, _>(
                    ::dfdx::nn::tensor_collection::TensorOptions::reset_to_zeros(),
                ),
            ),
            Self::scalar(
                "eps",
                |$s| &$get.eps,
                |$m| &mut $get_mut.eps,
                ::dfdx::nn::tensor_collection::ScalarOptions::from_default(1e-5),
            ),
        )
    };
}

/// `y = (x - mean) / sqrt(var + eps) * weight + bias`, over the last axis of width `D`.
///
/// **PyTorch equivalent**: `torch.nn.LayerNorm(D, eps=1e-5)`.
///
/// # Generics
/// - `D`: the normalized width.
#[derive(Debug, Clone)]
pub struct LayerNorm<const D: usize, E: Dtype, Dev: Storage<E>, Bias = WithBias> {
    /// Scale, initialised to ones.
    pub weight: Tensor<Rank1<D>, E, Dev>,
    /// Shift, initialised to zeros (fixed zeros under [`NoBias`](super::NoBias)).
    pub bias: Tensor<Rank1<D>, E, Dev>,
    /// Added to the variance; 1e-5 by default, as in PyTorch.
    pub eps: f64,
    bias_kind: std::marker::PhantomData<Bias>,
}

impl<const D: usize, E: FloatDtype, Dev: Device<E>, Bias: BiasKind> TensorCollection<E, Dev>
    for LayerNorm<D, E, Dev, Bias>
{
    type To<E2: Dtype, D2: Device<E2>> = LayerNorm<D, E2, D2, Bias>;

    fn iter_tensors<V: ModuleVisitor<Self, E, Dev>>(visitor: &mut V) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(layer_norm_fields!(Bias), |(weight, bias, eps)| LayerNorm::from_parts(weight, bias, eps))
    }
}

impl<const D: usize, E: Dtype, Dev: Storage<E>, Bias> LayerNorm<D, E, Dev, Bias> {
    /// A norm from its scale, shift and epsilon.
    pub fn from_parts(weight: Tensor<Rank1<D>, E, Dev>, bias: Tensor<Rank1<D>, E, Dev>, eps: f64) -> Self {
        Self { weight, bias, eps, bias_kind: std::marker::PhantomData }
    }
}

impl<const D: usize, E: FloatDtype, Dev: Device<E>, Bias: BiasKind> LayerNorm<D, E, Dev, Bias> {
    /// Normalizes each position of `x: (B, S, D)`.
    pub fn forward<B: Dim, S: Dim, T: Tape<E, Dev>>(
        &self,
        x: Hidden<B, S, D, E, Dev, T>,
    ) -> Hidden<B, S, D, E, Dev, T> {
        let bias = Bias::ON.then(|| self.bias.retaped::<T>());
        crate::kernels::layer_norm(x, self.weight.retaped::<T>(), bias, self.eps)
    }
}

build_on_device!([const D: usize, Bias: BiasKind] LayerNorm<D, E, Dev, Bias>);

/// Sets the epsilon of every layer norm in `model` (1e-12 in BERT, 1e-5 in PyTorch and GPT-2).
/// An error unless `eps` is positive and finite.
pub fn set_layer_norm_eps<M: TensorCollection<E, Dev>, E: Dtype, Dev: Device<E>>(
    model: &mut M,
    eps: f64,
) -> crate::Result<()> {
    if let Err(range) = super::check_scalar("eps", eps) {
        return Err(crate::Error::InvalidConfig(format!("layer-norm epsilon must be {range}, got {eps}")));
    }
    super::set_scalar(model, "eps", eps)
}
