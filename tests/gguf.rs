//! Reading llama.cpp's GGUF files: metadata, the tensor table and every block type, against
//! the values the `gguf` package (llama.cpp's own Python code) dequantizes the same file to
//! (`scripts/make_gguf_fixtures.py`); damaged files are errors; and the facts of the real
//! SmolLM2-135M-Instruct file when `scripts/fetch-smollm2.sh` has fetched it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use typeformer::io::{GgmlType, Gguf, GgufValue};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/small.gguf")
}

/// Reference values written by scripts/make_gguf_fixtures.py, by name.
fn expected(file: &str) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(fixture().with_file_name(file)).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

#[test]
fn metadata_and_every_block_type_read_as_llama_cpp_writes_them() {
    let file = Gguf::open(&fixture()).unwrap();
    assert_eq!(file.version, 3);
    assert_eq!(file.get("general.architecture").and_then(GgufValue::as_str), Some("llama"));
    assert_eq!(file.get("llama.block_count").and_then(GgufValue::as_u64), Some(2));
    assert_eq!(file.get("llama.rope.freq_base").and_then(GgufValue::as_f64), Some(10000.0));
    assert_eq!(file.get("tokenizer.ggml.add_bos_token"), Some(&GgufValue::Bool(true)));
    let tokens: Vec<&str> =
        file.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(tokens, ["<s>", "</s>", "a", "b"]);
    let kinds: Vec<&str> = file.tensors.iter().map(|t| t.kind.name()).collect();
    assert_eq!(kinds, ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]);
    let expected = expected("small.expected.safetensors");
    for tensor in &file.tensors {
        let (shape, want) = &expected[&tensor.name];
        assert_eq!(&tensor.shape, shape, "{} is (rows, columns) as written", tensor.name);
        let got = file.read_f32(&tensor.name).unwrap();
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{}[{i}]: {g} against {w}", tensor.name);
        }
    }
}

#[test]
fn damaged_files_are_errors_that_say_what_is_wrong() {
    let bytes = std::fs::read(fixture()).unwrap();
    let dir = std::env::temp_dir().join(format!("typeformer-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let try_open = |name: &str, content: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        Gguf::open(&path).map(|_| ()).unwrap_err().to_string()
    };
    assert!(try_open("magic", b"GGML\x03\0\0\0").contains("not a GGUF file"));
    let mut v9 = bytes.clone();
    v9[4] = 9;
    assert!(try_open("version", &v9).contains("GGUF version 9"));
    let whole = Gguf::open(&fixture()).unwrap();
    let data_end = whole.tensors.iter().map(|t| t.offset + t.bytes).max().unwrap() as usize;
    let header_end = whole.tensors.iter().map(|t| t.offset).min().unwrap() as usize;
    for cut in [6, 20, 100, 700, data_end - 1] {
        let err = try_open("cut", &bytes[..cut]);
        assert!(err.contains("truncated") || err.contains("more than") || err.contains("past the end"), "{cut}: {err}");
    }
    // A count of metadata entries that no file could hold is refused before anything is read.
    let mut huge = bytes.clone();
    huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(try_open("huge", &huge).contains("more than the"));
    // Every single-byte change of the header is an error or a file that reads without a panic.
    for at in (0..header_end).step_by(3) {
        let mut b = bytes.clone();
        b[at] ^= 0x5a;
        let path = dir.join("flip");
        std::fs::write(&path, &b).unwrap();
        if let Ok(file) = Gguf::open(&path) {
            for t in &file.tensors {
                let _ = file.read_f32(&t.name);
            }
        }
    }
    let file = Gguf::open(&fixture()).unwrap();
    assert!(file.read_f32("nothing").unwrap_err().to_string().contains("no tensor `nothing`"));
    let err = typeformer::data::TextTokenizer::from_gguf(&file).unwrap_err().to_string();
    assert!(err.contains("no tokenizer.ggml.model"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The file `scripts/fetch-smollm2.sh` puts in models/, opened; `None` (and a line that says
/// how to fetch it) where it has not been fetched. CI fetches it.
fn smollm2() -> Option<Gguf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        // CI fetches the file and sets this: there a missing file fails instead of skipping.
        assert!(std::env::var_os("TYPEFORMER_REQUIRE_MODELS").is_none(), "{} is missing", path.display());
        eprintln!("skipped: run scripts/fetch-smollm2.sh to fetch {}", path.display());
        return None;
    }
    Some(Gguf::open(&path).unwrap())
}

#[test]
fn smollm2_has_the_architecture_and_tensors_its_model_card_states() {
    let Some(file) = smollm2() else { return };
    assert_eq!((file.version, file.tensors.len()), (3, 272));
    let count = |kind: GgmlType| file.tensors.iter().filter(|t| t.kind == kind).count();
    assert_eq!((count(GgmlType::Q4_1), count(GgmlType::Q8_0), count(GgmlType::F32)), (210, 1, 61));
    let int = |key: &str| file.get(key).and_then(GgufValue::as_u64).unwrap();
    assert_eq!(int("llama.block_count"), 30);
    assert_eq!(int("llama.embedding_length"), 576);
    assert_eq!(int("llama.attention.head_count"), 9);
    assert_eq!(int("llama.attention.head_count_kv"), 3);
    assert_eq!(int("llama.feed_forward_length"), 1536);
    assert_eq!(int("llama.context_length"), 8192);
    assert_eq!((int("tokenizer.ggml.bos_token_id"), int("tokenizer.ggml.eos_token_id")), (1, 2));
    assert_eq!(file.get("llama.rope.freq_base").and_then(GgufValue::as_f64), Some(100000.0));
    assert_eq!(file.get("tokenizer.ggml.tokens").and_then(GgufValue::as_array).map(<[_]>::len), Some(49152));
    assert_eq!(file.get("tokenizer.ggml.merges").and_then(GgufValue::as_array).map(<[_]>::len), Some(48900));
    assert!(file.tensor("output.weight").is_none(), "the output reuses the embedding");
    let embed = file.tensor("token_embd.weight").unwrap();
    assert_eq!((embed.shape.as_slice(), embed.kind), (&[49152, 576][..], GgmlType::Q8_0));
    let values = file.read_f32("token_embd.weight").unwrap();
    assert_eq!(values.len(), 49152 * 576);
    assert!(values.iter().all(|v| v.is_finite()) && values.iter().any(|&v| v != 0.0));
    // Rows as llama.cpp's Python code dequantizes them: Q8_0, Q4_1 and F32.
    let reference = expected("smollm2.expected.safetensors");
    let q = file.read_f32("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.len(), 576 * 576);
    let norm = file.read_f32("blk.0.attn_norm.weight").unwrap();
    for (name, got) in [
        ("token_embd.weight.7042", &values[7042 * 576..7043 * 576]),
        ("blk.0.attn_q.weight.5", &q[5 * 576..6 * 576]),
        ("blk.0.attn_norm.weight", &norm[..]),
    ] {
        let want = &reference[name].1;
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{name}[{i}]: {g} against {w}");
        }
    }
}

/// Ids as Hugging Face transformers gives them for the tokenizer it builds from the same file
/// (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`, `add_special_tokens=False`).
#[test]
fn smollm2s_tokenizer_gives_the_reference_ids_and_decodes_them_back() {
    let Some(file) = smollm2() else { return };
    let tokenizer = typeformer::data::TextTokenizer::from_gguf(&file).unwrap();
    assert_eq!(tokenizer.vocab_size(), 49152);
    let cases: [(&str, &[usize]); 4] = [
        ("The capital of France is", &[504, 3575, 282, 4649, 314]),
        (
            "In 2024, 12345 apples cost $3.50!",
            &[788, 216, 34, 32, 34, 36, 28, 216, 33, 34, 35, 36, 37, 13855, 1708, 1885, 35, 30, 37, 32, 17],
        ),
        (
            "héllo wörld  multiple   spaces\n\nnew",
            &[88, 2756, 31394, 267, 29989, 400, 216, 2701, 256, 5600, 198, 198, 2241],
        ),
        ("<|im_start|>user\nHi<|im_end|>", &[1, 4093, 198, 26843, 2]),
    ];
    let texts: Vec<&str> = cases.iter().map(|(t, _)| *t).collect();
    let ids = tokenizer.encode_batch(&texts).unwrap();
    for ((text, want), got) in cases.iter().zip(&ids) {
        assert_eq!(got.as_slice(), *want, "{text:?}");
        assert_eq!(tokenizer.decode(got).unwrap(), *text);
    }
    assert!(tokenizer.decode(&[49152]).is_err());
}
