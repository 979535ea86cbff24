//! Parameter initialisations shared by the blocks.

use crate::FloatDtype;
use dfdx::prelude::*;
use rand_distr::Uniform;

/// `U(-1/sqrt(FAN_IN), 1/sqrt(FAN_IN))`, PyTorch's default for `nn.Linear`.
pub(crate) fn uniform_fan_in<S: ConstShape, E: FloatDtype, Dev: Device<E>, const FAN_IN: usize>(
) -> TensorOptions<S, E, Dev> {
    TensorOptions::reset_with(|t| {
        let b = E::from_f64(1.0 / (FAN_IN as f64).sqrt()).unwrap();
        t.try_fill_with_distr(Uniform::new(-b, b))
    })
}

/// Uniform with variance `1/D`: embeddings that have unit variance once scaled by `sqrt(D)`.
pub(crate) fn embedding_init<S: ConstShape, E: FloatDtype, Dev: Device<E>, const D: usize>() -> TensorOptions<S, E, Dev>
{
    TensorOptions::reset_with(|t| {
        // Uniform(-a, a) has variance a²/3.
        let a = E::from_f64((3.0 / D as f64).sqrt()).unwrap();
        t.try_fill_with_distr(Uniform::new(-a, a))
    })
}
