//! Root-mean-square layer normalization (Zhang & Sennrich, 2019), the norm of Llama: no mean
//! subtracted, no shift, one learned scale per feature.

use crate::shape::Hidden;
use crate::FloatDtype;
use dfdx::prelude::*;

/// `y = x / sqrt(mean(x^2) + eps) * weight`, over the last axis of width `D`.
///
/// **PyTorch equivalent**: `torch.nn.RMSNorm(D, eps)`; Hugging Face's `LlamaRMSNorm`, whose
/// `weight` is this `weight` (`input_layernorm.weight` in a Llama checkpoint).
///
/// ```
/// use typeformer::prelude::*;
/// let dev = Cpu::default();
/// let norm = dev.build_module::<RmsNorm<4, f32, Cpu>, f32>();
/// let x: Tensor<(usize, usize, Const<4>), f32, Cpu> = dev.tensor_from_vec(vec![1.0, -1.0, 1.0, -1.0], (1, 1, Const));
/// let y = norm.forward(x).as_vec();
/// assert!(y.iter().zip([1.0, -1.0, 1.0, -1.0]).all(|(a, b)| (a - b).abs() < 1e-4));
/// ```
#[derive(Debug, Clone)]
pub struct RmsNorm<const D: usize, E: Dtype, Dev: Storage<E>> {
    /// Scale, initialised to ones.
    pub weight: Tensor<Rank1<D>, E, Dev>,
    /// Added to the mean square; 1e-5 by default (Llama's `rms_norm_eps` is 1e-5 or 1e-6).
    pub eps: f64,
}

impl<const D: usize, E: FloatDtype, Dev: Device<E>> TensorCollection<E, Dev> for RmsNorm<D, E, Dev> {
    type To<E2: Dtype, D2: Device<E2>> = RmsNorm<D, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, Dev>>(visitor: &mut V) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::tensor("weight", |s| &s.weight, |s| &mut s.weight, TensorOptions::reset_to_ones()),
                Self::scalar("eps", |s| &s.eps, |s| &mut s.eps, ScalarOptions::from_default(1e-5)),
            ),
            |(weight, eps)| RmsNorm { weight, eps },
        )
    }
}

impl<const D: usize, E: FloatDtype, Dev: Device<E>> RmsNorm<D, E, Dev> {
    /// Normalizes each position of `x: (B, S, D)`.
    pub fn forward<B: Dim, S: Dim, T: Tape<E, Dev>>(
        &self,
        x: Hidden<B, S, D, E, Dev, T>,
    ) -> Hidden<B, S, D, E, Dev, T> {
        let shape = *x.shape();
        let mean_square = x.retaped::<T>().square().mean::<(B, S), Axis<2>>(); // (B, S)
        let inverse_rms = (mean_square + crate::scalar::<E>(self.eps)).sqrt().recip().broadcast_like(&shape);
        x * inverse_rms * self.weight.retaped::<T>().broadcast_like(&shape)
    }
}

build_on_device!([const D: usize] RmsNorm<D, E, Dev>);
