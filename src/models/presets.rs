//! Named configurations, declared with [`transformer!`](crate::transformer). Each has a `…Spec`
//! type with its dimensions and parameter count.

crate::transformer! {
    /// The model the command-line tool trains by default: the paper's architecture scaled down
    /// (shared and tied embeddings over the task vocabulary of 19 tokens, 65 positions).
    pub TaskSmall: EncoderDecoder {
        vocab: 19, d_model: 64, heads: 4, d_ff: 256, encoder_layers: 2, decoder_layers: 2, max_len: 65,
        positional: sinusoidal, norm: post, final_norm: false, activation: relu, tie_embeddings: true,
    }

    /// A larger task model (`train --model medium`).
    pub TaskMedium: EncoderDecoder {
        vocab: 19, d_model: 128, heads: 8, d_ff: 512, encoder_layers: 3, decoder_layers: 3, max_len: 65,
        positional: sinusoidal, norm: post, final_norm: false, activation: relu, tie_embeddings: true,
    }

    /// Table 3's base model ("Attention Is All You Need"): a shared 37,000-token vocabulary and
    /// tied output projection, with final norms after both stacks as PyTorch's `nn.Transformer`
    /// has. The paper reports 65M parameters.
    pub PaperBase: EncoderDecoder {
        vocab: 37_000, d_model: 512, heads: 8, d_ff: 2048, encoder_layers: 6, decoder_layers: 6,
        max_len: 512, positional: sinusoidal, norm: post, final_norm: true, activation: relu,
        dropout: 0.1, tie_embeddings: true,
    }

    /// Table 3's big model. The paper reports 213M parameters.
    pub PaperBig: EncoderDecoder {
        vocab: 37_000, d_model: 1024, heads: 16, d_ff: 4096, encoder_layers: 6, decoder_layers: 6,
        max_len: 512, positional: sinusoidal, norm: post, final_norm: true, activation: relu,
        dropout: 0.3, tie_embeddings: true,
    }

    /// GPT-2 small (124,439,808 parameters): learned positions, pre-LN with a final norm, tanh
    /// GELU, tied output. Hugging Face checkpoints load with [`load_hf_gpt2`](crate::io::load_hf_gpt2).
    pub Gpt2Small: DecoderOnly {
        vocab: 50_257, d_model: 768, heads: 12, d_ff: 3072, layers: 12, max_len: 1024,
        positional: learned, norm: pre, final_norm: true, activation: gelu_tanh, dropout: 0.1,
        tie_embeddings: true, layer_norm_eps: 1e-5,
    }

    /// The byte-level language model the command-line tool trains (`train-lm`).
    pub LmSmall: DecoderOnly {
        vocab: 256, d_model: 128, heads: 4, d_ff: 512, layers: 4, max_len: 128,
        positional: learned, norm: pre, activation: gelu_tanh, tie_embeddings: true,
    }

    /// The Llama-style byte-level language model `train-lm --arch llama` trains: LmSmall's
    /// width, depth and context with rotary positions, 2 key/value heads for 4 query heads,
    /// RMSNorm and SwiGLU (hidden width 352, about 2/3 of 4 x 128, as Llama sizes it).
    pub LlamaSmall: DecoderOnly {
        vocab: 256, d_model: 128, heads: 4, kv_heads: 2, d_ff: 352, layers: 4, max_len: 128,
        positional: rope, norm: rms, activation: swiglu, tie_embeddings: true,
    }

    /// SmolLM2-135M-Instruct (Hugging Face; 134,515,008 parameters): 30 Llama blocks of width
    /// 576 with 9 query and 3 key/value heads of width 64, SwiGLU of 1,536, rotary positions of
    /// base 100,000 over 8,192 positions, a tied output. Loads from its GGUF file with
    /// [`load_gguf_llama`](crate::io::load_gguf_llama).
    #[allow(non_camel_case_types)]
    pub SmolLm2_135M: DecoderOnly {
        vocab: 49_152, d_model: 576, heads: 9, kv_heads: 3, d_ff: 1536, layers: 30, max_len: 8192,
        positional: rope, rope_base: 100_000, norm: rms, activation: swiglu, rms_norm_eps: 1e-5,
        tie_embeddings: true,
    }

    /// BERT base (109,482,240 parameters with the pooler). Hugging Face checkpoints load with
    /// [`load_hf_bert`](crate::io::load_hf_bert).
    pub BertBase: EncoderOnly {
        vocab: 30_522, d_model: 768, heads: 12, d_ff: 3072, layers: 12, max_len: 512, token_types: 2,
        positional: learned, norm: post, final_norm: false, activation: gelu, layer_norm_eps: 1e-12,
    }

    /// all-MiniLM-L6-v2 of sentence-transformers (22,713,216 parameters with the pooler); see
    /// [`SentenceEncoder`](crate::pipelines::SentenceEncoder).
    pub MiniLmL6: EncoderOnly {
        vocab: 30_522, d_model: 384, heads: 12, d_ff: 1536, layers: 6, max_len: 512, token_types: 2,
        positional: learned, norm: post, final_norm: false, activation: gelu, layer_norm_eps: 1e-12,
    }
}

/// Vocabulary of the built-in tasks: padding, BOS, EOS and up to 16 symbols.
pub const TASK_VOCAB: usize = TaskSmallSpec::SRC_VOCAB;
/// Positions of the task models: sources and targets of up to 64 tokens.
pub const TASK_POSITIONS: usize = TaskSmallSpec::MAX_LEN;
