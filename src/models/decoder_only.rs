//! Decoder-only language models (GPT): causal self-attention blocks over one token stream.

use super::summary::{block_kind, stack_layers};
use super::{Generator, Layer, LayoutFlags};
use crate::error::{Error, Result};
use crate::nn::training_tape;
use crate::nn::{
    dropout_when_training, layer_params, norm_params, Activation, BiasKind, EncoderLayer, FinalNorm, KvCache, MaskSpec,
    NormPlacement, PositionKind, PositionalEncoding, TokenEmbedding,
};
use crate::shape::{Logits, Tokens, TrainLogits};
use crate::FloatDtype;
use dfdx::prelude::*;

/// A GPT-style language model: token and position embeddings, `L` causal blocks (self-attention
/// and feed-forward, each residual), a final norm, and logits over the `V` tokens.
///
/// GPT-2 is `PreNorm`, `GeluTanh`, `Learned` positions and a `TiedOutput`. The blocks are
/// [`EncoderLayer`]s run under a causal mask: a decoder without cross-attention.
///
/// **PyTorch equivalent**: Hugging Face's `GPT2LMHeadModel` (without dropout differences).
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
#[derive(Debug, Clone, crate::Model)]
#[model(bound = "A: Activation, K: PositionKind, O: LayoutFlags")]
pub struct DecoderOnly<
    const V: usize,
    const D: usize,
    const H: usize,
    const HD: usize,
    const F: usize,
    const L: usize,
    const P: usize,
    N: NormPlacement,
    A,
    K,
    O,
    E: Dtype,
    Dev: Storage<E>,
> {
    /// Token embedding (not scaled, as in GPT-2); also the output projection when tied.
    pub embed: TokenEmbedding<V, D, E, Dev>,
    /// Positions.
    pub pos: PositionalEncoding<P, D, K, E, Dev>,
    /// The causal blocks, `blocks.0` .. `blocks.{L-1}`.
    pub blocks: Repeated<EncoderLayer<D, H, HD, F, N, A, E, Dev>, L>,
    /// Final norm (present when `N::FINAL_NORM`).
    pub norm: FinalNorm<D, N, E, Dev>,
    /// Output projection, unless tied.
    pub head: Generator<D, V, O, E, Dev>,
    /// Dropout on embeddings plus positions when training.
    #[model(scalar, default = 0.1)]
    pub dropout: f64,
}

/// What a language model of width `D` with `L` blocks keeps between generation steps: each
/// block's keys and values. A state of another width or depth is another type.
#[derive(Debug, Clone)]
pub struct LmState<const D: usize, const H: usize, const HD: usize, const L: usize, E: Dtype, Dev: Storage<E>> {
    /// One cache per block.
    pub layers: [Option<KvCache<D, H, HD, E, Dev>>; L],
    /// Positions processed so far.
    pub position: usize,
}

impl<
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
    > DecoderOnly<V, D, H, HD, F, L, P, N, A, K, O, E, Dev>
where
    N: NormPlacement,
    A: Activation,
    K: PositionKind,
    O: LayoutFlags,
    E: FloatDtype,
    Dev: Device<E>,
{
    /// Trainable parameters, computed from the type alone.
    pub const NUM_PARAMS: usize = {
        let bias = <N::Bias as BiasKind>::ON;
        let block = layer_params(D, H, HD, F, 1, 2, bias);
        let final_norm = if N::FINAL_NORM { norm_params(D, bias) } else { 0 };
        let positions = if K::LEARNED { P * D } else { 0 };
        let head = if O::TIED { 0 } else { D * V + if O::HEAD_BIAS { V } else { 0 } };
        V * D + positions + L * block + final_norm + head
    };

    /// The layers in forward order, with output shapes, for [`Summary`](super::Summary).
    pub fn layers() -> Vec<Layer> {
        let hidden = format!("(B, S, {D})");
        let mut out = vec![
            Layer::new("embed", format!("TokenEmbedding({V}, {D})"), &hidden),
            Layer::new("pos", format!("{} positions({P})", K::NAME), &hidden),
        ];
        let block = block_kind("CausalBlock", H, HD, F, A::NAME, N::NAME);
        out.extend(stack_layers("blocks", L, None, &block, &hidden, None));
        if N::FINAL_NORM {
            out.push(Layer::new("norm", "LayerNorm", &hidden));
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
        let mut x = dropout_when_training(self.pos.forward(self.embed.lookup(ids), 0)?, self.dropout);
        let mask = MaskSpec::causal(Some(tokens.lengths()));
        for block in &self.blocks.modules {
            x = block.forward(x, &mask)?;
        }
        Ok(self.head.logits(self.norm.forward(x), &self.embed))
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
    pub fn start(&self) -> LmState<D, H, HD, L, E, Dev> {
        LmState { layers: std::array::from_fn(|_| None), position: 0 }
    }

    /// Feeds the next tokens `(B, Snew)` (a prompt, then one token per step) and returns their
    /// logits `(B, Snew, V)`, reusing the keys and values of earlier positions. Sequences must
    /// be unpadded: every row of `tokens` is full.
    pub fn step(
        &self,
        state: &mut LmState<D, H, HD, L, E, Dev>,
        tokens: &Tokens<V>,
    ) -> Result<Logits<usize, usize, V, E, Dev>> {
        if !tokens.is_full() {
            return Err(Error::InvalidConfig(
                "incremental steps take unpadded tokens: every sequence needs the same length".into(),
            ));
        }
        let ids = tokens.to_tensor(self.embed.weight.device());
        let mut x = self.pos.forward(self.embed.lookup(ids), state.position)?;
        for (block, cache) in self.blocks.modules.iter().zip(&mut state.layers) {
            x = block.forward_cached(x, cache)?;
        }
        state.position += tokens.seq_len();
        Ok(self.head.logits(self.norm.forward(x), &self.embed))
    }
}
