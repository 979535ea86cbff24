//! Residual connections around a sub-layer, with layer norm after (the paper) or before
//! (pre-LN, as in GPT-2 and most modern LLMs). The placement is chosen by type.

use super::{dropout_when_training, BiasKind, Biases, LayerNorm};
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

/// The residual connection around one sub-layer (section 5.4): the sub-layer's layer norm,
/// before or after it as `N` places it, and dropout on the sub-layer's output when training.
///
/// A block's forward pass reads like its equations, one line per sub-layer:
/// `x = self.norm1.around(x, |x| self.self_attn.self_attention(x, mask))?` is
/// `LayerNorm(x + Dropout(SelfAttention(x)))` under [`PostNorm`] and
/// `x + Dropout(SelfAttention(LayerNorm(x)))` under [`PreNorm`].
///
/// Its parameters are the norm's, named as the field that holds it (`norm1.weight`,
/// `norm1.bias`, `norm1.eps`), with its dropout beside them (`norm1.dropout`).
#[derive(Debug, Clone)]
pub struct Residual<const D: usize, N: NormPlacement, E: Dtype, Dev: Storage<E>> {
    /// The sub-layer's norm.
    pub norm: LayerNorm<D, E, Dev, N::Bias>,
    /// Dropout on the sub-layer's output when training (0.1 in the paper).
    pub dropout: f64,
    placement: std::marker::PhantomData<N>,
}

impl<const D: usize, N: NormPlacement, E: FloatDtype, Dev: Device<E>> TensorCollection<E, Dev>
    for Residual<D, N, E, Dev>
{
    type To<E2: Dtype, D2: Device<E2>> = Residual<D, N, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, Dev>>(visitor: &mut V) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                layer_norm_fields!(N::Bias, norm),
                Self::scalar("dropout", |s| &s.dropout, |s| &mut s.dropout, ScalarOptions::from_default(0.1)),
            ),
            |((weight, bias, eps), dropout)| Residual {
                norm: LayerNorm::from_parts(weight, bias, eps),
                dropout,
                placement: Default::default(),
            },
        )
    }
}

impl<const D: usize, N: NormPlacement, E: FloatDtype, Dev: Device<E>> Residual<D, N, E, Dev> {
    /// `x` through `sublayer` and back onto itself, with the norm where `N` places it. Widths
    /// are checked by type: `sublayer` maps `(B, S, D)` to `(B, S, D)`.
    pub fn around<B, S, T, F>(&self, x: Hidden<B, S, D, E, Dev, T>, sublayer: F) -> Result<Hidden<B, S, D, E, Dev, T>>
    where
        B: Dim,
        S: Dim,
        T: Tape<E, Dev>,
        F: FnOnce(Hidden<B, S, D, E, Dev, T>) -> Result<Hidden<B, S, D, E, Dev, T>>,
    {
        if N::PRE {
            skip_connection(x, |x| Ok(dropout_when_training(sublayer(self.norm.forward(x))?, self.dropout)))
        } else {
            let (x, tape) = x.split_tape();
            let y = sublayer(x.clone().put_tape(tape))?;
            Ok(self.norm.forward(crate::kernels::add(dropout_when_training(y, self.dropout), x)))
        }
    }
}

build_on_device!([const D: usize, N: NormPlacement] Residual<D, N, E, Dev>);

/// `x + sublayer(x)`, the addition fused; the tape runs through `sublayer` and the sum.
pub fn skip_connection<B, S, const D: usize, E, Dev, T, F>(
    x: Hidden<B, S, D, E, Dev, T>,
    sublayer: F,
) -> Result<Hidden<B, S, D, E, Dev, T>>
where
    B: Dim,
    S: Dim,
    E: FloatDtype,
    Dev: Device<E>,
    T: Tape<E, Dev>,
    F: FnOnce(Hidden<B, S, D, E, Dev, T>) -> Result<Hidden<B, S, D, E, Dev, T>>,
{
    let (x, tape) = x.split_tape();
    let y = sublayer(x.clone().put_tape(tape))?;
    Ok(crate::kernels::add(y, x))
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
        if N::FINAL_NORM {
            // Visited in place, so its tensors are named like the stack's `norm` itself.
            visitor.visit_fields(layer_norm_fields!(N::Bias, norm?), |(weight, bias, eps)| FinalNorm {
                norm: Some(LayerNorm::from_parts(weight, bias, eps)),
                placement: Default::default(),
            })
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
