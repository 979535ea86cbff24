//! Encoder-only models (BERT, Devlin et al. 2018): bidirectional self-attention over one token
//! stream, with token-type (segment) embeddings and a norm on the embeddings.

use super::summary::{block_kind, stack_layers};
use super::Layer;
use crate::error::{Error, Result};
use crate::nn::training_tape;
use crate::nn::{
    dropout_when_training, layer_params, norm_params, Activation, BiasKind, Encoder, LayerNorm, MaskSpec,
    NormPlacement, OptionalLinear, PositionKind, PositionalEncoding, Presence, TokenEmbedding,
};
use crate::shape::{Hidden, Tokens, TrainHidden};
use crate::FloatDtype;
use dfdx::prelude::*;

/// A BERT with its pooler.
#[derive(Debug, Default, Clone, Copy)]
pub struct WithPooler;
/// A BERT without a pooler (`BertForMaskedLM`, `add_pooling_layer=False`).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPooler;

impl Presence for WithPooler {
    const PRESENT: bool = true;
    const BIAS: bool = true;
}
impl Presence for NoPooler {
    const PRESENT: bool = false;
    const BIAS: bool = false;
}

/// BERT's pooler `(D -> D)` when `Pool` has one.
pub type Pooler<const D: usize, Pool, E, Dev> = OptionalLinear<D, D, Pool, E, Dev>;

/// A BERT encoder: token, position and token-type embeddings summed and normalised, `L` post-LN
/// encoder layers under a padding mask, and the pooler (`tanh` of a linear map of the first
/// token) that BERT's next-sentence and classification heads read, unless `Pool` is
/// [`NoPooler`] (as in `BertForMaskedLM` checkpoints).
///
/// all-MiniLM-L6-v2 and bert-base are instances ([`MiniLmL6`](super::MiniLmL6),
/// [`BertBase`](super::BertBase)); weights with Hugging Face's names load with
/// [`load_hf_bert`](crate::io::load_hf_bert).
///
/// **PyTorch equivalent**: Hugging Face's `BertModel` (absolute positions).
///
/// # Generics
/// - `V`: vocabulary; `D`: width; `H` heads of width `HD`; `F`: feed-forward width.
/// - `L`: layers; `P`: positions; `TT`: token types (2 in BERT).
/// - `N`: norm placement ([`PostNorm`](crate::nn::PostNorm) in BERT); `A`: activation
///   ([`Gelu`](crate::nn::Gelu) in BERT); `K`: positions ([`Learned`](crate::nn::Learned) in BERT).
/// - `Pool`: [`WithPooler`] (the default) or [`NoPooler`].
///
/// ```
/// use typeformer::prelude::*;
/// type Tiny = Bert<30, 16, 2, 8, 32, 2, 12, 2, PostNorm, Gelu, Learned, f32, Cpu>;
/// let dev = Cpu::seed_from_u64(0);
/// let model = dev.build_module::<Tiny, f32>();
/// let tokens = Tokens::<30>::from_sequences(&[vec![3, 4, 5], vec![6]]).unwrap();
/// let hidden = model.forward(&tokens, None).unwrap();
/// assert_eq!(hidden.shape(), &(2, 3, Const::<16>));
/// let sentences = mean_pool(&hidden, tokens.lengths()).unwrap();
/// assert_eq!(sentences.shape(), &(2, Const::<16>));
/// assert_eq!(Tiny::NUM_PARAMS, model.num_trainable_params());
/// ```
#[derive(Debug, Clone, crate::Model)]
#[model(bound = "A: Activation, K: PositionKind, Pool: Presence")]
pub struct Bert<
    const V: usize,
    const D: usize,
    const H: usize,
    const HD: usize,
    const F: usize,
    const L: usize,
    const P: usize,
    const TT: usize,
    N: NormPlacement,
    A,
    K,
    E: Dtype,
    Dev: Storage<E>,
    Pool = WithPooler,
> {
    /// Token embedding (not scaled).
    pub embed: TokenEmbedding<V, D, E, Dev>,
    /// Positions (learned in BERT).
    pub pos: PositionalEncoding<P, D, K, E, Dev>,
    /// Token-type (segment) embedding.
    pub token_type: TokenEmbedding<TT, D, E, Dev>,
    /// Norm of the summed embeddings.
    pub embed_norm: LayerNorm<D, E, Dev, N::Bias>,
    /// The encoder layers (post-LN without a final norm in BERT).
    pub encoder: Encoder<D, H, HD, F, L, N, A, E, Dev>,
    /// The pooler: `tanh(W h_0 + b)`, unless `Pool` is [`NoPooler`].
    pub pooler: Pooler<D, Pool, E, Dev>,
    /// Dropout on the normalised embeddings when training.
    #[model(scalar, default = 0.1)]
    pub dropout: f64,
}

impl<
        const V: usize,
        const D: usize,
        const H: usize,
        const HD: usize,
        const F: usize,
        const L: usize,
        const P: usize,
        const TT: usize,
        N: NormPlacement,
        A: Activation,
        K: PositionKind,
        E: FloatDtype,
        Dev: Device<E>,
        Pool: Presence,
    > Bert<V, D, H, HD, F, L, P, TT, N, A, K, E, Dev, Pool>
{
    /// Trainable parameters, computed from the type alone (pooler included, when it has one).
    pub const NUM_PARAMS: usize = {
        let bias = <N::Bias as BiasKind>::ON;
        let layer = layer_params(D, H, HD, F, 1, 2, bias);
        let positions = if K::LEARNED { P * D } else { 0 };
        let final_norm = if N::FINAL_NORM { norm_params(D, bias) } else { 0 };
        V * D
            + positions
            + TT * D
            + norm_params(D, bias)
            + L * layer
            + final_norm
            + Pooler::<D, Pool, E, Dev>::NUM_PARAMS
    };

    /// The layers in forward order, with output shapes, for [`Summary`](super::Summary).
    pub fn layers() -> Vec<Layer> {
        let hidden = format!("(B, S, {D})");
        let mut out = vec![
            Layer::new("embed", format!("TokenEmbedding({V}, {D})"), &hidden),
            Layer::new("pos", format!("{} positions({P})", K::NAME), &hidden),
            Layer::new("token_type", format!("TokenEmbedding({TT}, {D})"), &hidden),
            Layer::new("embed_norm", "LayerNorm", &hidden),
        ];
        let block = block_kind("EncoderLayer", H, HD, F, A::NAME, N::NAME);
        out.extend(stack_layers("encoder.layers", L, N::FINAL_NORM.then_some("encoder.norm"), &block, &hidden, None));
        if Pool::PRESENT {
            out.push(Layer::new("pooler", format!("Linear({D}, {D}) + tanh of [CLS]"), format!("(B, {D})")));
        }
        out
    }

    /// The differences between `config` and this model type, one line each; empty when the
    /// config describes exactly this type.
    pub fn config_mismatches(config: &BertConfig) -> Vec<String> {
        let activation = match config.activation.as_str() {
            "gelu" => "gelu",
            "gelu_new" | "gelu_pytorch_tanh" => "gelu_tanh",
            other => other,
        };
        let checks = [
            ("vocab_size", config.vocab, V),
            ("hidden_size", config.d_model, D),
            ("num_attention_heads", config.heads, H),
            ("head width (hidden_size / num_attention_heads)", config.d_model / config.heads.max(1), HD),
            ("intermediate_size", config.d_ff, F),
            ("num_hidden_layers", config.layers, L),
            ("max_position_embeddings", config.positions, P),
            ("type_vocab_size", config.token_types, TT),
        ];
        let mut out: Vec<String> = checks
            .iter()
            .filter(|(_, found, expected)| found != expected)
            .map(|(what, found, expected)| format!("{what} is {found}, the model type has {expected}"))
            .collect();
        if activation != A::NAME {
            out.push(format!("hidden_act is `{}`, the model type has `{}`", config.activation, A::NAME));
        }
        if N::PRE || N::FINAL_NORM {
            out.push("BERT checkpoints are post-LN without a final norm, the model type is not".into());
        }
        if !K::LEARNED {
            out.push(format!("BERT checkpoints have learned positions, the model type has {}", K::NAME));
        }
        out
    }

    /// The contextual vectors `(B, S, D)` of `tokens`, recording on `tape`. `token_types`
    /// (segment ids, same shape as `tokens`) default to 0 everywhere. Padded positions are
    /// never attended to; their own outputs are meaningless.
    pub fn forward_with_tape<T: Tape<E, Dev>>(
        &self,
        tokens: &Tokens<V>,
        token_types: Option<&Tokens<TT>>,
        tape: T,
    ) -> Result<Hidden<usize, usize, D, E, Dev, T>> {
        let dev = self.embed.weight.device();
        let types = match token_types {
            Some(types) => {
                if types.batch() != tokens.batch() {
                    return Err(Error::DimMismatch {
                        what: "sequences of token types vs of tokens",
                        expected: tokens.batch(),
                        found: types.batch(),
                    });
                }
                if types.seq_len() != tokens.seq_len() {
                    return Err(Error::DimMismatch {
                        what: "padded length of the token types vs the tokens",
                        expected: tokens.seq_len(),
                        found: types.seq_len(),
                    });
                }
                types.to_tensor(dev)
            }
            None => dev.tensor_from_vec(vec![0; tokens.batch() * tokens.seq_len()], (tokens.batch(), tokens.seq_len())),
        };
        let x = self.embed.lookup(tokens.to_tensor(dev).put_tape(tape)); // (B, S, D)
        let x = self.pos.forward(x, 0)?;
        let x = x + self.token_type.weight.retaped::<T>().gather(types);
        let x = dropout_when_training(self.embed_norm.forward(x), self.dropout);
        self.encoder.forward(x, &MaskSpec::padding(tokens.lengths()))
    }

    /// Inference pass: the contextual vectors `(B, S, D)`.
    pub fn forward(
        &self,
        tokens: &Tokens<V>,
        token_types: Option<&Tokens<TT>>,
    ) -> Result<Hidden<usize, usize, D, E, Dev>> {
        self.forward_with_tape(tokens, token_types, NoneTape)
    }

    /// Training pass recording into `grads` (from `model.alloc_grads()`); dropout on.
    pub fn forward_traced(
        &self,
        tokens: &Tokens<V>,
        token_types: Option<&Tokens<TT>>,
        grads: Gradients<E, Dev>,
    ) -> Result<TrainHidden<D, E, Dev>> {
        self.forward_with_tape(tokens, token_types, training_tape(self.embed.weight.device(), grads))
    }
}

impl<
        const V: usize,
        const D: usize,
        const H: usize,
        const HD: usize,
        const F: usize,
        const L: usize,
        const P: usize,
        const TT: usize,
        N: NormPlacement,
        A: Activation,
        K: PositionKind,
        E: FloatDtype,
        Dev: Device<E>,
    > Bert<V, D, H, HD, F, L, P, TT, N, A, K, E, Dev, WithPooler>
{
    /// The pooled output `(B, D)`: `tanh(W h + b)` of each sequence's first vector (`[CLS]`).
    /// Only a BERT with a pooler has it: on a [`NoPooler`] one this does not compile.
    pub fn pool<T: Tape<E, Dev>>(
        &self,
        hidden: Hidden<usize, usize, D, E, Dev, T>,
    ) -> Tensor<(usize, Const<D>), E, Dev, T> {
        let b = hidden.shape().0;
        let first = hidden.slice((.., 0..1, ..)).reshape_like(&(b, Const::<1>, Const::<D>)); // (B, 1, D)
        let pooled = self.pooler.try_forward(first).expect("WithPooler has a pooler"); // (B, 1, D)
        pooled.reshape_like(&(b, Const::<D>)).tanh()
    }
}

/// The mean of each sequence's vectors over its first `lengths[i]` positions (padding excluded):
/// `(B, S, D) -> (B, D)`, as sentence-transformers pools.
pub fn mean_pool<const D: usize, E: FloatDtype, Dev: Device<E>>(
    hidden: &Hidden<usize, usize, D, E, Dev>,
    lengths: &[usize],
) -> Result<Tensor<(usize, Const<D>), E, Dev>> {
    let (b, s, _) = *hidden.shape();
    if lengths.len() != b {
        return Err(Error::DimMismatch {
            what: "number of lengths (one per batch item)",
            expected: b,
            found: lengths.len(),
        });
    }
    if let Some(&bad) = lengths.iter().find(|&&l| l == 0 || l > s) {
        return Err(Error::DimMismatch {
            what: "length of a sequence to mean-pool (1 to the padded length)",
            expected: s,
            found: bad,
        });
    }
    // Weights 1/len on valid positions, 0 on padding: a (B, 1, S) x (B, S, D) product.
    let mut weights = vec![E::default(); b * s];
    for (item, &len) in lengths.iter().enumerate() {
        weights[item * s..item * s + len].fill(E::from_f64(1.0 / len as f64).unwrap_or_default());
    }
    let weights = hidden.device().tensor_from_vec(weights, (b, Const::<1>, s));
    Ok(weights.matmul(hidden.clone()).reshape_like(&(b, Const::<D>)))
}

/// Scales each row of `x: (B, D)` to unit L2 norm (a zero row stays zero).
pub fn l2_normalize<const D: usize, E: FloatDtype, Dev: Device<E>>(
    x: Tensor<(usize, Const<D>), E, Dev>,
) -> Tensor<(usize, Const<D>), E, Dev> {
    let shape = *x.shape();
    let norms = x.clone().square().sum::<_, Axis<1>>().sqrt().clamp(1e-12, f64::MAX);
    x / norms.broadcast_like(&shape)
}

/// The architecture a Hugging Face BERT `config.json` describes.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    /// `vocab_size`.
    pub vocab: usize,
    /// `hidden_size`.
    pub d_model: usize,
    /// `num_attention_heads`.
    pub heads: usize,
    /// `intermediate_size`.
    pub d_ff: usize,
    /// `num_hidden_layers`.
    pub layers: usize,
    /// `max_position_embeddings`.
    pub positions: usize,
    /// `type_vocab_size`.
    pub token_types: usize,
    /// `hidden_act` (`gelu`, `gelu_new`, `relu`).
    pub activation: String,
    /// `layer_norm_eps`.
    pub layer_norm_eps: f64,
}
