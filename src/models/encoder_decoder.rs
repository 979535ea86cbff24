//! The encoder-decoder Transformer of "Attention Is All You Need" (arXiv 1706.03762, figure 1).

use super::summary::{block_kind, stack_layers};
use super::Layer;
use super::{EmbeddingLayout, Generator, TargetEmbedding};
use crate::error::{Error, Result};
use crate::nn::training_tape;
use crate::nn::{
    dropout_when_training, layer_params, norm_params, Activation, BiasKind, Decoder, DecoderLayerCache, DecoderMasks,
    Encoder, LayerAttention, MaskSpec, NormPlacement, PositionKind, PositionalEncoding, TokenEmbedding,
};
use crate::shape::{Hidden, Logits, Tokens, TrainLogits};
use crate::FloatDtype;
use dfdx::prelude::*;

/// The full Transformer: embeddings and positions, an `LE`-layer encoder, an `LD`-layer decoder
/// with cross-attention, and the output projection to `TV` target-token logits.
///
/// **PyTorch equivalent**: `torch.nn.Transformer(D, H, LE, LD, F, batch_first=True)` plus the
/// embeddings, positional encodings and generator that the paper wraps around it.
///
/// # Generics
/// - `SV`, `TV`: source and target vocabulary sizes.
/// - `D`: model width; `H` heads of width `HD`; `F`: feed-forward width.
/// - `LE`, `LD`: encoder and decoder layers.
/// - `P`: longest sequence (positional table rows).
/// - `N`: [`PostNorm`](crate::nn::PostNorm) (the paper) or [`PreNorm`](crate::nn::PreNorm).
/// - `A`: feed-forward activation; `K`: [`Sinusoidal`](crate::nn::Sinusoidal) or [`Learned`](crate::nn::Learned) positions.
/// - `L`: [`SharedTied`](super::SharedTied) (the paper; needs `SV == TV`), [`SeparateTied`](super::SeparateTied) or [`Separate`](super::Separate).
///
/// ```
/// use typeformer::prelude::*;
/// type Tiny = EncoderDecoder<12, 12, 16, 2, 8, 32, 1, 1, 20, PostNorm, Relu, Sinusoidal, SharedTied, f32, Cpu>;
/// let dev = Cpu::seed_from_u64(0);
/// let model = dev.build_module::<Tiny, f32>();
/// let src = Tokens::<12>::from_sequences(&[vec![3, 4, 5], vec![6]]).unwrap();
/// let tgt = Tokens::<12>::from_sequences(&[vec![1, 5, 4], vec![1, 6]]).unwrap();
/// let logits = model.forward(&src, &tgt).unwrap();
/// assert_eq!(logits.shape(), &(2, 3, Const::<12>));
/// assert_eq!(Tiny::NUM_PARAMS, model.num_trainable_params());
/// ```
#[derive(Debug, Clone, crate::Model)]
#[model(bound = "A: Activation, K: PositionKind")]
pub struct EncoderDecoder<
    const SV: usize,
    const TV: usize,
    const D: usize,
    const H: usize,
    const HD: usize,
    const F: usize,
    const LE: usize,
    const LD: usize,
    const P: usize,
    N: NormPlacement,
    A,
    K,
    L,
    E: Dtype,
    Dev: Storage<E>,
> where
    L: EmbeddingLayout<SV, TV, D>,
{
    /// Source token embedding (also the target one and the output projection under `SharedTied`).
    pub src_embed: TokenEmbedding<SV, D, E, Dev>,
    /// Target token embedding, unless shared.
    pub tgt_embed: TargetEmbedding<TV, D, L, E, Dev>,
    /// Source positions.
    pub src_pos: PositionalEncoding<P, D, K, E, Dev>,
    /// Target positions.
    pub tgt_pos: PositionalEncoding<P, D, K, E, Dev>,
    /// The encoder stack.
    pub encoder: Encoder<D, H, HD, F, LE, N, A, E, Dev>,
    /// The decoder stack; its width is the encoder's by construction.
    pub decoder: Decoder<D, H, HD, F, LD, N, A, E, Dev>,
    /// Output projection, unless tied.
    pub generator: Generator<D, TV, L, E, Dev>,
    /// Dropout on embeddings plus positions when training (0.1 in the paper).
    #[model(scalar, default = 0.1)]
    pub dropout: f64,
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
    > EncoderDecoder<SV, TV, D, H, HD, F, LE, LD, P, N, A, K, L, E, Dev>
where
    N: NormPlacement,
    A: Activation,
    K: PositionKind,
    L: EmbeddingLayout<SV, TV, D>,
    E: FloatDtype,
    Dev: Device<E>,
{
    /// Trainable parameters, computed from the type alone (no weights are allocated).
    pub const NUM_PARAMS: usize = {
        // Q, K, V projections with biases, then the output projection with its bias.
        let bias = <N::Bias as BiasKind>::ON;
        let final_norm = if N::FINAL_NORM { norm_params(D, bias) } else { 0 };
        let encoder = LE * layer_params(D, H, HD, F, 1, 2, bias) + final_norm;
        let decoder = LD * layer_params(D, H, HD, F, 2, 3, bias) + final_norm;
        let embeddings = SV * D
            + if L::SHARED { 0 } else { TV * D }
            + if L::TIED { 0 } else { D * TV + if L::HEAD_BIAS { TV } else { 0 } };
        let positions = if K::LEARNED { 2 * P * D } else { 0 };
        encoder + decoder + embeddings + positions
    };

    /// The layers in forward order, with output shapes, for [`Summary`](super::Summary).
    pub fn layers() -> Vec<Layer> {
        let (src, tgt) = (format!("(B, S_src, {D})"), format!("(B, S_tgt, {D})"));
        let mut out = vec![
            Layer::new("src_embed", format!("TokenEmbedding({SV}, {D})"), &src),
            Layer::new("src_pos", format!("{} positions({P})", K::NAME), &src),
        ];
        let block = block_kind("EncoderLayer", H, HD, F, A::NAME, N::NAME);
        out.extend(stack_layers("encoder.layers", LE, N::FINAL_NORM.then_some("encoder.norm"), &block, &src, None));
        let memory = out.last().map(|l| l.path.clone()).unwrap_or_default();
        let tgt_embed = if L::SHARED {
            "TokenEmbedding(shared with src_embed)".into()
        } else {
            format!("TokenEmbedding({TV}, {D})")
        };
        out.push(Layer::new("tgt_embed", tgt_embed, &tgt).reading(&["input"]));
        out.push(Layer::new("tgt_pos", format!("{} positions({P})", K::NAME), &tgt));
        let block = block_kind("DecoderLayer", H, HD, F, A::NAME, N::NAME);
        let mut decoder =
            stack_layers("decoder.layers", LD, N::FINAL_NORM.then_some("decoder.norm"), &block, &tgt, Some(&memory));
        if let Some(first) = decoder.first_mut() {
            first.inputs[0] = "tgt_pos".into();
        }
        out.extend(decoder);
        let generator =
            if L::TIED { "Linear(tied to the target embedding)".into() } else { format!("Linear({D}, {TV})") };
        out.push(Layer::new("generator", generator, format!("(B, S_tgt, {TV})")));
        out
    }

    /// The table that embeds target tokens (the source one when shared).
    pub fn target_embedding(&self) -> &TokenEmbedding<TV, D, E, Dev> {
        L::target(&self.src_embed, &self.tgt_embed)
    }

    /// Runs the encoder over `src`: `(B, Ss, D)`. The tape travels on the result.
    pub fn encode<T: Tape<E, Dev>>(&self, src: &Tokens<SV>, tape: T) -> Result<Hidden<usize, usize, D, E, Dev, T>> {
        self.encode_recording(src, tape, None)
    }

    fn encode_recording<T: Tape<E, Dev>>(
        &self,
        src: &Tokens<SV>,
        tape: T,
        record: Option<&mut Vec<LayerAttention>>,
    ) -> Result<Hidden<usize, usize, D, E, Dev, T>> {
        let ids = src.to_tensor(self.src_embed.weight.device()).put_tape(tape);
        let x = self.src_pos.forward(self.src_embed.forward(ids), 0)?;
        let x = dropout_when_training(x, self.dropout);
        self.encoder.forward_recording(x, &MaskSpec::padding(src.lengths()), record)
    }

    /// Runs the decoder over `tgt` given the encoder's `memory` for a source batch whose valid
    /// lengths are `src_lengths`, and projects to logits `(B, St, TV)`.
    pub fn decode<T: Tape<E, Dev>>(
        &self,
        memory: &Hidden<usize, usize, D, E, Dev>,
        src_lengths: &[usize],
        tgt: &Tokens<TV>,
        tape: T,
    ) -> Result<Logits<usize, usize, TV, E, Dev, T>> {
        self.decode_recording(memory, src_lengths, tgt, tape, None)
    }

    /// The attention weights of every layer in a teacher-forced inference pass over `src` and
    /// `tgt` (the decoder's inputs): what each head of the encoder's self-attention, the
    /// decoder's masked self-attention and its cross-attention over the source looks at.
    pub fn attention(&self, src: &Tokens<SV>, tgt: &Tokens<TV>) -> Result<Seq2SeqAttention> {
        check_batches(src, tgt)?;
        let mut maps = Seq2SeqAttention::default();
        let memory = self.encode_recording(src, NoneTape, Some(&mut maps.encoder))?;
        self.decode_recording(&memory, src.lengths(), tgt, NoneTape, Some(&mut maps.decoder))?;
        Ok(maps)
    }

    fn decode_recording<T: Tape<E, Dev>>(
        &self,
        memory: &Hidden<usize, usize, D, E, Dev>,
        src_lengths: &[usize],
        tgt: &Tokens<TV>,
        tape: T,
        record: Option<&mut Vec<LayerAttention>>,
    ) -> Result<Logits<usize, usize, TV, E, Dev, T>> {
        if tgt.batch() != memory.shape().0 {
            return Err(Error::DimMismatch {
                what: "target batch size vs source batch size",
                expected: memory.shape().0,
                found: tgt.batch(),
            });
        }
        let embed = self.target_embedding();
        let ids = tgt.to_tensor(embed.weight.device()).put_tape(tape);
        let y = self.tgt_pos.forward(embed.forward(ids), 0)?;
        let masks = DecoderMasks {
            self_mask: MaskSpec::causal(Some(tgt.lengths())),
            memory_mask: MaskSpec::padding(src_lengths),
        };
        let y = self.decoder.forward_recording(dropout_when_training(y, self.dropout), memory, &masks, record)?;
        Ok(self.generator.logits(y, embed))
    }

    /// The state for incremental decoding over an encoded source batch: the memory's keys and
    /// values are projected once per layer here.
    pub fn start_decoding(
        &self,
        memory: &Hidden<usize, usize, D, E, Dev>,
        src_lengths: &[usize],
    ) -> Result<DecodeState<D, H, HD, LD, E, Dev>> {
        if src_lengths.len() != memory.shape().0 {
            return Err(Error::DimMismatch {
                what: "source lengths (one per batch item)",
                expected: memory.shape().0,
                found: src_lengths.len(),
            });
        }
        let layers = std::array::from_fn(|i| self.decoder.layers.modules[i].start_cache(memory));
        Ok(DecodeState { layers, src_lengths: src_lengths.to_vec(), position: 0 })
    }

    /// Feeds the next target tokens `tgt: (B, Snew)` (usually one per sequence) and returns their
    /// logits `(B, Snew, TV)`, reusing the keys and values of every earlier position. The logits
    /// equal those of [`Self::decode`] over the whole prefix at the same positions.
    pub fn decode_step(
        &self,
        state: &mut DecodeState<D, H, HD, LD, E, Dev>,
        tgt: &Tokens<TV>,
    ) -> Result<Logits<usize, usize, TV, E, Dev>> {
        if !tgt.is_full() {
            // Padding would enter the cache as if it were target tokens.
            return Err(Error::InvalidConfig(
                "incremental decoding steps take unpadded target tokens: every sequence needs the same length".into(),
            ));
        }
        if tgt.batch() != state.src_lengths.len() {
            return Err(Error::DimMismatch {
                what: "target batch size vs source batch size",
                expected: state.src_lengths.len(),
                found: tgt.batch(),
            });
        }
        let embed = self.target_embedding();
        let mut y = self.tgt_pos.forward(embed.forward(tgt.to_tensor(embed.weight.device())), state.position)?;
        for (layer, cache) in self.decoder.layers.modules.iter().zip(&mut state.layers) {
            y = layer.forward_cached(y, cache, &state.src_lengths)?;
        }
        state.position += tgt.seq_len();
        Ok(self.generator.logits(self.decoder.norm.forward(y), embed))
    }

    /// Teacher-forced pass with the tape `tape`: logits `(B, St, TV)` for every target position.
    pub fn forward_with_tape<T: Tape<E, Dev>>(
        &self,
        src: &Tokens<SV>,
        tgt: &Tokens<TV>,
        tape: T,
    ) -> Result<Logits<usize, usize, TV, E, Dev, T>> {
        check_batches(src, tgt)?;
        let memory = self.encode(src, tape)?;
        let (memory, tape) = memory.split_tape();
        self.decode(&memory, src.lengths(), tgt, tape)
    }

    /// Inference pass (no tape, dropout off): logits `(B, St, TV)`.
    pub fn forward(&self, src: &Tokens<SV>, tgt: &Tokens<TV>) -> Result<Logits<usize, usize, TV, E, Dev>> {
        self.forward_with_tape(src, tgt, NoneTape)
    }

    /// Training pass: records the graph into `grads` (from `model.alloc_grads()`); dropout on.
    pub fn forward_traced(
        &self,
        src: &Tokens<SV>,
        tgt: &Tokens<TV>,
        grads: Gradients<E, Dev>,
    ) -> Result<TrainLogits<TV, E, Dev>> {
        self.forward_with_tape(src, tgt, training_tape(self.src_embed.weight.device(), grads))
    }
}

/// Sources and targets come in batches of the same size.
fn check_batches<const SV: usize, const TV: usize>(src: &Tokens<SV>, tgt: &Tokens<TV>) -> Result<()> {
    if src.batch() != tgt.batch() {
        return Err(Error::DimMismatch {
            what: "target batch size vs source batch size",
            expected: src.batch(),
            found: tgt.batch(),
        });
    }
    Ok(())
}

/// The attention weights of an encoder-decoder pass, per layer in order (see
/// [`EncoderDecoder::attention`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seq2SeqAttention {
    /// The encoder layers' self-attention, `(B, H, Ss, Ss)` each.
    pub encoder: Vec<LayerAttention>,
    /// The decoder layers' masked self-attention `(B, H, St, St)` and cross-attention
    /// `(B, H, St, Ss)`.
    pub decoder: Vec<LayerAttention>,
}

/// What incremental decoding keeps between steps: per decoder layer, the target keys and values
/// so far and the projected encoder memory. It carries the width `D` and the `L` decoder layers
/// of the model that started it, so another model's `decode_step` does not accept it.
#[derive(Debug, Clone)]
pub struct DecodeState<const D: usize, const H: usize, const HD: usize, const L: usize, E: Dtype, Dev: Storage<E>> {
    /// One cache per decoder layer.
    pub layers: [DecoderLayerCache<D, H, HD, E, Dev>; L],
    /// Valid length of each source.
    pub src_lengths: Vec<usize>,
    /// Target positions decoded so far.
    pub position: usize,
}
