//! Training end to end on a tiny budget, checkpoints, and the loss.

use std::collections::HashMap;
use typeformer::data::{Seq2SeqBatch, Task, TaskData, TaskSpec};
use typeformer::generate::BeamConfig;
use typeformer::io::{load_checkpoint, parameter_shapes, save_checkpoint};
use typeformer::prelude::*;
use typeformer::train::{
    exact_match, label_smoothed_cross_entropy, run_task, AdamConfig, Decoding, TaskRun, TrainConfig,
};

/// A model small enough to learn a short task in seconds in the test profile.
type Tiny<E = f32> =
    EncoderDecoder<TASK_VOCAB, TASK_VOCAB, 32, 4, 8, 64, 1, 1, 16, PostNorm, Relu, Sinusoidal, SharedTied, E, Cpu>;

fn spec(task: Task) -> TaskSpec {
    TaskSpec { task, symbols: 5, min_len: 1, max_len: 5 }
}

#[test]
fn the_model_learns_the_reverse_task() {
    let dev = Cpu::seed_from_u64(1);
    let run = TaskRun {
        spec: spec(Task::Reverse),
        train: TrainConfig {
            steps: 400,
            batch_size: 32,
            label_smoothing: 0.1,
            warmup: 60,
            lr_factor: 0.5,
            cooldown: 0.0,
            adam: AdamConfig::default(),
        },
        dropout: 0.0,
        eval_size: 200,
        seed: 3,
        out_dir: None,
        overwrite: false,
        stop: None,
        model_name: "tiny".into(),
        beam: Some(BeamConfig { width: 4, length_penalty: 1.0, max_len: 0 }),
    };
    // Before training: how well does an untrained model of the same seed do?
    let untrained = dev.build_module::<Tiny, f32>();
    let data = TaskData::new(run.spec, run.eval_size, run.seed).unwrap();
    let (before, _) =
        exact_match::<Tiny, TASK_VOCAB, TASK_VOCAB, f32, Cpu>(&untrained, data.held_out(), 100, Decoding::Greedy)
            .unwrap();

    let (model, report) = run_task::<Tiny, TASK_VOCAB, f32, Cpu>(&run, &dev, |_| {}).unwrap();
    let first: f64 = report.logs[..20].iter().map(|l| l.loss).sum::<f64>() / 20.0;
    let last: f64 = report.logs[report.logs.len() - 20..].iter().map(|l| l.loss).sum::<f64>() / 20.0;
    assert!(last < 0.5 * first, "loss fell from {first:.3} to only {last:.3}");
    assert!(
        report.evaluation.exact_match > 0.5 && report.evaluation.exact_match > before + 0.4,
        "exact match {:.3} (untrained {before:.3})",
        report.evaluation.exact_match
    );

    // Beam search does about as well as greedy (it may pick a likelier wrong output now and then:
    // a higher score is not exact match), and width 1 is greedy.
    let beam = report.evaluation.beam_exact_match.unwrap();
    assert!(
        beam >= report.evaluation.exact_match - 0.03,
        "beam {beam:.3} is well below greedy {:.3}",
        report.evaluation.exact_match
    );
    let (width_one, outputs) = exact_match::<Tiny, TASK_VOCAB, TASK_VOCAB, f32, Cpu>(
        &model,
        data.held_out(),
        100,
        Decoding::Beam(BeamConfig { width: 1, length_penalty: 0.0, max_len: 0 }),
    )
    .unwrap();
    assert_eq!(width_one, report.evaluation.exact_match);
    assert!(outputs.iter().zip(&report.evaluation.decoded).all(|(o, (_, greedy))| o == greedy));
}

#[test]
fn checkpoints_round_trip_exactly_and_are_written_atomically() {
    let dir = std::env::temp_dir().join(format!("typeformer-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    let dev = Cpu::seed_from_u64(5);
    let model = dev.build_module::<TaskSmall<f32, Cpu>, f32>();
    save_checkpoint(&model, &path, HashMap::from([("task".to_string(), "copy".to_string())])).unwrap();
    // No temporary file is left beside it.
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("model.safetensors")]);

    let mut other = Cpu::seed_from_u64(6).build_module::<TaskSmall<f32, Cpu>, f32>();
    assert_ne!(other.src_embed.weight.as_vec(), model.src_embed.weight.as_vec());
    let metadata = load_checkpoint(&mut other, &path).unwrap();
    assert_eq!(metadata["task"], "copy");
    let src = Tokens::<TASK_VOCAB>::from_sequences(&[vec![3, 4, 5, 6]]).unwrap();
    let tgt = Tokens::<TASK_VOCAB>::from_sequences(&[vec![1, 6, 5]]).unwrap();
    assert_eq!(model.forward(&src, &tgt).unwrap().as_vec(), other.forward(&src, &tgt).unwrap().as_vec());

    // Names are the stable dotted paths; the sinusoidal table is not stored.
    let names: Vec<String> = parameter_shapes(&model).unwrap().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"encoder.layers.0.self_attn.w_q.weight".to_string()), "{names:?}");
    assert!(names.contains(&"decoder.layers.1.cross_attn.w_o.bias".to_string()));
    assert!(!names.iter().any(|n| n.contains("pos")));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A checkpoint as typeformer wrote it before projection weights were stored `(in, out)`:
/// `[out, in]` with the old axis order, and no layout entry in the metadata.
fn write_old_layout_checkpoint(from: &std::path::Path, to: &std::path::Path) {
    rewrite_layout(from, to, None, true);
}

/// `from` rewritten as an older typeformer wrote it: the output head, generator and pooler
/// `[out, in]`, and with `blocks` the blocks' projections too; `layout` the metadata entry.
fn rewrite_layout(from: &std::path::Path, to: &std::path::Path, layout: Option<&str>, blocks: bool) {
    let bytes = std::fs::read(from).unwrap();
    let file = ::safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in file.tensors() {
        let floats: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let shape = view.shape().to_vec();
        // Ours (rows = the input axes) -> old (the output axes first).
        let (rows, old_shape) = match (name.rsplit('.').nth(1).unwrap(), name.ends_with(".weight"), &shape[..]) {
            ("w_q" | "w_k" | "w_v", true, &[d, h, hd]) if blocks => (Some(d), vec![h, hd, d]),
            ("w_o", true, &[h, hd, d]) if blocks => (Some(h * hd), vec![d, h, hd]),
            ("linear1" | "linear2", true, &[i, o]) if blocks => (Some(i), vec![o, i]),
            ("head" | "generator" | "pooler", true, &[i, o]) => (Some(i), vec![o, i]),
            _ => (None, shape.clone()),
        };
        let values = match rows {
            None => floats,
            Some(rows) => {
                let cols = floats.len() / rows;
                (0..floats.len()).map(|j| floats[(j % rows) * cols + j / rows]).collect()
            }
        };
        data.push((name, old_shape, values.iter().flat_map(|v| v.to_le_bytes()).collect()));
    }
    let views: Vec<_> = data
        .iter()
        .map(|(n, s, b)| {
            (n.as_str(), ::safetensors::tensor::TensorView::new(::safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    let mut metadata: HashMap<String, String> =
        file_metadata(&bytes).into_iter().filter(|(k, _)| !k.starts_with("typeformer.")).collect();
    if let Some(layout) = layout {
        metadata.insert("typeformer.projection_weights".into(), layout.into());
    }
    std::fs::write(to, ::safetensors::serialize(views, &Some(metadata)).unwrap()).unwrap();
}

fn file_metadata(bytes: &[u8]) -> HashMap<String, String> {
    let (_, header) = ::safetensors::SafeTensors::read_metadata(bytes).unwrap();
    header.metadata().clone().unwrap_or_default()
}

#[test]
fn checkpoints_from_before_the_in_out_layout_load_transposed() {
    let dir = std::env::temp_dir().join(format!("typeformer-old-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (path, old) = (dir.join("model.safetensors"), dir.join("old.safetensors"));
    let model = Cpu::seed_from_u64(8).build_module::<TaskSmall<f32, Cpu>, f32>();
    save_checkpoint(&model, &path, HashMap::new()).unwrap();
    write_old_layout_checkpoint(&path, &old);
    let mut other = Cpu::seed_from_u64(9).build_module::<TaskSmall<f32, Cpu>, f32>();
    load_checkpoint(&mut other, &old).unwrap();
    let src = Tokens::<TASK_VOCAB>::from_sequences(&[vec![3, 4, 5, 6]]).unwrap();
    let tgt = Tokens::<TASK_VOCAB>::from_sequences(&[vec![1, 6, 5]]).unwrap();
    assert_eq!(model.forward(&src, &tgt).unwrap().as_vec(), other.forward(&src, &tgt).unwrap().as_vec());
    assert_eq!(
        model.encoder.layers[0].self_attn.w_q.weight.as_vec(),
        other.encoder.layers[0].self_attn.w_q.weight.as_vec()
    );
    // Untied output heads were stored [out, in] longer than the blocks' projections, in both
    // earlier layouts.
    type Untied = DecoderOnly<30, 16, 2, 8, 32, 1, 8, PreNorm, GeluTanh, Learned, UntiedOutput, f32, Cpu>;
    let gpt = Cpu::seed_from_u64(10).build_module::<Untied, f32>();
    save_checkpoint(&gpt, &path, HashMap::new()).unwrap();
    let tokens = Tokens::<30>::from_sequences(&[vec![1, 2, 3]]).unwrap();
    for (layout, blocks) in [(Some("in,out"), false), (None, true)] {
        rewrite_layout(&path, &old, layout, blocks);
        let mut other = Cpu::seed_from_u64(11).build_module::<Untied, f32>();
        load_checkpoint(&mut other, &old).unwrap();
        assert_eq!(
            gpt.head.linear.as_ref().unwrap().weight.as_vec(),
            other.head.linear.as_ref().unwrap().weight.as_vec()
        );
        assert_eq!(gpt.forward(&tokens).unwrap().as_vec(), other.forward(&tokens).unwrap().as_vec(), "{layout:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_mismatched_or_corrupt_checkpoint_is_an_error_and_leaves_the_model_unchanged() {
    let dir = std::env::temp_dir().join(format!("typeformer-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("small.safetensors");
    let dev = Cpu::seed_from_u64(7);
    save_checkpoint(&dev.build_module::<TaskSmall<f32, Cpu>, f32>(), &path, HashMap::new()).unwrap();

    let mut medium = dev.build_module::<TaskMedium<f32, Cpu>, f32>();
    let before = medium.src_embed.weight.as_vec();
    let err = load_checkpoint(&mut medium, &path).unwrap_err().to_string();
    assert!(err.contains("wrong shape: src_embed.weight is [19, 64] in the file, the model needs [19, 128]"), "{err}");
    assert!(err.contains("missing: encoder.layers.2.self_attn.w_q.weight"), "{err}");
    assert_eq!(medium.src_embed.weight.as_vec(), before);

    let bytes = std::fs::read(&path).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let mut small = dev.build_module::<TaskSmall<f32, Cpu>, f32>();
    let err = load_checkpoint(&mut small, &truncated).unwrap_err().to_string();
    let half = bytes.len() / 2;
    assert!(
        err.contains(&format!(
            "truncated: the file is {half} bytes, its header says the tensors end at byte {}",
            bytes.len()
        )),
        "{err}"
    );
    std::fs::write(&truncated, b"garbage").unwrap();
    let err = load_checkpoint(&mut small, &truncated).unwrap_err().to_string();
    assert!(err.contains("not a safetensors file") && err.contains("truncated.safetensors"), "{err}");
    let missing = load_checkpoint(&mut small, &dir.join("nope.safetensors")).unwrap_err().to_string();
    assert!(missing.contains("nope.safetensors"), "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn label_smoothing_matches_its_definition() {
    // Reference values computed by hand from the definition (and equal to PyTorch's
    // F.cross_entropy(..., label_smoothing=0.1, ignore_index=0)): with logits [0, ln 2, ln 5]
    // over 3 classes, log_softmax = [ln 1/8, ln 2/8, ln 5/8].
    let dev = Cpu::default();
    let (l1, l2, l5) = ((1.0f64 / 8.0).ln(), (2.0f64 / 8.0).ln(), (5.0f64 / 8.0).ln());
    let row = [0.0, 2f64.ln(), 5f64.ln()];
    // Batch of 1, two positions, the second one padding.
    let logits: Tensor<(usize, usize, Const<3>), f64, _> = dev.tensor_from_vec([row, row].concat(), (1, 2, Const));
    let labels = Tokens::<3>::new(vec![2, 0], 1, 2, vec![1]).unwrap();
    let loss = label_smoothed_cross_entropy(logits.clone(), &labels, 0.1).unwrap().as_vec()[0];
    let expected = -(0.9 * l5 + 0.1 / 3.0 * (l1 + l2 + l5));
    assert!((loss - expected).abs() < 1e-12, "{loss} vs {expected}");
    let plain = label_smoothed_cross_entropy(logits, &labels, 0.0).unwrap().as_vec()[0];
    assert!((plain + l5).abs() < 1e-12);
}

#[test]
fn bad_inputs_are_clear_errors() {
    assert!(Tokens::<5>::from_sequences(&[vec![1, 7]])
        .unwrap_err()
        .to_string()
        .contains("token id 7 at batch item 0, position 1 is outside the vocabulary of 5 tokens"));
    assert!(Tokens::<5>::from_sequences(&[]).is_err());
    let dev = Cpu::default();
    let model = dev.build_module::<TaskSmall<f32, Cpu>, f32>();
    let src = Tokens::<TASK_VOCAB>::from_sequences(&[vec![3], vec![4]]).unwrap();
    let tgt = Tokens::<TASK_VOCAB>::from_sequences(&[vec![1]]).unwrap();
    let err = model.forward(&src, &tgt).unwrap_err().to_string();
    assert!(err.contains("target batch size vs source batch size: expected 2, found 1"), "{err}");
    let long = Tokens::<TASK_VOCAB>::from_sequences(&[vec![3; TASK_POSITIONS + 1]]).unwrap();
    let err = model.forward(&long, &tgt).unwrap_err().to_string();
    assert!(err.contains("does not fit the positional table of 65 positions"), "{err}");
    let mut bad_dropout = model.clone();
    assert!(typeformer::nn::set_dropout(&mut bad_dropout, 1.5).is_err());
}

#[test]
fn parameter_counts_are_known_from_the_type() {
    let dev = Cpu::default();
    let model = dev.build_module::<TaskSmall<f32, Cpu>, f32>();
    assert_eq!(TaskSmall::<f32, Cpu>::NUM_PARAMS, model.num_trainable_params());
    let untied = dev
        .build_module::<EncoderDecoder<10, 12, 16, 2, 8, 32, 1, 2, 8, PreNorm, Gelu, Learned, Separate, f32, Cpu>, f32>(
        );
    assert_eq!(
        EncoderDecoder::<10, 12, 16, 2, 8, 32, 1, 2, 8, PreNorm, Gelu, Learned, Separate, f32, Cpu>::NUM_PARAMS,
        untied.num_trainable_params()
    );
    // PyTorch's nn.Transformer(512, 8, 6, 6, 2048) has 44,140,544 parameters; with the shared
    // 37,000 x 512 embedding, the paper's base model.
    assert_eq!(PaperBase::<f32, Cpu>::NUM_PARAMS, 44_140_544 + 37_000 * 512);
    assert_eq!(PaperBig::<f32, Cpu>::NUM_PARAMS, 176_361_472 + 37_000 * 1024);
}

#[test]
fn dropout_is_on_in_training_and_off_in_inference() {
    let dev = Cpu::seed_from_u64(9);
    let mut model = dev.build_module::<TaskSmall<f32, Cpu>, f32>();
    typeformer::nn::set_dropout(&mut model, 0.3).unwrap();
    let src = Tokens::<TASK_VOCAB>::from_sequences(&[vec![3, 4, 5, 6], vec![7, 8]]).unwrap();
    let tgt = Tokens::<TASK_VOCAB>::from_sequences(&[vec![1, 6, 5], vec![1, 8]]).unwrap();
    let infer = |m: &TaskSmall<f32, Cpu>| m.forward(&src, &tgt).unwrap().as_vec();
    let train =
        |m: &TaskSmall<f32, Cpu>| m.forward_traced(&src, &tgt, m.alloc_grads()).unwrap().retaped::<NoneTape>().as_vec();
    assert_eq!(infer(&model), infer(&model), "inference is deterministic");
    assert_ne!(train(&model), train(&model), "training passes draw fresh dropout masks");
    assert_ne!(train(&model), infer(&model));
    typeformer::nn::set_dropout(&mut model, 0.0).unwrap();
    let (a, b) = (train(&model), infer(&model));
    assert!(
        a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5),
        "without dropout, a training pass computes the inference values"
    );
}

type TinyLm = DecoderOnly<20, 16, 2, 8, 32, 2, 12, PreNorm, GeluTanh, Learned, TiedOutput, f32, Cpu>;

#[test]
fn generation_is_seeded_stops_and_rejects_bad_input() {
    use typeformer::generate::{generate, GenerateConfig, Sampler, SamplingConfig};
    let dev = Cpu::seed_from_u64(2);
    let model = dev.build_module::<TinyLm, f32>();
    let sampling = SamplingConfig { temperature: 1.0, top_k: Some(10), top_p: Some(0.9), seed: 11 };
    let cfg = GenerateConfig { max_new_tokens: 8, stop_tokens: vec![] };
    let run = |seed| {
        let mut sampler = Sampler::new(SamplingConfig { seed, ..sampling }).unwrap();
        let mut streamed = Vec::new();
        let out = generate(&model, &[1, 2, 3], &cfg, &mut sampler, |t| streamed.push(t)).unwrap();
        assert_eq!(out, streamed);
        out
    };
    assert_eq!(run(11), run(11));
    assert_eq!(run(11).len(), 8);
    // Greedy generation equals repeated argmax over full passes.
    let mut greedy = Sampler::new(SamplingConfig::greedy()).unwrap();
    let out = generate(&model, &[1, 2, 3], &cfg, &mut greedy, |_| {}).unwrap();
    let mut seq = vec![1, 2, 3];
    for _ in 0..8 {
        let logits = model.forward(&Tokens::from_sequences(&[seq.clone()]).unwrap()).unwrap().as_vec();
        seq.push(typeformer::generate::argmax(&logits[logits.len() - 20..]));
    }
    assert_eq!(out, seq[3..]);
    // A stop token ends generation and is included.
    let stop = GenerateConfig { max_new_tokens: 8, stop_tokens: vec![out[2]] };
    let mut greedy = Sampler::new(SamplingConfig::greedy()).unwrap();
    assert_eq!(
        generate(&model, &[1, 2, 3], &stop, &mut greedy, |_| {}).unwrap(),
        out[..=out.iter().position(|&t| t == out[2]).unwrap()]
    );

    let mut s = Sampler::new(SamplingConfig::greedy()).unwrap();
    let too_long =
        generate(&model, &[1; 8], &GenerateConfig { max_new_tokens: 5, stop_tokens: vec![] }, &mut s, |_| {});
    let err = too_long.unwrap_err().to_string();
    assert!(err.contains("needs 13 positions, but the model's context is 12: ask for at most 4 new tokens"), "{err}");
    assert!(generate(&model, &[], &cfg, &mut s, |_| {}).unwrap_err().to_string().contains("prompt is empty"));
    let err = generate(&model, &[1, 25], &cfg, &mut s, |_| {}).unwrap_err().to_string();
    assert!(err.contains("token id 25") && err.contains("vocabulary of 20 tokens"), "{err}");
}

#[test]
fn language_model_parameter_counts() {
    let dev = Cpu::default();
    assert_eq!(TinyLm::NUM_PARAMS, dev.build_module::<TinyLm, f32>().num_trainable_params());
    type Untied = DecoderOnly<20, 16, 2, 8, 32, 1, 12, PostNorm, Relu, Sinusoidal, UntiedOutput, f32, Cpu>;
    assert_eq!(Untied::NUM_PARAMS, dev.build_module::<Untied, f32>().num_trainable_params());
    // Hugging Face's GPT-2 small (tied output) has 124,439,808 parameters.
    assert_eq!(Gpt2Small::<f32, Cpu>::NUM_PARAMS, 124_439_808);
}

type ByteLm = DecoderOnly<256, 16, 2, 8, 32, 1, 16, PreNorm, GeluTanh, Learned, TiedOutput, f32, Cpu>;

#[test]
fn a_resumed_language_model_run_continues_exactly() {
    use std::sync::atomic::AtomicBool;
    use typeformer::data::{ByteCorpus, LmSource};
    use typeformer::io::{latest_checkpoint, RunLock};
    use typeformer::train::{load_lm_checkpoint, train_language_model, Adam, LmRun, LmStop, LmTrainConfig};
    let text: Vec<u8> = "the quick brown fox jumps over the lazy dog. ".repeat(20).into_bytes();
    let source = LmSource::Text(ByteCorpus::from_bytes(text).unwrap());
    let cfg = |steps| LmTrainConfig {
        steps,
        batch_size: 4,
        context: 16,
        warmup: 5,
        lr_factor: 1.0,
        adam: AdamConfig::default(),
        seed: 4,
        eval_every: 2,
        checkpoint_every: 3,
        model_name: "byte-lm".into(),
    };
    let meta = HashMap::from([("model".to_string(), "byte-lm".to_string())]);
    let base = std::env::temp_dir().join(format!("typeformer-resume-{}", std::process::id()));
    let fresh = |dir: &str| {
        let dev = Cpu::seed_from_u64(8);
        let mut model = dev.build_module::<ByteLm, f32>();
        // Dropout on: its masks must resume exactly too.
        typeformer::nn::set_dropout(&mut model, 0.2).unwrap();
        (LmRun { model, opt: Adam::new(AdamConfig::default()).unwrap(), logs: Vec::new() }, base.join(dir))
    };
    let never = AtomicBool::new(false);

    let (mut straight, dir) = fresh("straight");
    let lock = RunLock::acquire(&dir).unwrap();
    assert_eq!(
        train_language_model(&mut straight, &source, &cfg(6), &lock, meta.clone(), &never, |_| {}).unwrap(),
        LmStop::Finished
    );

    let (mut first, dir) = fresh("resumed");
    let lock = RunLock::acquire(&dir).unwrap();
    train_language_model(&mut first, &source, &cfg(3), &lock, meta.clone(), &never, |_| {}).unwrap();
    drop(lock);
    let mut resumed =
        load_lm_checkpoint::<ByteLm, f32, Cpu>(&dir, &Cpu::seed_from_u64(99), "byte-lm", AdamConfig::default())
            .unwrap()
            .run;
    assert_eq!(resumed.opt.step, 3);
    let lock = RunLock::acquire(&dir).unwrap();
    train_language_model(&mut resumed, &source, &cfg(6), &lock, meta.clone(), &never, |_| {}).unwrap();

    assert!(
        straight.model.embed.weight.as_vec() == resumed.model.embed.weight.as_vec(),
        "embeddings differ after resuming"
    );
    let w2 = |run: &LmRun<ByteLm, f32, Cpu>| run.model.blocks[0].ffn.linear2.weight.as_vec();
    assert!(w2(&straight) == w2(&resumed), "feed-forward weights differ after resuming");
    let losses =
        |run: &LmRun<ByteLm, f32, Cpu>| run.logs.iter().map(|l| (l.step, l.loss, l.val_loss)).collect::<Vec<_>>();
    assert_eq!(losses(&straight).len(), 6);
    for (a, b) in losses(&straight).iter().zip(losses(&resumed)) {
        assert_eq!(a.0, b.0);
        assert!((a.1 - b.1).abs() < 1e-5 && a.2.zip(b.2).is_none_or(|(x, y)| (x - y).abs() < 1e-5), "{a:?} vs {b:?}");
    }

    // A checkpoint of another model is refused by name.
    let err = load_lm_checkpoint::<ByteLm, f32, Cpu>(&dir, &Cpu::default(), "other", AdamConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("it holds a `byte-lm` model, but a `other` language model was expected"), "{err}");

    // Optimizer state from before projection weights were stored (in, out) is refused.
    let checkpoint = latest_checkpoint(&dir).unwrap();
    let (vectors, mut metadata) =
        typeformer::io::load_vectors::<f32>(&checkpoint.path("optimizer.safetensors")).unwrap();
    metadata.remove("typeformer.projection_weights");
    let vectors: Vec<_> = vectors.into_iter().collect();
    let model = checkpoint.path("model.safetensors");
    let copy_model = |path: &std::path::Path| {
        std::fs::copy(&model, path).map(|_| ()).map_err(|source| typeformer::Error::Io { path: path.into(), source })
    };
    let old_state = |path: &std::path::Path| typeformer::io::save_vectors(path, &vectors, metadata.clone());
    lock.commit(6, &[("model.safetensors", &copy_model), ("optimizer.safetensors", &old_state)]).unwrap();
    let err = load_lm_checkpoint::<ByteLm, f32, Cpu>(&dir, &Cpu::default(), "byte-lm", AdamConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("before projection weights were stored (in, out)") && err.contains("wrong weights"), "{err}");
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn the_freeing_backward_pass_computes_the_same_gradients_as_dfdx() {
    use dfdx::optim::{Optimizer, Sgd, SgdConfig};
    let dev = Cpu::seed_from_u64(4);
    let mut model = dev.build_module::<Tiny, f32>();
    typeformer::nn::set_dropout(&mut model, 0.0).unwrap();
    let mut data = TaskData::new(spec(Task::Reverse), 40, 1).unwrap();
    let batch = Seq2SeqBatch::<TASK_VOCAB, TASK_VOCAB>::new(&data.train_examples(16)).unwrap();
    let forward = |m: &Tiny| m.forward(&batch.src, &batch.tgt_in).unwrap().as_vec();
    // One SGD step (lr 1) from each pass's gradients: any difference in any gradient shows.
    let step = |free: bool| {
        let logits = model.forward_traced(&batch.src, &batch.tgt_in, model.alloc_grads()).unwrap();
        let loss = label_smoothed_cross_entropy(logits, &batch.labels, 0.1).unwrap();
        let grads = if free { typeformer::train::backward(loss).unwrap() } else { loss.backward() };
        let mut updated = model.clone();
        let mut sgd = Sgd::new(&updated, SgdConfig { lr: 1.0, momentum: None, weight_decay: None });
        sgd.update(&mut updated, &grads).unwrap();
        forward(&updated)
    };
    let (kept, freed) = (step(false), step(true));
    assert_ne!(kept, forward(&model), "the step changes the model");
    assert_eq!(kept, freed, "freeing consumed gradients changes no parameter gradient");
}

/// The main job's guarantee on a small budget: the default recipe (warmup, cooldown, label
/// smoothing, Adam) on a small model learns to reverse held-out sequences all but
/// perfectly. Without the cooldown the last weights land wherever the noisy last steps put
/// them, and without the per-length cap on held-out sources the one-symbol inputs are never
/// trained on: either regression drops this below the threshold.
#[test]
fn the_default_recipe_reverses_held_out_sequences_on_a_small_budget() {
    let run = TaskRun {
        spec: TaskSpec { task: Task::Reverse, symbols: 6, min_len: 1, max_len: 6 },
        // 400 steps reach 0.997 here; without the cooldown, 0.953.
        train: TrainConfig { steps: 400, batch_size: 32, warmup: 100, ..TrainConfig::default() },
        dropout: 0.0,
        eval_size: 300,
        seed: 0,
        out_dir: None,
        overwrite: false,
        stop: None,
        model_name: "small".into(),
        beam: None,
    };
    let dev = Cpu::seed_from_u64(0);
    let (_, report) = run_task::<Tiny, TASK_VOCAB, f32, Cpu>(&run, &dev, |_| {}).unwrap();
    let em = report.evaluation.exact_match;
    assert!(em >= 0.98, "exact match {em:.3} on {} held-out sequences", report.evaluation.decoded.len());
}

#[test]
fn incremental_decoding_refuses_padded_target_chunks() {
    let dev = Cpu::seed_from_u64(0);
    let model = dev.build_module::<Tiny, f32>();
    let src = Tokens::<TASK_VOCAB>::from_sequences(&[vec![3, 4], vec![5]]).unwrap();
    let memory = model.encode(&src, NoneTape).unwrap();
    let mut state = model.start_decoding(&memory, src.lengths()).unwrap();
    // Padding would enter the keys and values of the cache as if it were target tokens.
    let padded = Tokens::<TASK_VOCAB>::from_sequences(&[vec![1, 3], vec![1]]).unwrap();
    let err = model.decode_step(&mut state, &padded).unwrap_err().to_string();
    assert!(err.contains("unpadded target tokens"), "{err}");
    let full = Tokens::<TASK_VOCAB>::from_sequences(&[vec![1, 3], vec![1, 4]]).unwrap();
    assert!(model.decode_step(&mut state, &full).is_ok());
}

#[test]
fn optimizer_state_from_before_heads_were_in_out_resumes_with_its_moments_transposed() {
    use typeformer::train::{backward, Adam};
    type Untied = DecoderOnly<30, 16, 2, 8, 32, 1, 8, PreNorm, GeluTanh, Learned, UntiedOutput, f32, Cpu>;
    let dir = std::env::temp_dir().join(format!("typeformer-old-adam-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dev = Cpu::seed_from_u64(12);
    let mut model = dev.build_module::<Untied, f32>();
    let mut adam = Adam::new(AdamConfig::default()).unwrap();
    let tokens = Tokens::<30>::from_sequences(&[vec![1, 2, 3, 4]]).unwrap();
    let loss = model.forward_traced(&tokens, model.alloc_grads()).unwrap().square().mean();
    adam.update(&mut model, &backward(loss).unwrap(), 1e-3).unwrap();
    let (path, old, again) = (dir.join("adam.safetensors"), dir.join("old.safetensors"), dir.join("again.safetensors"));
    adam.save(&path).unwrap();
    // As the previous layout stored it: the head's moments [out, in].
    let shapes = parameter_shapes(&model).unwrap();
    let head = shapes.iter().position(|(n, _)| n == "head.weight").expect("an untied head");
    let (i, o) = (shapes[head].1[0], shapes[head].1[1]);
    let (mut vectors, mut metadata) = typeformer::io::load_vectors::<f32>(&path).unwrap();
    for key in [format!("m.{head}"), format!("v.{head}")] {
        let v = &vectors[&key];
        let transposed: Vec<f32> =
            (0..o).flat_map(|c| (0..i).map(move |r| (r, c))).map(|(r, c)| v[r * o + c]).collect();
        vectors.insert(key, transposed);
    }
    metadata.insert("typeformer.projection_weights".into(), "in,out".into());
    let vectors: Vec<(String, Vec<f32>)> = vectors.into_iter().collect();
    typeformer::io::save_vectors(&old, &vectors, metadata).unwrap();
    Adam::<f32, Cpu>::load(AdamConfig::default(), &old, &dev, &shapes).unwrap().save(&again).unwrap();
    let (want, _) = typeformer::io::load_vectors::<f32>(&path).unwrap();
    let (got, _) = typeformer::io::load_vectors::<f32>(&again).unwrap();
    assert_eq!(want, got, "the moments are those of the current layout again");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_layer_dropout_of_an_earlier_checkpoint_applies_to_each_residual_connection() {
    let dir = std::env::temp_dir().join(format!("typeformer-old-dropout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (path, old) = (dir.join("model.safetensors"), dir.join("old.safetensors"));
    let mut model = Cpu::seed_from_u64(8).build_module::<TaskSmall<f32, Cpu>, f32>();
    typeformer::nn::set_dropout(&mut model, 0.3).unwrap();
    save_checkpoint(&model, &path, HashMap::new()).unwrap();
    // As before residual connections were modules: one `dropout` per layer, none per norm.
    let bytes = std::fs::read(&path).unwrap();
    let file = ::safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut metadata = file_metadata(&bytes);
    let per_norm: Vec<String> =
        metadata.keys().filter(|k| k.contains(".norm") && k.ends_with(".dropout")).cloned().collect();
    assert!(!per_norm.is_empty(), "{metadata:?}");
    for key in per_norm {
        metadata.remove(&key);
        let (layer, _) = key.strip_suffix(".dropout").unwrap().rsplit_once('.').unwrap();
        metadata.insert(format!("{layer}.dropout"), "0.3".into());
    }
    let views: Vec<_> = file.tensors();
    std::fs::write(&old, ::safetensors::serialize(views, &Some(metadata)).unwrap()).unwrap();
    let mut other = Cpu::seed_from_u64(9).build_module::<TaskSmall<f32, Cpu>, f32>();
    load_checkpoint(&mut other, &old).unwrap();
    let layer = &other.decoder.layers.modules[0];
    assert_eq!([layer.norm1.dropout, layer.norm2.dropout, layer.norm3.dropout], [0.3; 3]);
    std::fs::remove_dir_all(&dir).unwrap();
}
