//! Starting a recorded (training) pass, and running its backward pass.

use crate::error::{Error, Result};
use dfdx::prelude::*;

pub use crate::nn::training_tape;

/// The backward pass from `loss`, like dfdx's `loss.backward()`, but each of typeformer's fused
/// kernels frees the gradient of its intermediate result as soon as it has used it, where dfdx
/// keeps every intermediate gradient until the pass ends: a GPT-style training step peaks at
/// about 1.36x what it must hold instead of 1.64x (`cargo bench --bench compare -- memory`).
///
/// Use it with gradients from `model.alloc_grads()`, whose intermediates dfdx drops at the end
/// anyway. With `Gradients::leaky()`, intermediate results of the fused kernels are left with
/// empty gradients; call `.backward()` to inspect those.
///
/// ```
/// use typeformer::prelude::*;
///
/// let dev = Cpu::default();
/// let w: Tensor<Rank1<3>, f32, Cpu> = dev.tensor([1.0, 2.0, 3.0]);
/// let loss = (w.leaky_trace() * 2.0).sum();
/// let grads = typeformer::train::backward(loss)?;
/// assert_eq!(grads.get(&w).array(), [2.0; 3]);
/// # Ok::<(), typeformer::Error>(())
/// ```
pub fn backward<E: Dtype, Dev: Device<E>>(loss: Tensor<Rank0, E, Dev, OwnedTape<E, Dev>>) -> Result<Gradients<E, Dev>> {
    let _free = crate::kernels::FreeConsumedGradients::enter();
    loss.try_backward().map_err(|e| Error::Device(format!("in the backward pass: {e:?}")))
}
