//! Residual connections around a sub-layer, with layer norm after (the paper) or before
//! (pre-LN, as in GPT-2 and most modern LLMs). The placement is chosen by type.

use super::{bias_options, dropout_when_training, BiasKind, Biases, LayerNorm};
use crate::error::Result;
use crate::shape::Hidden;
use crate::FloatDtype;
use dfdx::prelude::*;

/// Where layer norm sits relative to each residual connection.
pub trait NormPlacement: 'static + Copy + Default + std::fmt::Debug + Send + Sync {
    /// Norm before the sub-layer (`x + f(norm(x))`) rather than after (`norm(x + f(x))`).
    const PRE: bool;
    /// Whether a layer norm follows the whole stack.
    const FINAL_NORM: bool;
    /// Short name, for summaries.
    const NAME: &'static str;
    /// Whether the layers' projections and norms have biases ([`WithBias`](super::WithBias) unless `BIAS` is
    /// false). Carried here because every layer and stack already names its placement.
    type Bias: BiasKind;
}

/// `LayerNorm(x + Dropout(Sublayer(x)))`, section 3.1 and 5.4 of the paper. `FINAL` adds a norm
/// after the stack, as PyTorch's `nn.Transformer` does; the paper has none. `BIAS: false` removes
/// every bias of the layers (projections and norms).
#[derive(Debug, Default, Clone, Copy)]
pub struct PostNorm<const FINAL: bool = false, const BIAS: bool = true>;

/// `x + Dropout(Sublayer(LayerNorm(x)))` (Xiong et al., 2020), with a final norm after the stack
/// unless `FINAL` is false. `BIAS: false` removes every bias of the layers.
#[derive(Debug, Default, Clone, Copy)]
pub struct PreNorm<const FINAL: bool = true, const BIAS: bool = true>;

impl<const FINAL: bool, const BIAS: bool> NormPlacement for PostNorm<FINAL, BIAS> {
    const PRE: bool = false;
    const FINAL_NORM: bool = FINAL;
    const NAME: &'static str = "post";
    type Bias = Biases<BIAS>;
}
impl<const FINAL: bool, const BIAS: bool> NormPlacement for PreNorm<FINAL, BIAS> {
    const PRE: bool = true;
    const FINAL_NORM: bool = FINAL;
    const NAME: &'static str = "pre";
    type Bias = Biases<BIAS>;
}

/// One residual sub-layer: applies `sublayer` to `x` with the norm placed as `N` says, and
/// dropout on the sub-layer's output when training.
pub fn residual<N, B, S, const D: usize, E, Dev, T, F>(
    x: Hidden<B, S, D, E, Dev, T>,
    norm: &LayerNorm<D, E, Dev, N::Bias>,
    dropout_p: f64,
    sublayer: F,
) -> Result<Hidden<B, S, D, E, Dev, T>>
where
    N: NormPlacement,
    B: Dim,
    S: Dim,
    E: FloatDtype,
    Dev: Device<E>,
    T: Tape<E, Dev>,
    F: FnOnce(Hidden<B, S, D, E, Dev, T>) -> Result<Hidden<B, S, D, E, Dev, T>>,
{
    let (x, tape) = x.split_tape();
    if N::PRE {
        let y = sublayer(norm.forward(x.clone().put_tape(tape)))?;
        Ok(crate::kernels::add(dropout_when_training(y, dropout_p), x))
    } else {
        let y = sublayer(x.clone().put_tape(tape))?;
        Ok(norm.forward(crate::kernels::add(dropout_when_training(y, dropout_p), x)))
    }
}

/// The layer norm after a stack, present only when `N::FINAL_NORM`.
#[derive(Debug, Clone)]
pub struct FinalNorm<const D: usize, N: NormPlacement, E: Dtype, Dev: Storage<E>> {
    /// The norm, or `None` for placements without one.
    pub norm: Option<LayerNorm<D, E, Dev, N::Bias>>,
    placement: std::marker::PhantomData<N>,
}

impl<const D: usize, N: NormPlacement, E: FloatDtype, Dev: Device<E>> TensorCollection<E, Dev>
    for FinalNorm<D, N, E, Dev>
{
    type To<E2: Dtype, D2: Device<E2>> = FinalNorm<D, N, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, Dev>>(visitor: &mut V) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        const PRESENT: &str = "a final norm exists whenever the placement has one";
        if N::FINAL_NORM {
            // Visited in place, so its tensors are named like the stack's `norm` itself.
            visitor.visit_fields(
                (
                    Self::tensor(
                        "weight",
                        |s| &s.norm.as_ref().expect(PRESENT).weight,
                        |s| &mut s.norm.as_mut().expect(PRESENT).weight,
                        TensorOptions::reset_to_ones(),
                    ),
                    Self::tensor(
                        "bias",
                        |s| &s.norm.as_ref().expect(PRESENT).bias,
                        |s| &mut s.norm.as_mut().expect(PRESENT).bias,
                        bias_options::<N::Bias, _, _, _>(TensorOptions::reset_to_zeros()),
                    ),
                    Self::scalar(
                        "eps",
                        |s| &s.norm.as_ref().expect(PRESENT).eps,
                        |s| &mut s.norm.as_mut().expect(PRESENT).eps,
                        ScalarOptions::from_default(1e-5),
                    ),
                ),
                |(weight, bias, eps)| FinalNorm {
                    norm: Some(LayerNorm::from_parts(weight, bias, eps)),
                    placement: Default::default(),
                },
            )
        } else {
            visitor.visit_fields((), |()| FinalNorm { norm: None, placement: Default::default() })
        }
    }
}

impl<const D: usize, N: NormPlacement, E: FloatDtype, Dev: Device<E>> FinalNorm<D, N, E, Dev> {
    /// The norm if present, else the identity.
    pub fn forward<B: Dim, S: Dim, T: Tape<E, Dev>>(
        &self,
        x: Hidden<B, S, D, E, Dev, T>,
    ) -> Hidden<B, S, D, E, Dev, T> {
        match &self.norm {
            Some(norm) => norm.forward(x),
            None => x,
        }
    }
}

build_on_device!([const D: usize, N: NormPlacement] FinalNorm<D, N, E, Dev>);
