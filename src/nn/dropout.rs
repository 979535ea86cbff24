//! Dropout that is on in training and off in inference, decided by the tape.

use dfdx::prelude::*;

/// Applies dropout with probability `p` when `x` is traced (training), and is the identity
/// otherwise (inference). Uses the device's seeded RNG, so runs are reproducible.
pub fn dropout_when_training<S: Shape, E: Dtype, Dev: Device<E>, T: Tape<E, Dev>>(
    x: Tensor<S, E, Dev, T>,
    p: f64,
) -> Tensor<S, E, Dev, T> {
    if T::OWNS_TAPE && p > 0.0 {
        x.dropout(p)
    } else {
        x
    }
}

use dfdx::nn::tensor_collection::{
    RecursiveWalker, ScalarOptions, TensorCollection, TensorOptions, TensorVisitor, ViewTensorMut, ViewTensorName,
};

struct SetDropout(f64);

impl<E: Dtype, Dev: Device<E>> TensorVisitor<E, Dev> for SetDropout {
    type Viewer = (ViewTensorMut, ViewTensorName);
    type Err = Dev::Err;
    type E2 = E;
    type D2 = Dev;

    fn visit<S: Shape>(
        &mut self,
        _: TensorOptions<S, E, Dev>,
        _: (&mut Tensor<S, E, Dev>, String),
    ) -> Result<Option<Tensor<S, E, Dev>>, Self::Err> {
        Ok(None)
    }

    fn visit_scalar<N: num_traits::NumCast>(
        &mut self,
        _: ScalarOptions<N>,
        (value, name): (&mut N, String),
    ) -> Result<Option<N>, Self::Err> {
        if name == "dropout" || name.ends_with(".dropout") {
            *value = N::from(self.0).expect("a dropout probability fits the field");
        }
        Ok(None)
    }
}

/// Sets every dropout probability in `model` (embedding, attention, residual, feed-forward) to
/// `p`. An error unless `0 <= p < 1`.
pub fn set_dropout<M: TensorCollection<E, Dev>, E: Dtype, Dev: Device<E>>(model: &mut M, p: f64) -> crate::Result<()> {
    if !(0.0..1.0).contains(&p) {
        return Err(crate::Error::InvalidConfig(format!("dropout must be in [0, 1), got {p}")));
    }
    M::iter_tensors(&mut RecursiveWalker { m: (model, String::new()), f: &mut SetDropout(p) })
        .map_err(|e| crate::Error::Training(format!("device error: {e:?}")))?;
    Ok(())
}
