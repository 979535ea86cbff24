//! The gated feed-forward network of PaLM and Llama (Shazeer, 2020, "GLU Variants Improve
//! Transformer"): `down(silu(gate(x)) * up(x))`, three projections without biases.

use super::init::uniform_fan_in;
use super::{bias_options, project_shared, Linear, NoBias};
use crate::shape::Hidden;
use crate::FloatDtype;
use dfdx::prelude::*;

/// `down(silu(gate(x)) * up(x))` at every position, from width `D` through `F` and back, where
/// `silu(z) = z * sigmoid(z)`.
///
/// **PyTorch equivalent**: Hugging Face's `LlamaMLP` (`gate_proj`, `up_proj`, `down_proj`,
/// `hidden_act = "silu"`), whose weights are ours transposed.
///
/// ```
/// use typeformer::prelude::*;
/// let dev = Cpu::seed_from_u64(0);
/// let mlp = dev.build_module::<SwiGlu<8, 24, f32, Cpu>, f32>();
/// let x: Tensor<(usize, usize, Const<8>), f32, Cpu> = dev.sample_normal_like(&(2, 3, Const));
/// assert_eq!(mlp.forward(x).shape(), &(2, 3, Const::<8>));
/// assert_eq!(mlp.num_trainable_params(), 3 * 8 * 24);
/// ```
#[derive(Debug, Clone)]
pub struct SwiGlu<const D: usize, const F: usize, E: Dtype, Dev: Storage<E>> {
    /// `D -> F`, through the SiLU: the gate.
    pub gate: Linear<D, F, E, Dev>,
    /// `D -> F`: the values the gate scales.
    pub up: Linear<D, F, E, Dev>,
    /// `F -> D`.
    pub down: Linear<F, D, E, Dev>,
}

impl<const D: usize, const F: usize, E: FloatDtype, Dev: Device<E>> TensorCollection<E, Dev> for SwiGlu<D, F, E, Dev> {
    type To<E2: Dtype, D2: Device<E2>> = SwiGlu<D, F, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, Dev>>(visitor: &mut V) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        // Only the weights are parameters; the biases are fixed zeros, never trained or saved.
        visitor.visit_fields(
            (
                Self::tensor("gate.weight", |s| &s.gate.weight, |s| &mut s.gate.weight, uniform_fan_in::<_, _, _, D>()),
                Self::tensor(
                    "gate.bias",
                    |s| &s.gate.bias,
                    |s| &mut s.gate.bias,
                    bias_options::<NoBias, _, _, _>(TensorOptions::reset_to_zeros()),
                ),
                Self::tensor("up.weight", |s| &s.up.weight, |s| &mut s.up.weight, uniform_fan_in::<_, _, _, D>()),
                Self::tensor(
                    "up.bias",
                    |s| &s.up.bias,
                    |s| &mut s.up.bias,
                    bias_options::<NoBias, _, _, _>(TensorOptions::reset_to_zeros()),
                ),
                Self::tensor("down.weight", |s| &s.down.weight, |s| &mut s.down.weight, uniform_fan_in::<_, _, _, F>()),
                Self::tensor(
                    "down.bias",
                    |s| &s.down.bias,
                    |s| &mut s.down.bias,
                    bias_options::<NoBias, _, _, _>(TensorOptions::reset_to_zeros()),
                ),
            ),
            |(gw, gb, uw, ub, dw, db)| SwiGlu {
                gate: Linear { weight: gw, bias: gb },
                up: Linear { weight: uw, bias: ub },
                down: Linear { weight: dw, bias: db },
            },
        )
    }
}

impl<const D: usize, const F: usize, E: FloatDtype, Dev: Device<E>> SwiGlu<D, F, E, Dev> {
    /// `(B, S, D) -> (B, S, D)`.
    pub fn forward<B: Dim, S: Dim, T: Tape<E, Dev>>(
        &self,
        x: Hidden<B, S, D, E, Dev, T>,
    ) -> Hidden<B, S, D, E, Dev, T> {
        // Gate and up read the same input: one parallel pass over both products.
        let [gate, up] = project_shared::<NoBias, 2, _, _, _, _, _, _, _>(
            x,
            [(self.gate.weight.retaped::<T>(), None), (self.up.weight.retaped::<T>(), None)],
        ); // (B, S, F) each
        let silu = gate.retaped::<T>().sigmoid() * gate;
        self.down.forward::<NoBias, _, _, _>(silu * up)
    }
}

build_on_device!([const D: usize, const F: usize] SwiGlu<D, F, E, Dev>);
