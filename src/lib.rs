//! # typeformer
//!
//! The Transformer of "Attention Is All You Need" (Vaswani et al., 2017, arXiv 1706.03762) as a
//! compile-time, shape-checked tensor DSL on [`dfdx`].
//!
//! Model dimensions are const generics, so a mismatched projection, residual addition,
//! cross-attention memory or logits/labels pairing is a type error at `cargo check`. Batch and
//! sequence lengths stay run-time values.
//!
//! ## Axis legend
//! Shape comments in the code use these names:
//! - `B` batch, `S` sequence (`Sq` queries, `Sk` keys, `Ss` source, `St` target)
//! - `D` model width, `H` heads, `HD` head width, `F` feed-forward width
//! - `V` vocabulary (`SV` source, `TV` target), `P` positions, `L` layers
//!
//! ## Layout
//! Each layer uses only the ones listed before it (tests aside), so a module can be read without
//! those after it:
//! - [`error`], [`shape`], [`memory`], [`device`] — errors, shapes of batches, memory checks, and
//!   opening a CUDA GPU (with the `cuda` feature) without panicking when there is none;
//! - `kernels` (private): the fast CPU kernels and the threads they run on; with `os` (the C
//!   library's allocator thresholds and file-size signal), the only modules with `unsafe` (the
//!   matrix product's raw pointers, the helper threads' borrowed closures, the two C calls);
//! - [`nn`] — the building blocks, one per file;
//! - [`models`] — whole architectures;
//! - [`io`] — checkpoints, run directories, pictures and the importers of others' weights;
//! - [`data`] — the built-in tasks, text data and tokenizers;
//! - [`generate`] — decoding;
//! - [`train`] — the loss, schedule, optimizer, training loops and loss curves;
//! - [`pipelines`] — applications assembled from the rest (sentence embeddings from a model
//!   directory).

#![deny(unsafe_code)]

/// `impl BuildOnDevice for $ty { type Built = Self; }`, so that `dev.build_module::<$ty, E>()`
/// works for a module whose type already names its dtype and device.
macro_rules! build_on_device {
    ([$($generics:tt)*] $ty:ty) => {
        impl<$($generics)*, E: $crate::FloatDtype, Dev: ::dfdx::tensor_ops::Device<E>> ::dfdx::nn::BuildOnDevice<Dev, E> for $ty {
            type Built = Self;
        }
    };
}

pub mod data;
pub mod device;
pub mod error;
pub mod generate;
pub mod io;
mod kernels;
pub mod memory;
mod os;
pub use os::{report_oversized_writes, reuse_freed_memory};
pub mod models;
pub mod nn;
pub mod pipelines;
pub mod shape;
pub mod train;

pub use error::{Error, Result};

// The macros name this crate `::typeformer`, inside it as well as outside.
extern crate self as typeformer;

/// The tensor engine, re-exported so that code the macros emit (and users) can name it.
pub use dfdx;

/// Declares Transformer architectures: each declaration becomes a model type (an alias of
/// [`EncoderDecoder`](models::EncoderDecoder), [`Bert`](models::Bert) or
/// [`DecoderOnly`](models::DecoderOnly) or [`Llama`](models::Llama) over the same typed blocks a hand-written model uses) and
/// a `…Spec` type with a constant for every dimension, the parameter count as a `const`, and
/// [`Architecture`](models::Architecture) (`build`, `summary`).
///
/// # Grammar
///
/// ```text
/// transformer! {
///     /// doc comments and attributes
///     VISIBILITY NAME: KIND { FIELD: VALUE, ... }
///     ...more declarations
/// }
/// KIND  = EncoderDecoder | EncoderOnly | DecoderOnly
/// ```
///
/// | field | value | kinds | default |
/// |---|---|---|---|
/// | `vocab` | size | all (required; or `src_vocab` + `tgt_vocab` for EncoderDecoder) | |
/// | `src_vocab`, `tgt_vocab` | size | EncoderDecoder | `vocab` |
/// | `d_model` | size | all (required) | |
/// | `heads` and/or `head_dim` | size | all (one required; the other is `d_model` divided by it) | |
/// | `d_ff` | size | all (required) | |
/// | `layers` | size | EncoderOnly, DecoderOnly (required) | |
/// | `encoder_layers`, `decoder_layers` | size | EncoderDecoder (required) | |
/// | `max_len` | size: the positions | all (required) | |
/// | `token_types` | size | EncoderOnly | 2 |
/// | `positional` | `sinusoidal`, `learned`, `rope` (Llama blocks) | all (`rope`: DecoderOnly) | sinusoidal for EncoderDecoder, else learned |
/// | `norm` | `pre`, `post`, `rms` (Llama blocks) | all (`rms`: DecoderOnly) | pre for DecoderOnly, else post |
/// | `final_norm` | bool: a layer norm after each stack | all | true with `pre`, false with `post` |
/// | `activation` | `relu`, `gelu`, `gelu_tanh`, `swiglu` (Llama blocks) | all (`swiglu`: DecoderOnly) | relu, gelu (EncoderOnly), gelu_tanh (DecoderOnly) |
/// | `kv_heads` | size dividing `heads`: key/value heads of grouped-query attention | DecoderOnly with Llama blocks | `heads` |
/// | `rope_base` | size: the angle base of rotary positions | DecoderOnly with Llama blocks | 10,000 |
/// | `rms_norm_eps` | number in (0, 1) | DecoderOnly with Llama blocks | 1e-5 |
/// | `dropout` | number in [0, 1) | all | 0.1 (0 with Llama blocks) |
/// | `tie_embeddings` | bool | EncoderDecoder, DecoderOnly | true |
/// | `layer_norm_eps` | number in (0, 1) | all | 1e-12 for EncoderOnly, else 1e-5 |
/// | `bias` | bool: biases in the layers' projections and norms (nanoGPT's `bias=False`) | all | true |
///
/// `positional: rope, norm: rms, activation: swiglu` together declare a Llama-style model
/// ([`Llama`](models::Llama): RMSNorm, rotary grouped-query attention, SwiGLU; no biases); any
/// one of them alone is an error that names the other two.
///
/// An EncoderDecoder with `tie_embeddings: true` shares one table between source, target and
/// output when the vocabularies are equal ([`SharedTied`](models::SharedTied)), and ties only the
/// target table otherwise ([`SeparateTied`](models::SeparateTied)); `false` gives
/// [`Separate`](models::Separate).
///
/// Every mistake is one compile error at the offending token, at `cargo check`: an unknown or
/// missing field (a misspelt one is reported once, with the field it is near), a duplicated
/// one, a field of another kind, a zero or negative size (naming the field), `heads` that do not
/// divide `d_model`, an odd `d_model` with sinusoidal positions, an unknown kind or activation,
/// a dropout outside [0, 1), a name declared twice or clashing with another model's `NameSpec`.
/// The declared items are emitted even then, so later uses of the names add no errors.
///
/// With `bias: false` the layers' Q/K/V, output and feed-forward projections and their layer
/// norms have no biases (they are fixed zeros that are never trained, saved or counted); the
/// embeddings, the pooler and an untied output projection keep theirs.
///
/// # Examples
///
/// ```
/// use typeformer::prelude::*;
///
/// typeformer::transformer! {
///     /// A small GPT.
///     pub TinyGpt: DecoderOnly {
///         vocab: 256, d_model: 64, heads: 4, d_ff: 256, layers: 2, max_len: 128,
///         dropout: 0.0,
///     }
///
///     /// "Attention Is All You Need", scaled down.
///     pub TinyPaper: EncoderDecoder {
///         vocab: 100, d_model: 32, heads: 4, d_ff: 64, encoder_layers: 2, decoder_layers: 2,
///         max_len: 50, positional: sinusoidal, norm: post, activation: relu, tie_embeddings: true,
///     }
///
///     /// A BERT.
///     pub TinyBert: EncoderOnly { vocab: 100, d_model: 32, head_dim: 8, d_ff: 64, layers: 2, max_len: 64 }
/// }
///
/// assert_eq!(TinyGptSpec::HEAD_DIM, 16);
/// assert_eq!(TinyBertSpec::HEADS, 4);
/// let model: TinyGpt = TinyGptSpec::build(&Cpu::default()).unwrap();
/// assert_eq!(model.num_trainable_params(), TinyGptSpec::NUM_PARAMS);
/// let tokens = Tokens::<256>::from_sequences(&[vec![1, 2, 3]]).unwrap();
/// assert_eq!(model.forward(&tokens).unwrap().shape(), &(1, 3, Const::<256>));
/// assert_eq!(TinyPaperSpec::summary().trainable_params(), TinyPaperSpec::NUM_PARAMS);
/// ```
///
/// Heads that do not divide the width are refused where they are written:
///
/// ```compile_fail
/// typeformer::transformer! {
///     pub Bad: DecoderOnly { vocab: 256, d_model: 64, heads: 5, d_ff: 256, layers: 2, max_len: 128 }
/// }
/// ```
pub use typeformer_macros::transformer;

/// Derives parameter traversal for a hand-written model struct: dfdx's `TensorCollection` (each
/// field visited under its name, so parameters get dotted names such as `encoder.layers.0.norm1.weight`
/// in checkpoints, optimizers and [`Summary`](models::Summary)) and `BuildOnDevice` (so
/// `dev.build_module::<M, E>()` builds it).
///
/// The struct's dtype and device are the type parameter bounded by `Storage<E>` (or
/// `Device<E>`) and its `E` (otherwise its last two type parameters). Every field is a module
/// (anything with parameters, including typeformer's blocks and dfdx's), unless marked:
/// `#[model(scalar)]` / `#[model(scalar, default = 0.1)]` for an `f64` hyperparameter saved in
/// checkpoints, `#[model(skip)]` for a field rebuilt with `Default::default()` (`PhantomData`);
/// `#[model(rename = "name")]` visits a field under another name. What the traversal needs of
/// type parameters that the struct leaves unbounded goes on the struct:
/// `#[model(bound = "A: Activation")]`; type parameters that are themselves parts (a model
/// generic over its block type) are named with `#[model(parts = "Block")]`, as
/// [`CausalLm`](models::CausalLm) does. typeformer's own blocks and models are derived so.
///
/// ```
/// use typeformer::prelude::*;
/// use typeformer::dfdx::nn::modules::Linear;
///
/// /// Tags each token of a sequence with one of 5 classes.
/// #[derive(Debug, Clone, typeformer::Model)]
/// struct Tagger<E: Dtype, Dev: Storage<E>> {
///     embed: TokenEmbedding<100, 32, E, Dev>,
///     encoder: Encoder<32, 4, 8, 64, 2, PreNorm, Gelu, E, Dev>,
///     head: Linear<32, 5, E, Dev>,
///     #[model(scalar, default = 0.1)]
///     dropout: f64,
/// }
///
/// let model = Cpu::default().build_module::<Tagger<f32, Cpu>, f32>();
/// let summary = Summary::of::<Tagger<f32, Cpu>, f32, Cpu>();
/// assert_eq!(summary.params[0].name, "embed.weight");
/// assert_eq!(summary.trainable_params(), model.num_trainable_params());
/// assert_eq!(model.dropout, 0.1);
/// ```
pub use typeformer_macros::Model;

/// The README's code, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The element types a model can be built with: `f32` (the default) and `f64` (gradient checks).
pub trait FloatDtype: dfdx::shapes::Dtype + num_traits::Float + rand_distr::uniform::SampleUniform {}
impl<T: dfdx::shapes::Dtype + num_traits::Float + rand_distr::uniform::SampleUniform> FloatDtype for T {}

/// Builds (allocates and initialises) a module on `dev`, with a device error as an [`Error`].
pub(crate) fn try_build<
    M: dfdx::nn::BuildOnDevice<Dev, E>,
    E: dfdx::shapes::Dtype,
    Dev: dfdx::tensor_ops::Device<E>,
>(
    dev: &Dev,
) -> Result<M::Built> {
    M::try_build_on_device(dev).map_err(|e| Error::Device(format!("{e:?}")))
}

/// `x` as the element type `E` (every `FloatDtype` represents every finite `f64` approximately).
pub(crate) fn scalar<E: FloatDtype>(x: f64) -> E {
    E::from_f64(x).expect("a float dtype converts from any f64")
}

/// Everything needed to define, train and run a model.
///
/// It includes the dfdx vocabulary a user needs beside it (tensors, shapes, devices, tensor ops,
/// building and gradient traits), so one `use typeformer::prelude::*;` suffices.
pub mod prelude {
    pub use dfdx::nn::{BuildModule, BuildOnDevice, DeviceBuildExt, NumParams, ZeroGrads};
    pub use dfdx::shapes::*;
    pub use dfdx::tensor::*;
    pub use dfdx::tensor_ops::*;

    pub use crate::models::*;
    pub use crate::nn::*;
    pub use crate::pipelines::*;
    pub use crate::shape::*;
    pub use crate::{Error, FloatDtype, Result};
}
