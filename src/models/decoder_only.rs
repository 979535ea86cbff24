//! Decoder-only language models: token embeddings, positions, `L` causal blocks over one token
//! stream, a final norm and logits. GPT and Llama are the same pipeline with other parts.

use super::summary::stack_layers;
use super::{Generator, Layer, LayoutFlags};
use crate::error::{Error, Result};
use crate::nn::training_tape;
use crate::nn::{
    dropout_when_training, CausalBlock, EncoderLayer, FinalNorm, LlamaBlock, MaskSpec, OutputNorm, PositionScheme,
    PositionalEncoding, RmsNorm, RotaryPositions, TokenEmbedding,
};
use crate::shape::{Logits, Tokens, TrainLogits};
use crate::FloatDtype;
use dfdx::nn::tensor_collection::TensorCollection;
use dfdx::prelude::*;

/// A decoder-only language model made of named parts: token embeddings of `V` tokens and width
/// `D`, the position scheme `Pos`, `L` blocks of kind `Block`, the final norm `Norm`, and an
/// output projection whose layout `O` says whether it is the embedding, transposed.
///
/// GPT-2 is [`DecoderOnly`] (absolute positions, [`EncoderLayer`] blocks under a causal mask,
/// layer norm); Llama is [`Llama`] (rotary positions, [`LlamaBlock`]s, RMSNorm). Code generic
/// over "any decoder-only model" names the part traits, or simply
/// [`LanguageModel`](super::LanguageModel).
///
/// The compiler checks that the parts fit: a block of another width, or a Llama block under
/// learned positions, is a type error ([`CausalBlock`] is not implemented).
///
/// **PyTorch equivalent**: Hugging Face's `GPT2LMHeadModel` and `LlamaForCausalLM`.
#[derive(Debug, Clone, crate::Model)]
#[model(parts = "Pos, Block, Norm", bound = "O: LayoutFlags")]
pub struct CausalLm<const V: usize, const D: usize, const L: usize, Pos, Block, Norm, O, E: Dtype, Dev: Storage<E>> {
    /// Token embedding (not scaled, as in GPT-2 and Llama); also the output projection when tied.
    pub embed: TokenEmbedding<V, D, E, Dev>,
    /// Positions.
    pub pos: Pos,
    /// The causal blocks, `blocks.0` .. `blocks.{L-1}`.
    pub blocks: Repeated<Block, L>,
    /// Final norm.
    pub norm: Norm,
    /// Output projection, unless tied.
    pub head: Generator<D, V, O, E, Dev>,
    /// Dropout on the embeddings (plus positions) when training.
    #[model(scalar, default = 0.1)]
    pub dropout: f64,
}

/// A GPT-style language model: token and position embeddings, `L` causal blocks (self-attention
/// and feed-forward, each residual), a final norm, and logits over the `V` tokens.
///
/// GPT-2 is `PreNorm`, `GeluTanh`, `Learned` positions and a `TiedOutput`. The blocks are
/// [`EncoderLayer`]s run under a causal mask: a decoder without cross-attention.
///
/// # Generics
/// - `V`: vocabulary; `D`: width; `H` heads of width `HD`; `F`: feed-forward width.
/// - `L`: blocks; `P`: context length (positions).
/// - `N`: norm placement; `A`: activation; `K`: positions; `O`: [`TiedOutput`](super::TiedOutput) or [`UntiedOutput`](super::UntiedOutput).
///
/// ```
/// use typeformer::prelude::*;
/// type Tiny = DecoderOnly<20, 16, 2, 8, 32, 2, 12, PreNorm, GeluTanh, Learned, TiedOutput, f32, Cpu>;
/// let dev = Cpu::seed_from_u64(0);
/// let model = dev.build_module::<Tiny, f32>();
/// let tokens = Tokens::<20>::from_sequences(&[vec![3, 4, 5], vec![6]]).unwrap();
/// assert_eq!(model.forward(&tokens).unwrap().shape(), &(2, 3, Const::<20>));
/// assert_eq!(Tiny::NUM_PARAMS, model.num_trainable_params());
/// ```
pub type DecoderOnly<
    const V: usize,
    const D: usize,
    const H: usize,
    const HD: usize,
    const F: usize,
    const L: usize,
    const P: usize,
    N,
    A,
    K,
    O,
    E,
    Dev,
> = CausalLm<
    V,
    D,
    L,
    PositionalEncoding<P, D, K, E, Dev>,
    EncoderLayer<D, H, HD, F, N, A, E, Dev>,
    FinalNorm<D, N, E, Dev>,
    O,
    E,
    Dev,
>;

/// A Llama-style language model: `L` [`LlamaBlock`]s (RMSNorm, grouped-query attention with `H`
/// query and `KVH` key/value heads of width `HD` and rotary positions of base `BASE` over a
/// context of `P`, SwiGLU of hidden width `F`), a final RMSNorm, and logits over `V` tokens.
/// `O` is [`TiedOutput`](super::TiedOutput) (SmolLM2, Llama 3.2 1B) or
/// [`UntiedOutputNoBias`](super::UntiedOutputNoBias) (Llama 2). Embedding dropout is the
/// pipeline's `dropout` scalar: 0.1 after `build_module`, 0 in presets declared with
/// `transformer!` (Llama trains without); it acts only in training passes.
///
/// ```
/// use typeformer::prelude::*;
/// use typeformer::models::Llama;
/// type Tiny = Llama<40, 16, 4, 2, 4, 48, 2, 32, 10_000, TiedOutput, f32, Cpu>;
/// let dev = Cpu::seed_from_u64(0);
/// let model = dev.build_module::<Tiny, f32>();
/// let tokens = Tokens::<40>::from_sequences(&[vec![3, 4, 5], vec![6]]).unwrap();
/// assert_eq!(model.forward(&tokens).unwrap().shape(), &(2, 3, Const::<40>));
/// assert_eq!(Tiny::NUM_PARAMS, model.num_trainable_params());
/// ```
pub type Llama<
    const V: usize,
    const D: usize,
    const H: usize,
    const KVH: usize,
    const HD: usize,
    const F: usize,
    const L: usize,
    const P: usize,
    const BASE: usize,
    O,
    E,
    Dev,
> = CausalLm<
    V,
    D,
    L,
    RotaryPositions<P, HD, BASE, E, Dev>,
    LlamaBlock<D, H, KVH, HD, F, E, Dev>,
    RmsNorm<D, E, Dev>,
    O,
    E,
    Dev,
>;

/// A [`Llama`] model type, for code generic over any of them (the loaders: a function of
/// `M: LlamaModel<E, Dev>` rather than of twelve parameters): its hyperparameters as numbers,
/// which a loader checks a file's against.
///
/// ```
/// use typeformer::prelude::*;
/// use typeformer::models::{LlamaModel, SmolLm2_135M};
/// fn describe<M: LlamaModel<f32, Cpu>>() -> String {
///     format!("{} layers, {} of {} heads share keys", M::LAYERS, M::HEADS / M::KV_HEADS, M::HEADS)
/// }
/// assert_eq!(describe::<SmolLm2_135M>(), "30 layers, 3 of 9 heads share keys");
/// ```
pub trait LlamaModel<E: FloatDtype, Dev: Device<E>>: TensorCollection<E, Dev> + Clone {
    /// Vocabulary size.
    const VOCAB: usize;
    /// Model width.
    const WIDTH: usize;
    /// Query heads.
    const HEADS: usize;
    /// Key/value heads (grouped-query attention).
    const KV_HEADS: usize;
    /// Width of one head.
    const HEAD_WIDTH: usize;
    /// Hidden width of the SwiGLU feed-forward.
    const FEED_FORWARD: usize;
    /// Blocks.
    const LAYERS: usize;
    /// Longest sequence (the rotary tables' length).
    const CONTEXT: usize;
    /// Angle base of the rotary positions.
    const ROPE_BASE: usize;
    /// Whether the output projection is the embedding, transposed.
    const TIED: bool;
}

impl<
        const V: usize,
        const D: usize,
        const H: usize,
        const KVH: usize,
        const HD: usize,
        const F: usize,
        const L: usize,
        const P: usize,
        const BASE: usize,
        O: LayoutFlags,
        E: FloatDtype,
        Dev: Device<E>,
    > LlamaModel<E, Dev> for Llama<V, D, H, KVH, HD, F, L, P, BASE, O, E, Dev>
where
    Self: TensorCollection<E, Dev> + Clone,
{
    const VOCAB: usize = V;
    const WIDTH: usize = D;
    const HEADS: usize = H;
    const KV_HEADS: usize = KVH;
    const HEAD_WIDTH: usize = HD;
    const FEED_FORWARD: usize = F;
    const LAYERS: usize = L;
    const CONTEXT: usize = P;
    const ROPE_BASE: usize = BASE;
    const TIED: bool = O::TIED;
}

/// What a language model with `L` blocks keeps between generation steps: each block's cache
/// `C` (keys and values, typed with the block's width and heads). A state of another model's
/// width, heads or depth is another type.
#[derive(Debug, Clone)]
pub struct LmState<C, const L: usize> {
    /// One cache per block.
    pub layers: [Option<C>; L],
    /// Positions processed so far.
    pub position: usize,
    /// Each row's left padding, the positions its queries never see (empty: none), for prompts
    /// of different lengths generated together; see [`CausalLm::start_padded`].
    pub left_padding: Vec<usize>,
}

impl<const V: usize, const D: usize, const L: usize, Pos, Block, Norm, O, E, Dev>
    CausalLm<V, D, L, Pos, Block, Norm, O, E, Dev>
where
    Pos: PositionScheme<D, E, Dev>,
    Block: CausalBlock<D, Pos, E, Dev>,
    Norm: OutputNorm<D, E, Dev>,
    O: LayoutFlags,
    E: FloatDtype,
    Dev: Device<E>,
{
    /// Trainable parameters, computed from the type alone.
    pub const NUM_PARAMS: usize = {
        let head = if O::TIED { 0 } else { D * V + if O::HEAD_BIAS { V } else { 0 } };
        V * D + Pos::NUM_PARAMS + L * Block::NUM_PARAMS + Norm::NUM_PARAMS + head
    };

    /// The layers in forward order, with output shapes, for [`Summary`](super::Summary).
    pub fn layers() -> Vec<Layer> {
        let hidden = format!("(B, S, {D})");
        let mut out = vec![
            Layer::new("embed", format!("TokenEmbedding({V}, {D})"), &hidden),
            Layer::new("pos", Pos::describe(), &hidden),
        ];
        out.extend(stack_layers("blocks", L, None, &Block::describe(), &hidden, None));
        if let Some(norm) = Norm::describe() {
            out.push(Layer::new("norm", norm, &hidden));
        }
        let head = match (O::TIED, O::HEAD_BIAS) {
            (true, _) => "Linear(tied to embed)".into(),
            (false, true) => format!("Linear({D}, {V})"),
            (false, false) => format!("Linear({D}, {V}, no bias)"),
        };
        out.push(Layer::new("head", head, format!("(B, S, {V})")));
        out
    }

    /// Causal pass with tape `tape`: logits `(B, S, V)`; position `i` sees tokens `0..=i` of
    /// its own sequence (padding on the right is never attended to).
    pub fn forward_with_tape<T: Tape<E, Dev>>(
        &self,
        tokens: &Tokens<V>,
        tape: T,
    ) -> Result<Logits<usize, usize, V, E, Dev, T>> {
        let ids = tokens.to_tensor(self.embed.weight.device()).put_tape(tape);
        let mut x = dropout_when_training(self.pos.embed(self.embed.lookup(ids), 0)?, self.dropout);
        let mask = MaskSpec::causal(Some(tokens.lengths()));
        for block in &self.blocks.modules {
            x = block.forward(x, &self.pos, &mask)?;
        }
        Ok(self.head.logits(self.norm.normalize(x), &self.embed))
    }

    /// Inference pass: logits `(B, S, V)`.
    pub fn forward(&self, tokens: &Tokens<V>) -> Result<Logits<usize, usize, V, E, Dev>> {
        self.forward_with_tape(tokens, NoneTape)
    }

    /// Training pass recording into `grads` (from `model.alloc_grads()`); dropout on.
    pub fn forward_traced(&self, tokens: &Tokens<V>, grads: Gradients<E, Dev>) -> Result<TrainLogits<V, E, Dev>> {
        self.forward_with_tape(tokens, training_tape(self.embed.weight.device(), grads))
    }

    /// An empty generation state.
    pub fn start(&self) -> LmState<Block::Cache, L> {
        LmState { layers: std::array::from_fn(|_| None), position: 0, left_padding: Vec::new() }
    }

    /// An empty generation state for a batch whose row `b` starts with `left_padding[b]`
    /// padding positions (prompts of different lengths, aligned on the right so that every row
    /// has its next token at the same position): those positions are masked out of every
    /// query's keys. Each row then computes what it computes alone, as long as attention depends
    /// on relative positions only ([`CausalBlock::LEFT_PADDING`]: rotary positions); a model
    /// with absolute position embeddings refuses a padded row.
    pub fn start_padded(&self, left_padding: Vec<usize>) -> Result<LmState<Block::Cache, L>> {
        if !Block::LEFT_PADDING && left_padding.iter().any(|&p| p > 0) {
            return Err(Error::InvalidConfig(format!(
                "this model's position embeddings are absolute ({}), so rows of different lengths cannot \
                 be left-padded into one batch: generate prompts of equal length together, or one at a time",
                Pos::describe()
            )));
        }
        Ok(LmState { left_padding, ..self.start() })
    }

    /// Feeds the next tokens `(B, Snew)` (a prompt, then one token per step) and returns their
    /// logits `(B, Snew, V)`, reusing the keys and values of earlier positions. Sequences must
    /// be unpadded on the right: every row of `tokens` is full (rows padded on the left are
    /// declared by [`Self::start_padded`]).
    pub fn step(
        &self,
        state: &mut LmState<Block::Cache, L>,
        tokens: &Tokens<V>,
    ) -> Result<Logits<usize, usize, V, E, Dev>> {
        if !tokens.is_full() {
            return Err(Error::InvalidConfig(
                "incremental steps take unpadded tokens: every sequence needs the same length".into(),
            ));
        }
        let starts = (!state.left_padding.is_empty()).then_some(state.left_padding.as_slice());
        if let Some(starts) = starts {
            if starts.len() != tokens.batch() {
                return Err(Error::DimMismatch {
                    what: "rows of the tokens vs the left paddings the state was started with",
                    expected: starts.len(),
                    found: tokens.batch(),
                });
            }
        }
        let ids = tokens.to_tensor(self.embed.weight.device());
        let mut x = self.pos.embed(self.embed.lookup(ids), state.position)?;
        for (block, cache) in self.blocks.modules.iter().zip(&mut state.layers) {
            x = block.forward_cached(x, &self.pos, cache, starts)?;
        }
        state.position += tokens.seq_len();
        Ok(self.head.logits(self.norm.normalize(x), &self.embed))
    }
}
