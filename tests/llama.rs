//! SmolLM2-135M-Instruct, a Llama-family model, from its GGUF file: ids, logits and greedy
//! continuations equal to Hugging Face transformers' on the same file
//! (`scripts/make_llama_fixtures.py` wrote tests/fixtures/llama/smollm2.json), KV-cached steps
//! equal to a full recompute, and files of another shape refused by name.

use serde_json::Value;
use std::path::Path;
use std::sync::OnceLock;
use typeformer::data::TextTokenizer;
use typeformer::generate::{generate, GenerateConfig, Sampler, SamplingConfig};
use typeformer::io::{load_gguf_llama, load_hf_llama, Gguf};
use typeformer::models::{Llama, SmolLm2_135M};
use typeformer::prelude::*;

type Smol = SmolLm2_135M<f32, Cpu>;

const _: () = assert!(Smol::NUM_PARAMS == 134_515_008, "SmolLM2-135M's parameter count, from its model card");

fn smollm2_path() -> Option<std::path::PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        // CI fetches the file and sets this: there a missing file fails instead of skipping.
        assert!(std::env::var_os("TYPEFORMER_REQUIRE_MODELS").is_none(), "{} is missing", path.display());
        eprintln!("skipped: run scripts/fetch-smollm2.sh to fetch {}", path.display());
        return None;
    }
    Some(path)
}

/// The model and tokenizer, loaded once for all tests of this file.
fn smollm2() -> Option<&'static (Smol, TextTokenizer)> {
    static MODEL: OnceLock<Option<(Smol, TextTokenizer)>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let file = Gguf::open(&smollm2_path()?).unwrap();
            let dev = Cpu::default();
            let mut model = dev.build_module::<Smol, f32>();
            load_gguf_llama(&mut model, &file).unwrap();
            Some((model, TextTokenizer::from_gguf(&file).unwrap()))
        })
        .as_ref()
}

fn reference() -> Value {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama/smollm2.json"))
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

#[test]
fn the_parameter_count_is_the_model_cards() {
    let dev = Cpu::default();
    let model = dev.build_module::<Llama<64, 16, 4, 2, 4, 40, 3, 32, 10_000, TiedOutput, f32, Cpu>, f32>();
    assert_eq!(
        model.num_trainable_params(),
        Llama::<64, 16, 4, 2, 4, 40, 3, 32, 10_000, TiedOutput, f32, Cpu>::NUM_PARAMS
    );
    assert_eq!(Smol::NUM_PARAMS, 134_515_008);
}

#[test]
fn ids_logits_and_greedy_continuations_equal_transformers() {
    let Some((model, tokenizer)) = smollm2() else { return };
    let reference = reference();
    let stride = reference["stride"].as_u64().unwrap() as usize;
    for case in reference["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want_ids = ids(&case["ids"]);
        let got_ids = tokenizer.encode_batch(&[text]).unwrap().remove(0);
        assert_eq!(got_ids, want_ids, "ids of {text:?}");
        let tokens = Tokens::<49152>::from_sequences(std::slice::from_ref(&want_ids)).unwrap();
        let logits = model.forward(&tokens).unwrap().as_vec();
        for (k, p) in case["positions"].as_array().unwrap().iter().enumerate() {
            let p = p.as_u64().unwrap() as usize;
            let row = &logits[p * 49152..(p + 1) * 49152];
            let want: Vec<f64> = case["logits"][k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            let scale = want.iter().fold(0f64, |m, w| m.max(w.abs()));
            for (j, w) in want.iter().enumerate() {
                let g = row[j * stride] as f64;
                assert!((g - w).abs() <= 1e-4 * scale, "{text:?} position {p} logit {}: {g} against {w}", j * stride);
            }
            let top = ids(&case["top"][k]);
            let best = typeformer::generate::argmax(row);
            assert_eq!(best, top[0], "{text:?} position {p}: the most likely next token");
        }
        let cfg = GenerateConfig { max_new_tokens: case["greedy"].as_array().unwrap().len(), stop_tokens: vec![] };
        let mut sampler = Sampler::new(SamplingConfig::greedy()).unwrap();
        let got = generate(model, &want_ids, &cfg, &mut sampler, |_| {}).unwrap();
        assert_eq!(got, ids(&case["greedy"]), "greedy continuation of {text:?}");
    }
}

#[test]
fn france_continues_with_paris() {
    let Some((model, tokenizer)) = smollm2() else { return };
    let prompt = tokenizer.encode_batch(&["The capital of France is"]).unwrap().remove(0);
    assert_eq!(prompt, [504, 3575, 282, 4649, 314]);
    let cfg = GenerateConfig { max_new_tokens: 4, stop_tokens: vec![] };
    let mut sampler = Sampler::new(SamplingConfig::greedy()).unwrap();
    let got = generate(model, &prompt, &cfg, &mut sampler, |_| {}).unwrap();
    assert_eq!(got, [7042, 30, 198, 198]);
    assert_eq!(tokenizer.decode(&got).unwrap(), " Paris.\n\n");
}

#[test]
fn kv_cached_steps_equal_a_full_recompute() {
    let Some((model, _)) = smollm2() else { return };
    let seq = vec![504, 3575, 282, 4649, 314, 7042, 30];
    let full = model.forward(&Tokens::<49152>::from_sequences(std::slice::from_ref(&seq)).unwrap()).unwrap().as_vec();
    let mut state = model.start();
    let mut stepped = model.step(&mut state, &Tokens::from_sequences(&[seq[..3].to_vec()]).unwrap()).unwrap().as_vec();
    for &t in &seq[3..] {
        stepped.extend(model.step(&mut state, &Tokens::from_sequences(&[vec![t]]).unwrap()).unwrap().as_vec());
    }
    assert_eq!(stepped.len(), full.len());
    let worst = full.iter().zip(&stepped).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst < 1e-3, "largest difference between cached steps and a full pass: {worst}");
    // Only the key/value heads are kept: 3 of 9, 64 wide, for 7 positions.
    let cache = state.layers[0].as_ref().unwrap();
    assert_eq!(cache.keys.shape(), &(1, Const::<3>, 7, Const::<64>));
}

#[test]
fn a_file_of_another_shape_is_refused_with_every_difference_named() {
    let Some(path) = smollm2_path() else { return };
    let file = Gguf::open(&path).unwrap();
    let dev = Cpu::default();
    // 576 wide with 8 heads of 72, 2 key/value heads, 2 layers, base 10,000.
    let mut wrong = dev.build_module::<Llama<49152, 576, 8, 2, 72, 1536, 2, 64, 10_000, TiedOutput, f32, Cpu>, f32>();
    let err = load_gguf_llama(&mut wrong, &file).unwrap_err().to_string();
    for key in [
        "llama.block_count is 30",
        "llama.attention.head_count is 9",
        "llama.attention.head_count_kv is 3",
        "llama.rope.dimension_count",
        "llama.rope.freq_base is 100000",
    ] {
        assert!(err.contains(key), "{key} missing from: {err}");
    }
    assert!(!err.contains("feed_forward_length"), "{err}");
    // An untied model needs `output.weight`, which this file does not have.
    let mut untied =
        dev.build_module::<Llama<49152, 576, 9, 3, 64, 1536, 30, 8192, 100_000, UntiedOutputNoBias, f32, Cpu>, f32>();
    let err = load_gguf_llama(&mut untied, &file).unwrap_err().to_string();
    assert!(err.contains("missing: output.weight"), "{err}");
}

#[test]
fn the_tokenizer_from_the_file_gives_transformers_ids_and_decodes_them_back() {
    let Some((_, tokenizer)) = smollm2() else { return };
    for case in reference()["tokenizer"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = tokenizer.encode_batch(&[text]).unwrap().remove(0);
        assert_eq!(got, ids(&case["ids"]), "ids of {text:?}");
        assert_eq!(tokenizer.decode(&got).unwrap(), text, "decoded back");
    }
}

#[test]
fn the_chat_template_renders_as_transformers_and_a_chat_keeps_its_history_in_the_cache() {
    use typeformer::pipelines::{turn_end_tokens, Chat, ChatTemplate, Message};
    let Some((model, tokenizer)) = smollm2() else { return };
    let file = Gguf::open(&smollm2_path().unwrap()).unwrap();
    let template = ChatTemplate::from_gguf(&file).unwrap();
    let question = "What is the capital of France?";
    let reference = reference();
    let chat_case =
        reference["cases"].as_array().unwrap().iter().find(|c| c["text"].as_str().unwrap().contains(question));
    let rendered = template.render(&[Message::new("user", question)], true).unwrap();
    assert_eq!(rendered, chat_case.unwrap()["text"].as_str().unwrap(), "apply_chat_template's text");
    let stop = turn_end_tokens(&file, tokenizer);
    assert!(stop.contains(&2), "<|im_end|> ends a turn: {stop:?}");
    let mut chat = Chat::new(model, tokenizer, &template, None, stop.clone());
    let mut sampler = Sampler::new(SamplingConfig::greedy()).unwrap();
    let mut streamed = String::new();
    let reply = chat
        .reply(question, 20, &mut sampler, |piece| {
            streamed.push_str(piece);
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(reply, "The capital of France is Paris.");
    assert_eq!(streamed, reply);
    // The second turn feeds only its own tokens: the cache holds the first turn, token for
    // token as the whole conversation tokenizes.
    let after_first = chat.positions_used();
    let second = chat.reply("And of Germany?", 20, &mut sampler, |_| std::ops::ControlFlow::Continue(())).unwrap();
    assert!(second.contains("Berlin"), "{second}");
    let whole = template.render(chat.messages(), false).unwrap();
    let ids = tokenizer.encode_batch(&[&whole]).unwrap().remove(0);
    assert!(chat.positions_used() > after_first && chat.positions_used() <= ids.len());
    // The whole conversation fed at once, without the cache of the first turn, replies the same.
    let history = template.render(&chat.messages()[..3], true).unwrap();
    let prompt = tokenizer.encode_batch(&[&history]).unwrap().remove(0);
    let cfg = GenerateConfig { max_new_tokens: 20, stop_tokens: stop };
    let mut sampler = Sampler::new(SamplingConfig::greedy()).unwrap();
    let mut again = generate(model, &prompt, &cfg, &mut sampler, |_| {}).unwrap();
    again.retain(|t| !cfg.stop_tokens.contains(t));
    assert_eq!(tokenizer.decode(&again).unwrap(), second);
    chat.reset();
    assert_eq!(chat.positions_used(), 0);
    assert_eq!(chat.messages(), &[] as &[Message]);
}

/// A tiny random `LlamaForCausalLM` saved by transformers (scripts/make_tiny_llama_fixture.py):
/// untied, 4 query heads sharing 2 key/value heads, rope_theta 5000.
type TinyHf = Llama<64, 16, 4, 2, 4, 40, 2, 32, 5000, UntiedOutputNoBias, f32, Cpu>;

fn tiny_hf_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama/tiny-hf")
}

#[test]
fn a_hugging_face_llama_directory_loads_and_matches_transformers() {
    let dev = Cpu::default();
    let mut model = dev.build_module::<TinyHf, f32>();
    load_hf_llama(&mut model, &tiny_hf_dir()).unwrap();
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(tiny_hf_dir().join("reference.json")).unwrap()).unwrap();
    let prompt = ids(&reference["ids"]);
    let logits = model.forward(&Tokens::<64>::from_sequences(std::slice::from_ref(&prompt)).unwrap()).unwrap().as_vec();
    let want: Vec<f64> = reference["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let scale = want.iter().fold(0f64, |m, w| m.max(w.abs()));
    assert_eq!(logits.len(), want.len());
    for (i, (g, w)) in logits.iter().zip(&want).enumerate() {
        assert!((*g as f64 - w).abs() <= 1e-4 * scale, "logit {i}: {g} against {w}");
    }
    let cfg = GenerateConfig { max_new_tokens: 6, stop_tokens: vec![] };
    let mut sampler = Sampler::new(SamplingConfig::greedy()).unwrap();
    assert_eq!(generate(&model, &prompt, &cfg, &mut sampler, |_| {}).unwrap(), ids(&reference["greedy"]));
}

#[test]
fn a_hugging_face_config_of_another_shape_is_refused_by_key() {
    let dev = Cpu::default();
    // Tied, 3 layers, rope base 10,000: three differences, each named.
    let mut wrong = dev.build_module::<Llama<64, 16, 4, 2, 4, 40, 3, 32, 10_000, TiedOutput, f32, Cpu>, f32>();
    let err = load_hf_llama(&mut wrong, &tiny_hf_dir()).unwrap_err().to_string();
    for key in ["num_hidden_layers is 2", "rope_theta is 5000", "tie_word_embeddings is false"] {
        assert!(err.contains(key), "{key} missing from: {err}");
    }
    let err = load_hf_llama(&mut dev.build_module::<TinyHf, f32>(), Path::new("no/such/dir")).unwrap_err().to_string();
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn a_full_context_refuses_the_turn_and_keeps_the_conversation() {
    use typeformer::pipelines::{Chat, ChatTemplate};
    let Some((_, tokenizer)) = smollm2() else { return };
    // SmolLM2's vocabulary on a random model with a context of 48 positions.
    type Short = Llama<49152, 16, 4, 2, 4, 40, 1, 48, 10_000, TiedOutput, f32, Cpu>;
    let model = Cpu::default().build_module::<Short, f32>();
    let file = Gguf::open(&smollm2_path().unwrap()).unwrap();
    let template = ChatTemplate::from_gguf(&file).unwrap();
    let mut chat = Chat::new(&model, tokenizer, &template, Some("Be brief.".into()), vec![2]);
    let mut sampler = Sampler::new(SamplingConfig::greedy()).unwrap();
    let go = |_: &str| std::ops::ControlFlow::Continue(());
    chat.reply("Hi", 4, &mut sampler, go).unwrap();
    let (messages, used) = (chat.messages().to_vec(), chat.positions_used());
    let err = chat.reply(&"many words ".repeat(20), 4, &mut sampler, go).unwrap_err();
    assert!(matches!(err, typeformer::Error::ContextFull { context: 48, .. }), "{err}");
    assert!(err.to_string().contains("start over"), "{err}");
    assert_eq!((chat.messages(), chat.positions_used()), (&messages[..], used), "the refused turn left no trace");
    // A reply is cut to the room left rather than refused.
    chat.reset();
    let reply = chat.reply("Hi", 1000, &mut sampler, go);
    assert!(reply.is_ok() && chat.positions_used() < 48, "{reply:?}");
}

#[test]
fn the_quantized_blocks_compute_what_the_fp32_copy_computes() {
    use typeformer::io::QuantizedWeights;
    let Some((model, tokenizer)) = smollm2() else { return };
    let file = Gguf::open(&smollm2_path().unwrap()).unwrap();
    let quantized = QuantizedWeights::from_gguf(model, &file).unwrap();
    // 7 projections per block and the tied output, from 92 MiB of blocks.
    assert_eq!(quantized.matrices(), 30 * 7 + 1);
    assert!(quantized.bytes() < 110 << 20, "{} bytes", quantized.bytes());
    for text in ["The capital of France is", "def fibonacci(n):\n    if n <"] {
        let prompt = tokenizer.encode_batch(&[text]).unwrap().remove(0);
        let tokens = Tokens::<49152>::from_sequences(std::slice::from_ref(&prompt)).unwrap();
        // The last token alone: one row, the blocks read by every projection and the output.
        let last = Tokens::<49152>::from_sequences(&[prompt[prompt.len() - 1..].to_vec()]).unwrap();
        let before = quantized.products();
        let fast = quantized.run(|| model.forward(&last)).unwrap().as_vec();
        assert!(quantized.products() - before > 30 * 5, "{} products", quantized.products() - before);
        let plain = model.forward(&last).unwrap().as_vec();
        // A prompt (many rows) multiplies by the f32 copy.
        let before = quantized.products();
        let _ = quantized.run(|| model.forward(&tokens)).unwrap();
        assert_eq!(quantized.products(), before);
        let scale = plain.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = fast.iter().zip(&plain).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst <= 1e-4 * scale, "{text:?}: {worst} against a scale of {scale}");
        let cfg = GenerateConfig { max_new_tokens: 12, stop_tokens: vec![] };
        let mut sampler = Sampler::new(SamplingConfig::greedy()).unwrap();
        let fast = quantized.run(|| generate(model, &prompt, &cfg, &mut sampler, |_| {})).unwrap();
        let plain = generate(model, &prompt, &cfg, &mut sampler, |_| {}).unwrap();
        assert_eq!(fast, plain, "greedy continuation of {text:?}");
    }
}

#[test]
fn streamed_text_is_whole_characters_that_add_up_to_the_text() {
    use typeformer::pipelines::Streamed;
    let Some((_, tokenizer)) = smollm2() else { return };
    for text in ["Unicode: café, naïve, 東京, emoji 🎉, Ελληνικά", "  two  spaces,\tand\n\nnewlines 12345"]
    {
        let ids = tokenizer.encode_plain(text).unwrap();
        let mut pieces = Vec::new();
        let mut on = |p: &str| {
            pieces.push(p.to_string());
            std::ops::ControlFlow::Continue(())
        };
        let mut stream = Streamed::default();
        for &id in &ids {
            let _ = stream.push(tokenizer, id, &mut on).unwrap();
        }
        let _ = stream.finish(tokenizer, &mut on).unwrap();
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
        assert_eq!(pieces.concat(), text);
        assert_eq!(stream.text(), text);
        assert!(pieces.len() > 1 && pieces.len() <= ids.len());
    }
}
