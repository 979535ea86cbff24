//! Whether projections and norms have additive biases (the paper, BERT and GPT-2 do; many later
//! LLMs and nanoGPT's `bias=False` do not), chosen by type.

use dfdx::prelude::*;

/// Whether a block's biases exist.
pub trait BiasKind: 'static + Copy + Default + std::fmt::Debug + Send + Sync {
    /// Biases are trained parameters; when false they are fixed zeros that no optimizer updates,
    /// no checkpoint stores and no parameter count includes, and the additions are skipped.
    const ON: bool;
}

/// `Biases<true>`: biases present ([`WithBias`]); `Biases<false>`: none ([`NoBias`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct Biases<const ON: bool>;

impl<const ON: bool> BiasKind for Biases<ON> {
    const ON: bool = ON;
}

/// Blocks with biases (the default).
pub type WithBias = Biases<true>;
/// Blocks without biases.
pub type NoBias = Biases<false>;

/// How a bias tensor is initialised: with `init` when `Bias::ON`, else as fixed zeros outside
/// training and checkpoints.
pub(crate) fn bias_options<Bias: BiasKind, S: ConstShape, E: Dtype, Dev: Device<E>>(
    init: TensorOptions<S, E, Dev>,
) -> TensorOptions<S, E, Dev> {
    if Bias::ON {
        init
    } else {
        TensorOptions::detached(|t| t.try_fill_with_zeros())
    }
}
