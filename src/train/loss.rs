//! Cross-entropy with label smoothing (section 5.4), ignoring padding.

use crate::error::{Error, Result};
use crate::shape::{Logits, Tokens};
use crate::{scalar, FloatDtype};
use dfdx::prelude::*;

/// The least value [`label_smoothed_cross_entropy`] can take over `vocab` tokens: the entropy of
/// the smoothed target distribution, reached when the model predicts it exactly. A run whose
/// loss is at this floor predicts every label with the most confidence smoothing allows.
///
/// ```
/// use typeformer::train::label_smoothing_floor;
/// assert_eq!(label_smoothing_floor(0.0, 19), 0.0);
/// assert!((label_smoothing_floor(0.1, 19) - 0.5872).abs() < 1e-4);
/// ```
pub fn label_smoothing_floor(smoothing: f64, vocab: usize) -> f64 {
    let spread = smoothing / vocab as f64;
    let h = |p: f64| if p > 0.0 { -p * p.ln() } else { 0.0 };
    h(1.0 - smoothing + spread) + (vocab as f64 - 1.0) * h(spread)
}

/// Mean over non-padding positions of the cross-entropy between the logits and the smoothed
/// target distribution `(1 - ε) one_hot(label) + ε / V`.
///
/// `smoothing = 0.1` is the paper's value; 0 gives plain cross-entropy. The labels carry their
/// vocabulary in their type, so pairing logits over `V` tokens with labels over another
/// vocabulary does not compile. Equals PyTorch's
/// `F.cross_entropy(logits, labels, label_smoothing=ε, ignore_index=PAD)`.
pub fn label_smoothed_cross_entropy<const V: usize, E: FloatDtype, Dev: Device<E>, T: Tape<E, Dev>>(
    logits: Logits<usize, usize, V, E, Dev, T>,
    labels: &Tokens<V>,
    smoothing: f64,
) -> Result<Tensor<Rank0, E, Dev, T>> {
    let (b, s, _) = *logits.shape();
    if (b, s) != (labels.batch(), labels.seq_len()) {
        return Err(Error::DimMismatch {
            what: "labels (batch * seq) vs logits",
            expected: b * s,
            found: labels.batch() * labels.seq_len(),
        });
    }
    if !(0.0..1.0).contains(&smoothing) {
        return Err(Error::InvalidConfig(format!("label smoothing must be in [0, 1), got {smoothing}")));
    }
    let count = labels.num_tokens();
    if count == 0 {
        return Err(Error::InvalidConfig("the labels have no non-padding token".into()));
    }
    let dev = logits.device().clone();
    // Weight 1/count at every real token and 0 at padding: the mean over real tokens.
    let mut weights = vec![E::default(); b * s];
    for (item, &len) in labels.lengths().iter().enumerate() {
        weights[item * s..item * s + len].fill(E::from_f64(1.0 / count as f64).unwrap());
    }
    let weights = dev.tensor_from_vec(weights, (b, s));

    let (log_probs, tape) = logits.log_softmax::<Axis<2>>().split_tape(); // (B, S, V)
    let picked = log_probs.clone().put_tape(tape).select(labels.to_tensor(&dev)); // (B, S)
    let spread = log_probs.retaped::<T>().sum::<(usize, usize), Axis<2>>(); // (B, S)
    let log_likelihood = picked * scalar::<E>(1.0 - smoothing) + spread * scalar::<E>(smoothing / V as f64);
    Ok((log_likelihood * weights).sum::<Rank0, _>().negate())
}
