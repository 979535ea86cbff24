//! What training and generation need from a language model.

use super::{CausalLm, LayoutFlags, LmState};
use crate::error::Result;
use crate::nn::{CausalBlock, OutputNorm, PositionScheme};
use crate::shape::{Logits, Tokens, TrainLogits};
use crate::FloatDtype;
use dfdx::prelude::*;

/// A causal model over a vocabulary of `V` tokens with a context of `CONTEXT` positions.
pub trait LanguageModel<const V: usize, E: FloatDtype, Dev: Device<E>>: TensorCollection<E, Dev> + Clone {
    /// What generation keeps between steps.
    type State;
    /// Model width (the warmup schedule scales with it).
    const D_MODEL: usize;
    /// Longest sequence.
    const CONTEXT: usize;
    /// Bytes a training step keeps per token, roughly (see
    /// [`training_bytes_per_token`](crate::memory::training_bytes_per_token)).
    const TRAIN_BYTES_PER_TOKEN: u64;
    /// Logits `(B, S, V)` for every position.
    fn logits(&self, tokens: &Tokens<V>) -> Result<Logits<usize, usize, V, E, Dev>>;
    /// A training pass that records into `grads`.
    fn logits_train(&self, tokens: &Tokens<V>, grads: Gradients<E, Dev>) -> Result<TrainLogits<V, E, Dev>>;
    /// An empty generation state.
    fn start(&self) -> Self::State;
    /// An empty generation state for a batch of rows left-padded by `left_padding` positions
    /// each (see [`CausalLm::start_padded`]); an error where the model cannot mask them.
    fn start_padded(&self, left_padding: Vec<usize>) -> Result<Self::State>;
    /// Logits of the next tokens, reusing earlier positions.
    fn step(&self, state: &mut Self::State, tokens: &Tokens<V>) -> Result<Logits<usize, usize, V, E, Dev>>;
}

impl<const V: usize, const D: usize, const L: usize, Pos, Block, Norm, O, E, Dev> LanguageModel<V, E, Dev>
    for CausalLm<V, D, L, Pos, Block, Norm, O, E, Dev>
where
    Pos: PositionScheme<D, E, Dev>,
    Block: CausalBlock<D, Pos, E, Dev>,
    Norm: OutputNorm<D, E, Dev>,
    O: LayoutFlags,
    E: FloatDtype,
    Dev: Device<E>,
{
    type State = LmState<Block::Cache, L>;
    const D_MODEL: usize = D;
    const CONTEXT: usize = Pos::CONTEXT;
    const TRAIN_BYTES_PER_TOKEN: u64 = crate::memory::training_bytes_per_token(
        D,
        Block::FF,
        Block::HEADS,
        L,
        Pos::CONTEXT,
        V,
        std::mem::size_of::<E>(),
    );

    fn logits(&self, tokens: &Tokens<V>) -> Result<Logits<usize, usize, V, E, Dev>> {
        self.forward(tokens)
    }
    fn logits_train(&self, tokens: &Tokens<V>, grads: Gradients<E, Dev>) -> Result<TrainLogits<V, E, Dev>> {
        self.forward_traced(tokens, grads)
    }
    fn start(&self) -> Self::State {
        CausalLm::start(self)
    }
    fn start_padded(&self, left_padding: Vec<usize>) -> Result<Self::State> {
        CausalLm::start_padded(self, left_padding)
    }
    fn step(&self, state: &mut Self::State, tokens: &Tokens<V>) -> Result<Logits<usize, usize, V, E, Dev>> {
        CausalLm::step(self, state, tokens)
    }
}
