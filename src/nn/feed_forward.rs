//! The position-wise feed-forward network (section 3.3).

use super::dropout_when_training;
use super::init::uniform_fan_in;
use super::{bias_options, BiasKind, Linear, WithBias};
use crate::shape::Hidden;
use crate::FloatDtype;
use dfdx::prelude::*;
use std::marker::PhantomData;

/// The non-linearity between the two linear layers.
pub trait Activation: 'static + Copy + Default + std::fmt::Debug + Send + Sync {
    /// Short name, for summaries.
    const NAME: &'static str;
    /// Applies the function element-wise.
    fn apply<S: Shape, E: FloatDtype, Dev: Device<E>, T: Tape<E, Dev>>(x: Tensor<S, E, Dev, T>)
        -> Tensor<S, E, Dev, T>;
}

/// `max(0, x)`, the paper's choice.
#[derive(Debug, Default, Clone, Copy)]
pub struct Relu;
/// The exact GELU, `x Φ(x)` (BERT, PyTorch's `gelu`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Gelu;
/// GELU's tanh approximation (GPT-2, PyTorch's `gelu(approximate="tanh")`).
#[derive(Debug, Default, Clone, Copy)]
pub struct GeluTanh;

impl Activation for Relu {
    const NAME: &'static str = "relu";
    fn apply<S: Shape, E: FloatDtype, Dev: Device<E>, T: Tape<E, Dev>>(
        x: Tensor<S, E, Dev, T>,
    ) -> Tensor<S, E, Dev, T> {
        x.relu()
    }
}
impl Activation for Gelu {
    const NAME: &'static str = "gelu";
    fn apply<S: Shape, E: FloatDtype, Dev: Device<E>, T: Tape<E, Dev>>(
        x: Tensor<S, E, Dev, T>,
    ) -> Tensor<S, E, Dev, T> {
        let x = match crate::kernels::gelu(x) {
            Ok(y) => return y, // one fused op on the CPU
            Err(x) => x,
        };
        // dfdx 0.13's `accurate_gelu` computes the right values but a wrong derivative: in the
        // term x·φ(x) it drops the 1/√2 that erf(x/√2) contributes by the chain rule, so its
        // slope is off by (1/√π − 1/√(2π))·x·exp(−x²/2). We add `c·(g₀ − g(x))` with
        // g(x) = exp(−x²/2), g₀ its value without a tape and c = 1/√(2π) − 1/√π: exactly 0 in
        // value, and its derivative c·x·exp(−x²/2) cancels the error (checked against finite
        // differences in tests/properties.rs).
        let c = crate::scalar::<E>(1.0 / (2.0 * std::f64::consts::PI).sqrt() - 1.0 / std::f64::consts::PI.sqrt());
        let half = crate::scalar::<E>(-0.5);
        let (x, tape) = x.split_tape();
        let g0 = (x.clone().square() * half).exp();
        let g = (x.retaped::<T>().square() * half).exp();
        x.put_tape(tape).accurate_gelu() + (g.negate() + g0) * c
    }
}
impl Activation for GeluTanh {
    const NAME: &'static str = "gelu_tanh";
    fn apply<S: Shape, E: FloatDtype, Dev: Device<E>, T: Tape<E, Dev>>(
        x: Tensor<S, E, Dev, T>,
    ) -> Tensor<S, E, Dev, T> {
        x.fast_gelu()
    }
}

/// `FFN(x) = act(x W1 + b1) W2 + b2`, applied to each position separately (equation 2).
///
/// **PyTorch equivalent**: `linear2(dropout_when_training(activation(linear1(x))))` inside
/// `torch.nn.TransformerEncoderLayer(D, nhead, dim_feedforward=F)`.
///
/// # Generics
/// - `D`: model width (input and output).
/// - `F`: inner width (`d_ff`, 2048 in the paper).
/// - `A`: [`Relu`], [`Gelu`] or [`GeluTanh`].
#[derive(Debug, Clone)]
pub struct PositionWiseFeedForward<const D: usize, const F: usize, A, E: Dtype, Dev: Storage<E>, Bias = WithBias> {
    /// `D -> F`.
    pub linear1: Linear<D, F, E, Dev>,
    /// `F -> D`.
    pub linear2: Linear<F, D, E, Dev>,
    /// Dropout after the activation when training (0.1 by default).
    pub dropout: f64,
    activation: PhantomData<(A, Bias)>,
}

impl<const D: usize, const F: usize, A: Activation, E: FloatDtype, Dev: Device<E>, Bias: BiasKind>
    TensorCollection<E, Dev> for PositionWiseFeedForward<D, F, A, E, Dev, Bias>
{
    type To<E2: Dtype, D2: Device<E2>> = PositionWiseFeedForward<D, F, A, E2, D2, Bias>;

    fn iter_tensors<V: ModuleVisitor<Self, E, Dev>>(visitor: &mut V) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                // The linears' tensors, visited here so that their biases follow `Bias`.
                Self::tensor(
                    "linear1.weight",
                    |s| &s.linear1.weight,
                    |s| &mut s.linear1.weight,
                    uniform_fan_in::<_, _, _, D>(),
                ),
                Self::tensor(
                    "linear1.bias",
                    |s| &s.linear1.bias,
                    |s| &mut s.linear1.bias,
                    bias_options::<Bias, _, _, _>(uniform_fan_in::<_, _, _, D>()),
                ),
                Self::tensor(
                    "linear2.weight",
                    |s| &s.linear2.weight,
                    |s| &mut s.linear2.weight,
                    uniform_fan_in::<_, _, _, F>(),
                ),
                Self::tensor(
                    "linear2.bias",
                    |s| &s.linear2.bias,
                    |s| &mut s.linear2.bias,
                    bias_options::<Bias, _, _, _>(uniform_fan_in::<_, _, _, F>()),
                ),
                Self::scalar("dropout", |s| &s.dropout, |s| &mut s.dropout, ScalarOptions::from_default(0.1)),
            ),
            |(w1, b1, w2, b2, dropout)| PositionWiseFeedForward {
                linear1: Linear { weight: w1, bias: b1 },
                linear2: Linear { weight: w2, bias: b2 },
                dropout,
                activation: PhantomData,
            },
        )
    }
}

impl<const D: usize, const F: usize, A: Activation, E: FloatDtype, Dev: Device<E>, Bias: BiasKind>
    PositionWiseFeedForward<D, F, A, E, Dev, Bias>
{
    /// `(B, S, D) -> (B, S, D)`.
    pub fn forward<B: Dim, S: Dim, T: Tape<E, Dev>>(
        &self,
        x: Hidden<B, S, D, E, Dev, T>,
    ) -> Hidden<B, S, D, E, Dev, T> {
        let h = A::apply(self.linear1.forward::<Bias, _, _, _>(x)); // (B, S, F)
        let h = dropout_when_training(h, self.dropout);
        self.linear2.forward::<Bias, _, _, _>(h) // (B, S, D)
    }
}

build_on_device!([const D: usize, const F: usize, A: Activation, Bias: BiasKind] PositionWiseFeedForward<D, F, A, E, Dev, Bias>);
