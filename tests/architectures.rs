//! Architectures declared with `transformer!` and models written by hand with
//! `#[derive(Model)]`: their types, parameter counts, builds, summaries and checkpoints.

use typeformer::dfdx::nn::modules::Linear;
use typeformer::io::{load_checkpoint, save_checkpoint};
use typeformer::prelude::*;

#[test]
fn preset_counts_match_the_reference_implementations() {
    // torch.nn.Transformer(512, 8, 6, 6, 2048) and (1024, 16, 6, 6, 4096): stacks without embeddings.
    assert_eq!(PaperBaseSpec::summary().trainable_under(&["encoder.", "decoder."]), 44_140_544);
    assert_eq!(PaperBigSpec::summary().trainable_under(&["encoder.", "decoder."]), 176_361_472);
    // Hugging Face: GPT2LMHeadModel (tied), BertModel and all-MiniLM-L6-v2 (with the pooler).
    assert_eq!(Gpt2SmallSpec::NUM_PARAMS, 124_439_808);
    assert_eq!(BertBaseSpec::NUM_PARAMS, 109_482_240);
    assert_eq!(MiniLmL6Spec::NUM_PARAMS, 22_713_216);
    for (summary, count) in [
        (PaperBaseSpec::summary(), PaperBaseSpec::NUM_PARAMS),
        (PaperBigSpec::summary(), PaperBigSpec::NUM_PARAMS),
        (Gpt2SmallSpec::summary(), Gpt2SmallSpec::NUM_PARAMS),
        (BertBaseSpec::summary(), BertBaseSpec::NUM_PARAMS),
        (MiniLmL6Spec::summary(), MiniLmL6Spec::NUM_PARAMS),
    ] {
        assert_eq!(summary.trainable_params(), count);
        // The layer rows cover every trainable parameter exactly once.
        let by_layer: usize = summary.layers.iter().map(|l| summary.layer_params(l)).sum();
        assert_eq!(by_layer, count);
    }
}

#[test]
fn the_macro_expands_to_the_hand_written_types() {
    fn same<T>(_: T, _: T) {}
    let dev = Cpu::default();
    let declared: TaskSmall = TaskSmallSpec::build(&dev).unwrap();
    type ByHand = EncoderDecoder<19, 19, 64, 4, 16, 256, 2, 2, 65, PostNorm, Relu, Sinusoidal, SharedTied, f32, Cpu>;
    let by_hand = dev.build_module::<ByHand, f32>();
    same(declared, by_hand);
    assert_eq!((TaskSmallSpec::HEADS, TaskSmallSpec::HEAD_DIM, TaskSmallSpec::ENCODER_LAYERS), (4, 16, 2));
    assert_eq!((Gpt2SmallSpec::VOCAB, Gpt2SmallSpec::MAX_LEN, Gpt2SmallSpec::LAYERS), (50_257, 1024, 12));
    assert_eq!((MiniLmL6Spec::TOKEN_TYPES, MiniLmL6Spec::LAYER_NORM_EPS), (2, 1e-12));
}

typeformer::transformer! {
    /// Separate vocabularies: the target table is tied to the output, the source has its own.
    Translator: EncoderDecoder {
        src_vocab: 30, tgt_vocab: 20, d_model: 16, head_dim: 8, d_ff: 32, encoder_layers: 1,
        decoder_layers: 2, max_len: 10, positional: learned, norm: pre, activation: gelu,
        dropout: 0.25, layer_norm_eps: 1e-6,
    }
    /// An untied GPT.
    Untied: DecoderOnly { vocab: 30, d_model: 16, heads: 2, d_ff: 32, layers: 1, max_len: 8, tie_embeddings: false }
    /// An untied GPT whose head has no bias, as GPT-2 with `tie_word_embeddings=False` and Llama.
    UntiedNoBias: DecoderOnly {
        vocab: 30, d_model: 16, heads: 2, d_ff: 32, layers: 1, max_len: 8, tie_embeddings: false, output_bias: false,
    }
    /// A BERT without a pooler, as `BertForMaskedLM`.
    MaskedLm: EncoderOnly { vocab: 30, d_model: 16, heads: 2, d_ff: 32, layers: 1, max_len: 8, pooler: false }
}

#[test]
fn heads_and_poolers_the_declaration_leaves_out_are_not_in_the_type() {
    fn same<T>(_: T, _: T) {}
    let dev = Cpu::default();
    type NoBiasHead = DecoderOnly<30, 16, 2, 8, 32, 1, 8, PreNorm, GeluTanh, Learned, UntiedOutputNoBias, f32, Cpu>;
    same(UntiedNoBiasSpec::build(&dev).unwrap(), dev.build_module::<NoBiasHead, f32>());
    assert_eq!(UntiedSpec::NUM_PARAMS - UntiedNoBiasSpec::NUM_PARAMS, 30);
    type NoPool = Bert<30, 16, 2, 8, 32, 1, 8, 2, PostNorm, Gelu, Learned, f32, Cpu, NoPooler>;
    same(MaskedLmSpec::build(&dev).unwrap(), dev.build_module::<NoPool, f32>());
    // The same architecture with its pooler, by choosing the pooler of the alias.
    let with_pooler = dev.build_module::<MaskedLm<f32, Cpu, WithPooler>, f32>();
    assert_eq!(with_pooler.num_trainable_params() - MaskedLmSpec::NUM_PARAMS, 16 * 16 + 16);
    let summary = MaskedLmSpec::summary().to_string();
    assert!(!summary.contains("pooler"), "{summary}");
    assert_eq!(MaskedLmSpec::summary().trainable_params(), MaskedLmSpec::NUM_PARAMS);
}

#[test]
fn build_applies_the_declared_hyperparameters() {
    let model: Translator = TranslatorSpec::build(&Cpu::default()).unwrap();
    assert_eq!(TranslatorSpec::HEADS, 2);
    assert_eq!(model.dropout, 0.25);
    assert_eq!(model.encoder.layers.modules[0].self_attn.dropout, 0.25);
    assert_eq!(model.decoder.layers.modules[1].norm3.norm.eps, 1e-6);
    assert!(model.encoder.norm.norm.is_some(), "pre-norm stacks end with a norm by default");
    assert_eq!(model.num_trainable_params(), TranslatorSpec::NUM_PARAMS);
    let src = Tokens::<30>::from_sequences(&[vec![3, 29, 4]]).unwrap();
    let tgt = Tokens::<20>::from_sequences(&[vec![1, 19]]).unwrap();
    assert_eq!(model.forward(&src, &tgt).unwrap().shape(), &(1, 2, Const::<20>));

    let untied: Untied = UntiedSpec::build(&Cpu::default()).unwrap();
    assert_eq!(untied.num_trainable_params(), UntiedSpec::NUM_PARAMS);
    assert!(UntiedSpec::summary().layers.iter().any(|l| l.path == "head" && l.kind == "Linear(16, 30)"));
}

#[test]
fn summaries_show_output_shapes_and_render_as_graphviz() {
    let s = PaperBaseSpec::summary();
    let text = s.to_string();
    assert!(text.contains("decoder.layers.5"), "{text}");
    assert!(text.contains("(B, S_tgt, 37000)"), "{text}");
    let encoder_layer = s.layers.iter().find(|l| l.path == "encoder.layers.0").unwrap();
    assert_eq!(s.layer_params(encoder_layer), 3_152_384); // nn.TransformerEncoderLayer(512, 8, 2048)
    let dot = s.to_dot("PaperBase");
    assert!(dot.starts_with("digraph \"PaperBase\" {") && dot.trim_end().ends_with('}'));
    // Every decoder layer reads the encoder's output (cross-attention).
    for i in 0..6 {
        assert!(dot.contains(&format!("\"encoder.norm\" -> \"decoder.layers.{i}\"")), "{dot}");
    }
    assert_eq!(dot.matches(" [label=").count(), s.layers.len());
}

/// A model the macro cannot describe: two encoders over the same tokens, averaged.
#[derive(Debug, Clone, typeformer::Model)]
struct TwoTower<const V: usize, E: Dtype, Dev: Storage<E>> {
    embed: TokenEmbedding<V, 16, E, Dev>,
    left: Encoder<16, 2, 8, 32, 1, PreNorm, Gelu, E, Dev>,
    right: Encoder<16, 4, 4, 32, 2, PostNorm, Relu, E, Dev>,
    a: Linear<16, 16, E, Dev>,
    b: Linear<16, 16, E, Dev>,
    c: Linear<16, 16, E, Dev>,
    head: Linear<16, 3, E, Dev>,
    #[model(scalar, default = 0.5)]
    mix: f64,
    #[model(skip)]
    note: std::marker::PhantomData<E>,
}

#[test]
fn derived_models_have_dotted_names_build_and_round_trip_through_checkpoints() {
    let dev = Cpu::seed_from_u64(1);
    let model = dev.build_module::<TwoTower<50, f32, Cpu>, f32>();
    assert_eq!(model.mix, 0.5);
    let s = Summary::of::<TwoTower<50, f32, Cpu>, f32, Cpu>();
    let names: Vec<&str> = s.params.iter().map(|p| p.name.as_str()).collect();
    assert!(names.contains(&"left.layers.0.self_attn.w_q.weight"), "{names:?}");
    assert!(!names.contains(&"right.norm.weight") && names.contains(&"left.norm.weight"), "{names:?}");
    assert!(names.contains(&"head.bias"), "{names:?}");
    assert_eq!(s.trainable_params(), model.num_trainable_params());
    assert_eq!(
        s.layers.iter().map(|l| l.path.as_str()).take(3).collect::<Vec<_>>(),
        ["embed", "left.layers.0", "left.norm"]
    );

    let path = std::env::temp_dir().join(format!("typeformer-two-tower-{}.safetensors", std::process::id()));
    let mut saved = model.clone();
    saved.mix = 0.75;
    save_checkpoint(&saved, &path, Default::default()).unwrap();
    let mut loaded = Cpu::seed_from_u64(2).build_module::<TwoTower<50, f32, Cpu>, f32>();
    assert_ne!(loaded.head.weight.as_vec(), saved.head.weight.as_vec());
    load_checkpoint(&mut loaded, &path).unwrap();
    assert_eq!(loaded.head.weight.as_vec(), saved.head.weight.as_vec());
    assert_eq!(
        loaded.right.layers.modules[1].ffn.linear2.bias.as_vec(),
        saved.right.layers.modules[1].ffn.linear2.bias.as_vec()
    );
    assert_eq!(loaded.mix, 0.75);
    std::fs::remove_file(path).unwrap();
}

/// A block generic over its activation, with a renamed field and the dtype and device not last.
#[derive(Debug, Clone, typeformer::Model)]
#[model(bound = "A: Activation")]
struct Tagged<A, E: Dtype, Dev: Storage<E>, const W: usize> {
    #[model(rename = "mlp")]
    ffn: PositionWiseFeedForward<W, 32, A, E, Dev>,
    #[model(scalar, default = 0.25)]
    temperature: f64,
}

#[test]
fn derived_models_take_bounds_renames_and_any_parameter_order() {
    let dev = Cpu::seed_from_u64(3);
    let model = dev.build_module::<Tagged<Gelu, f32, Cpu, 16>, f32>();
    assert_eq!(model.temperature, 0.25);
    let names: Vec<String> =
        Summary::of::<Tagged<Gelu, f32, Cpu, 16>, f32, Cpu>().params.into_iter().map(|p| p.name).collect();
    assert!(
        names.contains(&"mlp.linear1.weight".to_string()) && !names.iter().any(|n| n.starts_with("ffn.")),
        "{names:?}"
    );
    let x: Tensor<(usize, usize, Const<16>), f32, Cpu> = dev.sample_normal_like(&(1, 2, Const));
    assert_eq!(model.ffn.forward(x).shape(), &(1, 2, Const::<16>));
}

typeformer::transformer! {
    /// nanoGPT's `bias=False`.
    NoBiasGpt: DecoderOnly { vocab: 40, d_model: 16, heads: 2, d_ff: 32, layers: 2, max_len: 12, bias: false, dropout: 0.0 }
}

#[test]
fn models_without_biases_train_and_save_no_bias_tensors() {
    use typeformer::io::parameter_shapes;
    use typeformer::train::{label_smoothed_cross_entropy, Adam, AdamConfig};
    // Per block: 4 projections of 16 x 16, two feed-forward matrices of 16 x 32, two norm scales;
    // plus embeddings, positions and the final norm's scale.
    assert_eq!(NoBiasGptSpec::NUM_PARAMS, 40 * 16 + 12 * 16 + 2 * (4 * 256 + 2 * 512 + 2 * 16) + 16);
    let dev = Cpu::seed_from_u64(3);
    let mut model: NoBiasGpt = NoBiasGptSpec::build(&dev).unwrap();
    assert_eq!(model.num_trainable_params(), NoBiasGptSpec::NUM_PARAMS);
    let names: Vec<String> = parameter_shapes(&model).unwrap().into_iter().map(|(n, _)| n).collect();
    assert!(names.iter().all(|n| !n.ends_with(".bias")), "{names:?}");

    let tokens = Tokens::<40>::from_sequences(&[vec![3, 4, 5, 6], vec![7, 8]]).unwrap();
    let labels = Tokens::<40>::from_sequences(&[vec![4, 5, 6, 7], vec![8, 9]]).unwrap();
    let mut opt = Adam::new(AdamConfig::default()).unwrap();
    let grads = model.alloc_grads();
    let loss = label_smoothed_cross_entropy(model.forward_traced(&tokens, grads).unwrap(), &labels, 0.0).unwrap();
    let grads = loss.backward();
    let before = model.blocks.modules[0].ffn.linear1.weight.as_vec();
    opt.update(&mut model, &grads, 1e-2).unwrap();
    assert_ne!(model.blocks.modules[0].ffn.linear1.weight.as_vec(), before, "weights train");
    let block = &model.blocks.modules[1];
    for bias in [block.self_attn.w_q.bias.as_vec(), block.ffn.linear2.bias.as_vec(), block.norm2.norm.bias.as_vec()] {
        assert!(bias.iter().all(|&b| b == 0.0), "biases stay absent (zero)");
    }
}
