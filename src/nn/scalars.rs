//! Setting a named hyperparameter (dropout, layer-norm epsilon) everywhere in a model.

use dfdx::nn::tensor_collection::{
    RecursiveWalker, ScalarOptions, TensorCollection, TensorOptions, TensorVisitor, ViewTensorMut, ViewTensorName,
};
use dfdx::prelude::*;

/// Sets every scalar named `field` to `value`.
struct SetScalar {
    field: &'static str,
    value: f64,
}

impl<E: Dtype, Dev: Device<E>> TensorVisitor<E, Dev> for SetScalar {
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
        if name == self.field || name.rsplit('.').next() == Some(self.field) {
            if let Some(v) = N::from(self.value) {
                *value = v;
            }
        }
        Ok(None)
    }
}

/// Sets every scalar field named `field` in `model` to `value`.
pub(crate) fn set_scalar<M: TensorCollection<E, Dev>, E: Dtype, Dev: Device<E>>(
    model: &mut M,
    field: &'static str,
    value: f64,
) -> crate::Result<()> {
    M::iter_tensors(&mut RecursiveWalker { m: (model, String::new()), f: &mut SetScalar { field, value } })
        .map_err(|e| crate::Error::Device(format!("{e:?}")))?;
    Ok(())
}

/// Whether a hyperparameter read from a file can be meant: a layer norm's `eps` in (0, 1), a
/// dropout probability in [0, 1). Returns the valid range otherwise.
pub fn check_scalar(name: &str, value: f64) -> std::result::Result<(), &'static str> {
    let last = name.rsplit('.').next().unwrap_or(name);
    match last {
        "eps" if !(value > 0.0 && value < 1.0) => Err("a number in (0, 1)"),
        "dropout" if !(0.0..1.0).contains(&value) => Err("a probability in [0, 1)"),
        _ if !value.is_finite() => Err("a finite number"),
        _ => Ok(()),
    }
}
