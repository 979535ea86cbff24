//! Named configurations.

use super::{Bert, DecoderOnly, EncoderDecoder, SharedTied, TiedOutput};
use crate::nn::{Gelu, GeluTanh, Learned, PostNorm, PreNorm, Relu, Sinusoidal};
use dfdx::prelude::Cpu;

/// Vocabulary of the built-in tasks: padding, BOS, EOS and up to 16 symbols.
pub const TASK_VOCAB: usize = 19;
/// Positions of the task models: sources and targets of up to 64 tokens.
pub const TASK_POSITIONS: usize = 65;

/// The model the command-line tool trains by default: d 64, 4 heads of 16, d_ff 256, 2 + 2 layers,
/// post-LN, ReLU, sinusoidal positions, shared and tied embeddings (the paper's architecture,
/// scaled down).
pub type TaskSmall<E = f32, Dev = Cpu> = EncoderDecoder<
    TASK_VOCAB,
    TASK_VOCAB,
    64,
    4,
    16,
    256,
    2,
    2,
    TASK_POSITIONS,
    PostNorm,
    Relu,
    Sinusoidal,
    SharedTied,
    E,
    Dev,
>;

/// A larger task model: d 128, 8 heads of 16, d_ff 512, 3 + 3 layers.
pub type TaskMedium<E = f32, Dev = Cpu> = EncoderDecoder<
    TASK_VOCAB,
    TASK_VOCAB,
    128,
    8,
    16,
    512,
    3,
    3,
    TASK_POSITIONS,
    PostNorm,
    Relu,
    Sinusoidal,
    SharedTied,
    E,
    Dev,
>;

/// Table 3's base model: d 512, 8 heads, d_ff 2048, 6 + 6 layers, a shared 37,000-token vocabulary,
/// with final norms after both stacks as PyTorch's `nn.Transformer` has.
pub type PaperBase<E = f32, Dev = Cpu> =
    EncoderDecoder<37_000, 37_000, 512, 8, 64, 2048, 6, 6, 512, PostNorm<true>, Relu, Sinusoidal, SharedTied, E, Dev>;

/// Table 3's big model: d 1024, 16 heads, d_ff 4096, 6 + 6 layers.
pub type PaperBig<E = f32, Dev = Cpu> =
    EncoderDecoder<37_000, 37_000, 1024, 16, 64, 4096, 6, 6, 512, PostNorm<true>, Relu, Sinusoidal, SharedTied, E, Dev>;

/// GPT-2 small: 50,257 tokens, d 768, 12 heads, d_ff 3072, 12 blocks, 1,024 positions, pre-LN,
/// tanh GELU, learned positions, tied output (124,439,808 parameters).
pub type Gpt2Small<E = f32, Dev = Cpu> =
    DecoderOnly<50_257, 768, 12, 64, 3072, 12, 1024, PreNorm, GeluTanh, Learned, TiedOutput, E, Dev>;

/// The language model the command-line tool trains: bytes (256 tokens), d 128, 4 heads of 32,
/// d_ff 512, 4 blocks, a context of 128, pre-LN, tanh GELU, learned positions, tied output.
pub type LmSmall<E = f32, Dev = Cpu> =
    DecoderOnly<256, 128, 4, 32, 512, 4, 128, PreNorm, GeluTanh, Learned, TiedOutput, E, Dev>;

/// BERT base: 30,522 tokens, d 768, 12 heads, d_ff 3072, 12 layers, 512 positions, 2 token types,
/// exact GELU (109,482,240 parameters with the pooler).
pub type BertBase<E = f32, Dev = Cpu> = Bert<30_522, 768, 12, 64, 3072, 12, 512, 2, Gelu, E, Dev>;

/// all-MiniLM-L6-v2 (sentence-transformers): BERT with d 384, 12 heads of 32, d_ff 1536, 6 layers
/// (22,713,216 parameters with the pooler). Its layer norms use eps 1e-12.
pub type MiniLmL6<E = f32, Dev = Cpu> = Bert<30_522, 384, 12, 32, 1536, 6, 512, 2, Gelu, E, Dev>;
