//! Dropout that is on in training and off in inference, decided by the tape.

use dfdx::prelude::*;

use rand::{rngs::StdRng, Rng, SeedableRng};
use std::cell::RefCell;

thread_local! {
    /// Where this thread's dropout masks come from, once [`seed_dropout`] has been called.
    static MASK_RNG: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// Draws this thread's dropout masks from an RNG seeded with `seed` from now on, instead of the
/// device's RNG. A training loop that reseeds every step from `(seed, step)` makes the masks a
/// function of the step, so a run resumed from a checkpoint draws the masks the uninterrupted
/// run would have drawn.
pub fn seed_dropout(seed: u64) {
    MASK_RNG.with(|rng| *rng.borrow_mut() = Some(StdRng::seed_from_u64(seed)));
}

/// Applies dropout with probability `p` when `x` is traced (training), and is the identity
/// otherwise (inference). Masks come from the RNG of [`seed_dropout`] if set, else from the
/// device's seeded RNG; either way runs are reproducible.
pub fn dropout_when_training<S: Shape, E: Dtype, Dev: Device<E>, T: Tape<E, Dev>>(
    x: Tensor<S, E, Dev, T>,
    p: f64,
) -> Tensor<S, E, Dev, T> {
    if !T::OWNS_TAPE || p <= 0.0 {
        return x;
    }
    let keep = E::from_f64(1.0 / (1.0 - p)).expect("a dtype holds 1 / (1 - p)");
    let mask = MASK_RNG.with(|rng| {
        rng.borrow_mut().as_mut().map(|rng| {
            (0..x.shape().num_elements())
                .map(|_| if rng.gen::<f64>() < p { E::default() } else { keep })
                .collect::<Vec<E>>()
        })
    });
    match mask {
        Some(mask) => {
            let shape = *x.shape();
            let mask = x.device().tensor_from_vec(mask, shape);
            x * mask
        }
        None => x.dropout(p),
    }
}

/// Sets every dropout probability in `model` (embedding, attention, residual, feed-forward) to
/// `p`. An error unless `0 <= p < 1`.
pub fn set_dropout<M: TensorCollection<E, Dev>, E: Dtype, Dev: Device<E>>(model: &mut M, p: f64) -> crate::Result<()> {
    if !(0.0..1.0).contains(&p) {
        return Err(crate::Error::InvalidConfig(format!("dropout must be in [0, 1), got {p}")));
    }
    super::set_scalar(model, "dropout", p)
}
