//! What training and decoding need from a sequence-to-sequence model.

use super::{DecodeState, EmbeddingLayout, EncoderDecoder, Seq2SeqAttention};
use crate::error::Result;
use crate::nn::{Activation, NormPlacement, PositionKind};
use crate::shape::{Hidden, Logits, Tokens, TrainLogits};
use crate::FloatDtype;
use dfdx::prelude::*;

/// A model that maps source tokens over `SV` to target-token logits over `TV`, with an encoder
/// whose output can be reused across decoding steps.
pub trait Seq2Seq<const SV: usize, const TV: usize, E: FloatDtype, Dev: Device<E>>:
    TensorCollection<E, Dev> + Clone
{
    /// The encoder's output.
    type Memory;
    /// Model width (the warmup schedule scales with it).
    const D_MODEL: usize;
    /// Longest source or target sequence.
    const MAX_LEN: usize;
    /// Bytes a training step keeps per (source or target) token, roughly (see
    /// [`training_bytes_per_token`](crate::memory::training_bytes_per_token)).
    const TRAIN_BYTES_PER_TOKEN: u64;
    /// Encodes a source batch.
    fn encode_source(&self, src: &Tokens<SV>) -> Result<Self::Memory>;
    /// Logits for every target position, given the memory of a source batch.
    fn decode_target(
        &self,
        memory: &Self::Memory,
        src_lengths: &[usize],
        tgt: &Tokens<TV>,
    ) -> Result<Logits<usize, usize, TV, E, Dev>>;
    /// What incremental decoding keeps between steps.
    type State;
    /// Starts incremental decoding over an encoded source batch.
    fn start_decoding(&self, memory: &Self::Memory, src_lengths: &[usize]) -> Result<Self::State>;
    /// Logits `(B, Snew, TV)` of the next target tokens, reusing earlier positions.
    fn decode_step(&self, state: &mut Self::State, tgt: &Tokens<TV>) -> Result<Logits<usize, usize, TV, E, Dev>>;
    /// The attention weights of every layer in a teacher-forced pass over `src` and the
    /// decoder inputs `tgt`.
    fn attention(&self, src: &Tokens<SV>, tgt: &Tokens<TV>) -> Result<Seq2SeqAttention>;
    /// A training pass that records into `grads`.
    fn forward_train(
        &self,
        src: &Tokens<SV>,
        tgt: &Tokens<TV>,
        grads: Gradients<E, Dev>,
    ) -> Result<TrainLogits<TV, E, Dev>>;
}

impl<
        const SV: usize,
        const TV: usize,
        const D: usize,
        const H: usize,
        const HD: usize,
        const F: usize,
        const LE: usize,
        const LD: usize,
        const P: usize,
        N,
        A,
        K,
        L,
        E,
        Dev,
    > Seq2Seq<SV, TV, E, Dev> for EncoderDecoder<SV, TV, D, H, HD, F, LE, LD, P, N, A, K, L, E, Dev>
where
    N: NormPlacement,
    A: Activation,
    K: PositionKind,
    L: EmbeddingLayout<SV, TV, D>,
    E: FloatDtype,
    Dev: Device<E>,
{
    type Memory = Hidden<usize, usize, D, E, Dev>;
    type State = DecodeState<D, H, HD, LD, E, Dev>;
    const D_MODEL: usize = D;
    const MAX_LEN: usize = P;
    // A decoder layer attends twice.
    const TRAIN_BYTES_PER_TOKEN: u64 =
        crate::memory::training_bytes_per_token(D, F, H, LE + 2 * LD, P, TV, std::mem::size_of::<E>());

    fn encode_source(&self, src: &Tokens<SV>) -> Result<Self::Memory> {
        self.encode(src, NoneTape)
    }
    fn decode_target(
        &self,
        memory: &Self::Memory,
        src_lengths: &[usize],
        tgt: &Tokens<TV>,
    ) -> Result<Logits<usize, usize, TV, E, Dev>> {
        self.decode(memory, src_lengths, tgt, NoneTape)
    }
    fn start_decoding(&self, memory: &Self::Memory, src_lengths: &[usize]) -> Result<Self::State> {
        EncoderDecoder::start_decoding(self, memory, src_lengths)
    }
    fn decode_step(&self, state: &mut Self::State, tgt: &Tokens<TV>) -> Result<Logits<usize, usize, TV, E, Dev>> {
        EncoderDecoder::decode_step(self, state, tgt)
    }
    fn attention(&self, src: &Tokens<SV>, tgt: &Tokens<TV>) -> Result<Seq2SeqAttention> {
        EncoderDecoder::attention(self, src, tgt)
    }
    fn forward_train(
        &self,
        src: &Tokens<SV>,
        tgt: &Tokens<TV>,
        grads: Gradients<E, Dev>,
    ) -> Result<TrainLogits<TV, E, Dev>> {
        self.forward_traced(src, tgt, grads)
    }
}
