//! Dropout that is on in training and off in inference, decided by the tape.

use dfdx::prelude::*;

use rand::{rngs::StdRng, Rng, SeedableRng};
use std::cell::RefCell;

/// Where this thread's dropout masks come from, once [`seed_dropout`] has been called.
#[derive(Debug, Clone, Copy)]
struct MaskStream {
    seed: u64,
    /// Global index of the batch's first example.
    first_example: usize,
    /// Examples in the batch this thread computes.
    examples: usize,
    /// Dropout layers applied since the stream was seeded.
    calls: u64,
}

thread_local! {
    static MASKS: RefCell<Option<MaskStream>> = const { RefCell::new(None) };
}

/// Draws this thread's dropout masks from `seed` from now on, instead of the device's RNG. A
/// training loop that reseeds every step from `(seed, step)` makes the masks a function of the
/// step, so a run resumed from a checkpoint draws the masks the uninterrupted run would have
/// drawn. The batch is one example here; see [`seed_dropout_per_example`].
pub fn seed_dropout(seed: u64) {
    seed_dropout_per_example(seed, 0, 1);
}

/// Like [`seed_dropout`], for a batch of `examples` examples that are examples
/// `first_example..first_example + examples` of a larger global batch: each example's mask is
/// drawn from `(seed, layer, global example)` alone, so a replica computing rows 8..16 of a
/// global batch draws the masks that one process computing all of it draws for those rows (as
/// data-parallel training needs). Every tensor dropout is applied to must have the batch as its
/// outermost dimension (as every activation of the models here has); one whose elements do not
/// split evenly into `examples` is masked as one example.
pub fn seed_dropout_per_example(seed: u64, first_example: usize, examples: usize) {
    let stream = MaskStream { seed, first_example, examples: examples.max(1), calls: 0 };
    MASKS.with(|masks| *masks.borrow_mut() = Some(stream));
}

/// A mask of `n` elements (`keep` or zero, zero with probability `p`) from this thread's stream,
/// or `None` when no stream is seeded.
fn next_mask<E: Dtype>(n: usize, p: f64, keep: E) -> Option<Vec<E>> {
    let stream = MASKS.with(|masks| {
        let mut masks = masks.borrow_mut();
        let stream = masks.as_mut()?;
        let now = *stream;
        stream.calls += 1;
        Some(now)
    })?;
    let (examples, first) = match n % stream.examples {
        0 => (stream.examples, stream.first_example),
        _ => (1, 0),
    };
    let per_example = n / examples;
    let mut mask = Vec::with_capacity(n);
    for example in first..first + examples {
        // SplitMix-style mixing keeps nearby (layer, example) pairs on unrelated streams.
        let key = stream.seed
            ^ stream.calls.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ (example as u64).wrapping_add(1).wrapping_mul(0xd1b5_4a32_d192_ed03);
        let mut rng = StdRng::seed_from_u64(key);
        mask.extend((0..per_example).map(|_| if rng.gen::<f64>() < p { E::default() } else { keep }));
    }
    Some(mask)
}

/// Applies dropout with probability `p` when `x` is traced (training), and is the identity
/// otherwise (inference). Masks come from the stream of [`seed_dropout`] if set, else from the
/// device's seeded RNG; either way runs are reproducible.
pub fn dropout_when_training<S: Shape, E: Dtype, Dev: Device<E>, T: Tape<E, Dev>>(
    x: Tensor<S, E, Dev, T>,
    p: f64,
) -> Tensor<S, E, Dev, T> {
    if !T::OWNS_TAPE || p <= 0.0 {
        return x;
    }
    let keep = E::from_f64(1.0 / (1.0 - p)).expect("a dtype holds 1 / (1 - p)");
    match next_mask(x.shape().num_elements(), p, keep) {
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
