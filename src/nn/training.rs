//! Training mode: a pass runs in training mode (gradients recorded, dropout on) exactly when it
//! carries a recording tape.

use dfdx::prelude::*;

/// A tape that records into `grads` (from `model.alloc_grads()`), to pass to a model's
/// `forward_with_tape`. Passes on a tape track gradients and have dropout on.
pub fn training_tape<E: Dtype, Dev: Device<E>>(dev: &Dev, grads: Gradients<E, Dev>) -> OwnedTape<E, Dev> {
    let anchor: Tensor<Rank0, E, Dev> = dev.zeros();
    anchor.traced(grads).split_tape().1
}
