//! The command-line tool as a user meets it: help, bad flags, impossible configurations, and a
//! short run that writes its files.

use std::process::Command;

fn typeformer(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_typeformer")).args(args).output().expect("the binary runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn every_subcommand_has_help() {
    let (ok, out, _) = typeformer(&["--help"]);
    assert!(ok && out.contains("train"), "{out}");
    let (ok, out, _) = typeformer(&["train", "--help"]);
    assert!(ok && out.contains("--task") && out.contains("--max-len"), "{out}");
    let (ok, out, _) = typeformer(&["train-lm", "--help"]);
    assert!(ok && out.contains("--data") && out.contains("--resume"), "{out}");
    let (ok, out, _) = typeformer(&["generate", "--help"]);
    assert!(ok && out.contains("--top-p") && out.contains("--checkpoint") && out.contains("--model"), "{out}");
    let (ok, out, _) = typeformer(&["chat", "--help"]);
    assert!(ok && out.contains("--system") && out.contains("/reset"), "{out}");
    let (ok, out, _) = typeformer(&["attention", "--help"]);
    assert!(ok && out.contains("--text") && out.contains("--head"), "{out}");
}

#[test]
fn bad_flags_and_impossible_configurations_fail_clearly() {
    let cases: [(&[&str], &str); 6] = [
        (&["train", "--task", "shuffle"], "invalid value 'shuffle'"),
        (&["train", "--max-len", "100"], "--max-len 100 needs 101 positions but the model has 65: at most 64"),
        (&["train", "--symbols", "40"], "at most 16"),
        (&["train", "--steps", "0"], "--steps and --batch-size must be positive"),
        (&["train", "--min-len", "5", "--max-len", "3"], "1 <= --min-len <= --max-len"),
        (&["train", "--label-smoothing", "1.5"], "--label-smoothing must be in [0, 1)"),
    ];
    for (args, message) in cases {
        let (ok, _, err) = typeformer(args);
        assert!(!ok, "{args:?} should fail");
        assert!(err.contains(message), "{args:?}: {err}");
    }
}

#[test]
fn a_short_run_writes_checkpoint_and_curve() {
    let dir = std::env::temp_dir().join(format!("typeformer-cli-{}", std::process::id()));
    let (ok, out, err) = typeformer(&[
        "train",
        "--task",
        "copy",
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--max-len",
        "4",
        "--eval-size",
        "10",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l.starts_with("exact match: ") && l.ends_with("on 10 held-out sequences")), "{out}");
    // What is learned, and where the files went.
    assert!(err.contains("task:  copy sequences of 1 to 4 symbols") && err.contains("step 1/3"), "{err}");
    for file in ["step-000003/model.safetensors", "step-000003/loss.csv", "loss.png", "attention.png"] {
        assert!(dir.join(file).exists(), "{file} missing");
        assert!(out.contains(&format!("  {file}")), "{file} not reported: {out}");
    }
    let csv = std::fs::read_to_string(dir.join("step-000003/loss.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ctrl_c_leaves_a_checkpoint_that_resumes() {
    let dir = std::env::temp_dir().join(format!("typeformer-ctrlc-{}", std::process::id()));
    let out = dir.to_str().unwrap().to_string();
    let child = Command::new(env!("CARGO_BIN_EXE_typeformer"))
        .args([
            "train-lm",
            "--task",
            "addition",
            "--digits",
            "2",
            "--steps",
            "100000",
            "--batch-size",
            "4",
            "--checkpoint-every",
            "3",
        ])
        .args(["--eval-every", "1000", "--out", &out])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !dir.join("checkpoint.json").exists() {
        assert!(start.elapsed().as_secs() < 120, "no checkpoint written");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Interrupted is not finished: the status a shell gives SIGINT.
    assert_eq!(output.status.code(), Some(130), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("interrupted: the checkpoint at step") && stdout.contains("--resume"), "{stdout}");
    // The checkpoint is whole: a resumed run picks it up and finishes.
    let step: usize = stdout.split("step ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    let target = (step + 2).to_string();
    let (ok, out2, err) = typeformer(&[
        "train-lm",
        "--task",
        "addition",
        "--digits",
        "2",
        "--steps",
        &target,
        "--batch-size",
        "4",
        "--out",
        &out,
        "--resume",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains(&format!("resuming {out} at step {step}")), "{err}");
    assert!(out2.contains(&format!("after {target} steps")), "{out2}");
    // Resuming with other data is refused.
    let (ok, _, err) = typeformer(&["train-lm", "--task", "addition", "--digits", "3", "--out", &out, "--resume"]);
    assert!(!ok && err.contains("--resume needs the run's own --data or --task"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ctrl_c_during_the_final_evaluation_ends_the_run_at_once() {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("typeformer-ctrlc-eval-{}", std::process::id()));
    // Many held-out problems: the evaluation after training takes long enough to interrupt.
    let mut child = Command::new(env!("CARGO_BIN_EXE_typeformer"))
        .args(["train-lm", "--task", "addition", "--digits", "3", "--eval-size", "4000", "--steps", "1"])
        .args(["--batch-size", "64", "--out", dir.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("checkpoint of step 1") {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "the run ended before its evaluation");
    }
    let asked = std::time::Instant::now();
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(asked.elapsed().as_secs() < 10, "Ctrl-C took {:?} to end the evaluation", asked.elapsed());
    assert!(dir.join("checkpoint.json").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn language_model_commands_reject_bad_input() {
    let dir = std::env::temp_dir().join(format!("typeformer-lmbad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let (ok, _, err) =
        typeformer(&["train-lm", "--data", empty.to_str().unwrap(), "--out", dir.join("run").to_str().unwrap()]);
    assert!(!ok && err.contains("empty.txt: the data has 0 bytes"), "{err}");
    let (ok, _, err) = typeformer(&["train-lm", "--task", "addition", "--context", "500"]);
    assert!(!ok && err.contains("--context must be in 2..=128"), "{err}");
    let (ok, _, err) = typeformer(&["train-lm"]);
    assert!(!ok && err.contains("--data"), "{err}");
    let (ok, _, err) =
        typeformer(&["generate", "--checkpoint", dir.join("nothing").to_str().unwrap(), "--prompt", "hi"]);
    assert!(!ok && err.contains("nothing") && err.contains("no checkpoint here"), "{err}");
    let run = dir.join("lm");
    let (ok, _, err) = typeformer(&[
        "train-lm",
        "--task",
        "addition",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--eval-size",
        "5",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let long = "1+1=2\n".repeat(30);
    let (ok, _, err) = typeformer(&["generate", "--checkpoint", run.to_str().unwrap(), "--prompt", &long]);
    assert!(!ok && err.contains("the prompt has 180 tokens but the model's context is 128 positions"), "{err}");
    let (ok, _, err) =
        typeformer(&["generate", "--checkpoint", run.to_str().unwrap(), "--prompt", "1+1=", "--max-new-tokens", "200"]);
    assert!(!ok && err.contains("ask for at most 124 new tokens"), "{err}");
    let (ok, out, err) = typeformer(&[
        "generate",
        "--checkpoint",
        run.to_str().unwrap(),
        "--prompt",
        "1+1=",
        "--max-new-tokens",
        "5",
        "--seed",
        "3",
    ]);
    assert!(ok && out.starts_with("1+1=") && err.contains("tokens/s"), "{out} {err}");
    // A checkpoint of the encoder-decoder task model is not a language model.
    let task = dir.join("task");
    let (ok, _, err) = typeformer(&[
        "train",
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--max-len",
        "3",
        "--eval-size",
        "5",
        "--out",
        task.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = typeformer(&["generate", "--checkpoint", task.to_str().unwrap(), "--prompt", "hi"]);
    assert!(!ok && err.contains("it holds a `small` model, but a `lm-small` language model was expected"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn evaluate_reads_a_train_checkpoint() {
    let dir = std::env::temp_dir().join(format!("typeformer-eval-{}", std::process::id()));
    let out = dir.to_str().unwrap();
    let (ok, _, err) = typeformer(&[
        "train",
        "--task",
        "sort",
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--max-len",
        "4",
        "--eval-size",
        "10",
        "--out",
        out,
    ]);
    assert!(ok, "{err}");
    let (ok, stdout, err) = typeformer(&["evaluate", "--checkpoint", out, "--eval-size", "10", "--beam-width", "2"]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("beam search: exact match")
            && stdout.contains("exact match: ")
            && stdout.contains("on 10 held-out"),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn attention_draws_the_maps_of_a_saved_model_and_refuses_what_it_lacks() {
    let dir = std::env::temp_dir().join(format!("typeformer-attention-{}", std::process::id()));
    let run = dir.join("run");
    let (ok, _, err) = typeformer(&[
        "train",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--max-len",
        "6",
        "--eval-size",
        "10",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let png = dir.join("maps.png");
    let (ok, out, err) = typeformer(&[
        "attention",
        "--checkpoint",
        run.to_str().unwrap(),
        "--text",
        "31415",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.starts_with("31415 -> ") && out.contains("wrote"), "{out}");
    assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");
    let one = dir.join("one.png");
    let (ok, _, err) = typeformer(&[
        "attention",
        "--checkpoint",
        run.to_str().unwrap(),
        "--text",
        "2 7",
        "--map",
        "decoder-self",
        "--layer",
        "1",
        "--head",
        "3",
        "--out",
        one.to_str().unwrap(),
    ]);
    assert!(ok && one.exists(), "{err}");
    let bad: [(&[&str], &str); 4] = [
        (&["--text", "12x"], "`x` is not one of the task's 10 symbols"),
        (
            &["--text", "12", "--layer", "2"],
            "--layer 2 does not exist: the model's encoder self-attention has layers 0 to 1",
        ),
        (
            &["--text", "12", "--map", "cross", "--head", "4"],
            "--head 4 does not exist: the model's cross-attention has heads 0 to 3",
        ),
        (&["--text", "", "--map", "cross"], "no symbols"),
    ];
    for (args, message) in bad {
        let mut all = vec!["attention", "--checkpoint", run.to_str().unwrap()];
        all.extend_from_slice(args);
        let (ok, _, err) = typeformer(&all);
        assert!(!ok && err.contains(message), "{args:?}: {err}");
    }
    let (ok, _, err) = typeformer(&["attention", "--checkpoint", dir.to_str().unwrap(), "--text", "1"]);
    assert!(!ok && err.contains("model.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn summary_lists_a_preset_without_allocating_it() {
    let (ok, out, err) = typeformer(&["summary", "paper-big"]);
    assert!(ok, "{err}");
    // nn.Transformer(1024, 16, 6, 6, 4096) has 176,361,472 parameters, plus the shared
    // 37,000 x 1024 embedding.
    assert!(out.contains("trainable parameters: 214249472 (817.30 MiB)"), "{out}");
    assert!(out.contains("encoder and decoder stacks without embeddings: 176361472"), "{out}");
    assert!(out.contains("the paper reports 213M"), "{out}");
    assert!(out.contains("(B, S_tgt, 1024)") && !out.contains("w_q.weight"), "{out}");
    let (ok, out, _) = typeformer(&["summary", "paper-big", "--params"]);
    assert!(ok && out.contains("encoder.layers.5.self_attn.w_q.weight"), "{out}");
    let (ok, _, err) = typeformer(&["summary", "paper-big", "--params", "--format", "dot"]);
    assert!(!ok && err.contains("--params lists tensors in the text format"), "{err}");
    let (ok, out, _) = typeformer(&["summary", "bert-base", "--format", "dot"]);
    assert!(ok && out.starts_with("digraph \"BertBase\"") && out.contains("\"pooler\""), "{out}");
    let (ok, out, _) = typeformer(&["summary", "minilm-l6"]);
    assert!(ok && out.contains("trainable parameters: 22713216"), "{out}");
    let (ok, out, _) = typeformer(&["summary", "gpt2-small"]);
    assert!(ok && out.contains("trainable parameters: 124439808"), "{out}");
    let (ok, _, err) = typeformer(&["summary", "gpt-5"]);
    assert!(!ok && err.contains("invalid value 'gpt-5'"), "{err}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn asking_for_the_gpu_without_the_cuda_feature_says_how_to_enable_it() {
    for command in [
        &["train", "--device", "cuda"][..],
        &["train-lm", "--task", "addition", "--device", "cuda"],
        &["generate", "--checkpoint", "x", "--prompt", "y", "--device", "cuda"],
    ] {
        let (ok, _, err) = typeformer(command);
        assert!(
            !ok && err.contains("built without CUDA: rebuild it with `cargo build --release --features cuda`"),
            "{command:?}: {err}"
        );
    }
}

#[test]
fn embed_writes_one_json_array_per_line_and_refuses_bad_models() {
    use std::io::Write;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
    let fetched = Command::new("bash")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-minilm.sh"))
        .arg(&dir)
        .status()
        .expect("bash runs");
    assert!(fetched.success(), "scripts/fetch-minilm.sh failed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_typeformer"))
        .args(["embed", "--model", dir.to_str().unwrap(), "--batch-size", "2"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    child.stdin.take().unwrap().write_all(b"Hello world\nAttention is all you need\nThird line\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<Vec<f32>> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l.len() == 384));
    assert!((lines[0][0] - -0.034477).abs() < 2e-6 && (lines[1][0] - 0.053139).abs() < 2e-6, "{:?}", &lines[0][..2]);

    // A line that is not UTF-8: the lines before it are embedded, the error names it.
    let mut child = Command::new(env!("CARGO_BIN_EXE_typeformer"))
        .args(["embed", "--model", dir.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    child.stdin.take().unwrap().write_all(b"Hello world\nsecond\nbad \xff byte\nnever read\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("stdin line 3 is not UTF-8 text (invalid byte at column 5)"),
        "{err}"
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 2);

    // Model directories whose embeddings would differ from sentence-transformers' are refused.
    let work = std::env::temp_dir().join(format!("typeformer-embed-dirs-{}", std::process::id()));
    let copy = |name: &str| {
        let to = work.join(name);
        std::fs::create_dir_all(to.join("1_Pooling")).unwrap();
        for file in ["config.json", "tokenizer.json", "modules.json", "model.safetensors", "1_Pooling/config.json"] {
            std::fs::copy(dir.join(file), to.join(file)).unwrap();
        }
        to
    };
    let edit = |dir: &std::path::Path, file: &str, from: &str, to: &str| {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        assert!(text.contains(from), "{file} has {from}");
        std::fs::write(dir.join(file), text.replace(from, to)).unwrap();
    };
    let dense = copy("dense");
    edit(&dense, "modules.json", "sentence_transformers.models.Normalize", "sentence_transformers.models.Dense");
    let both = copy("both");
    edit(&both, "1_Pooling/config.json", r#""pooling_mode_cls_token": false"#, r#""pooling_mode_cls_token": true"#);
    let gpt = copy("gpt");
    edit(&gpt, "config.json", r#""model_type": "bert""#, r#""model_type": "gpt2""#);
    let act = copy("act");
    edit(&act, "config.json", r#""hidden_act": "gelu""#, r#""hidden_act": 7"#);
    // Weights so large that the embedding overflows: refused, naming the line.
    let huge = copy("huge");
    let bytes = std::fs::read(huge.join("model.safetensors")).unwrap();
    let file = ::safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let data: Vec<(String, Vec<u8>, Vec<usize>, ::safetensors::Dtype)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let mut data = view.data().to_vec();
            if name.ends_with("word_embeddings.weight") {
                for chunk in data.chunks_exact_mut(4) {
                    chunk.copy_from_slice(&3e38f32.to_le_bytes());
                }
            }
            (name, data, view.shape().to_vec(), view.dtype())
        })
        .collect();
    let views: Vec<(&str, ::safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, d, s, t)| (n.as_str(), ::safetensors::tensor::TensorView::new(*t, s.clone(), d).unwrap()))
        .collect();
    std::fs::write(huge.join("model.safetensors"), ::safetensors::serialize(views, &None).unwrap()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_typeformer"))
        .args(["embed", "--model", huge.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"Hello world\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("stdin line 1: its embedding is not a number"), "{err}");
    for (model, message) in [
        (&dense, "module `Dense` is not supported"),
        (&both, "only mean pooling is supported, and pooling_mode_cls_token is true"),
        (&gpt, "model_type is `gpt2`"),
        (&act, "`hidden_act` is 7, not a name"),
    ] {
        let (ok, _, err) = typeformer(&["embed", "--model", model.to_str().unwrap()]);
        assert!(!ok && err.contains(message), "{model:?}: {err}");
    }
    std::fs::remove_dir_all(&work).unwrap();

    let (ok, _, err) = typeformer(&["embed", "--model", dir.to_str().unwrap(), "--batch-size", "0"]);
    assert!(!ok && err.contains("--batch-size must be at least 1"), "{err}");
    let (ok, _, err) = typeformer(&["embed", "--model", dir.to_str().unwrap(), "--batch-size", "1000000000000"]);
    assert!(!ok && err.contains("--batch-size 1000000000000 would need about"), "{err}");
    let (ok, _, err) = typeformer(&["embed", "--model", "/nonexistent-model"]);
    assert!(!ok && err.contains("/nonexistent-model/config.json"), "{err}");
}

/// SmolLM2-135M-Instruct's GGUF file, where `scripts/fetch-smollm2.sh` put it (CI does).
fn smollm2() -> Option<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        // CI fetches the file and sets this: there a missing file fails instead of skipping.
        assert!(std::env::var_os("TYPEFORMER_REQUIRE_MODELS").is_none(), "{} is missing", path.display());
        eprintln!("skipped: run scripts/fetch-smollm2.sh to fetch {}", path.display());
        return None;
    }
    Some(path.to_string_lossy().into())
}

#[test]
fn generate_continues_a_prompt_with_a_gguf_model() {
    let Some(model) = smollm2() else { return };
    let args = ["generate", "--model", &model, "--prompt", "The capital of France is", "--temperature", "0"];
    let (ok, out, err) = typeformer(&[&args[..], &["--max-new-tokens", "3"]].concat());
    assert!(ok, "{err}");
    assert_eq!(out, "The capital of France is Paris.\n\n", "{err}");
    assert!(err.contains("3 tokens in") && err.contains("tokens/s"), "{err}");
    let (ok, _, err) = typeformer(&["generate", "--model", "Cargo.toml", "--prompt", "x"]);
    assert!(!ok && err.contains("not a GGUF file"), "{err}");
}

#[test]
fn a_prompts_file_is_continued_together_as_each_prompt_alone() {
    let Some(model) = smollm2() else { return };
    let dir = std::env::temp_dir().join(format!("typeformer-prompts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let list = dir.join("prompts.txt");
    let prompts = ["The capital of France is", "def fibonacci(n):\n    if n <", "Hello"];
    // The second prompt as a JSON string (it holds a newline); a blank line is skipped.
    std::fs::write(&list, format!("{}\n\n{}\n{}\n", prompts[0], serde_json::json!(prompts[1]), prompts[2])).unwrap();
    let common = ["generate", "--model", &model, "--temperature", "0", "--max-new-tokens", "8"];
    let (ok, out, err) = typeformer(&[&common[..], &["--prompts-file", list.to_str().unwrap()]].concat());
    assert!(ok, "{err}");
    assert!(err.contains("3 sequences") && err.contains("tokens/s"), "{err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{out}");
    for (line, prompt) in lines.iter().zip(prompts) {
        assert_eq!(line["prompt"], prompt);
        let (ok, alone, err) = typeformer(&[&common[..], &["--prompt", prompt]].concat());
        assert!(ok, "{err}");
        let completion = line["completion"].as_str().unwrap();
        assert_eq!(format!("{prompt}{completion}"), alone.trim_end_matches('\n'), "{prompt:?} alone and in the batch");
    }
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    let (ok, _, err) = typeformer(&[&common[..], &["--prompts-file", empty.to_str().unwrap()]].concat());
    assert!(!ok && err.contains("has no prompts"), "{err}");
    std::fs::write(&empty, "\"unterminated\n").unwrap();
    let (ok, _, err) = typeformer(&[&common[..], &["--prompts-file", empty.to_str().unwrap()]].concat());
    assert!(!ok && err.contains(":1: a line in double quotes"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn chat_answers_one_turn_per_line_keeps_the_conversation_and_resets() {
    use std::io::Write;
    let Some(model) = smollm2() else { return };
    let mut child = Command::new(env!("CARGO_BIN_EXE_typeformer"))
        .args(["chat", "--model", &model, "--temperature", "0", "--max-new-tokens", "20"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let turns = "What is the capital of France?\nAnd of Germany?\n/reset\nAnd of Germany?\n/exit\nnever read\n";
    child.stdin.take().unwrap().write_all(turns.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let replies: Vec<&str> = stdout.lines().collect();
    assert_eq!(replies.len(), 3, "one reply per turn, none after /exit: {stdout}");
    // The same greedy reply Hugging Face gives the chat-formatted question (tests/llama.rs).
    assert_eq!(replies[0], "The capital of France is Paris.");
    // The second turn is read in the light of the first; after /reset the question stands alone.
    assert!(replies[1].contains("Berlin"), "{stdout}");
    assert_ne!(replies[1], replies[2], "{stdout}");
    assert!(stderr.contains("conversation reset"), "{stderr}");
}

#[test]
fn train_lm_trains_a_llama_style_model_that_generate_reads() {
    let dir = std::env::temp_dir().join(format!("typeformer-cli-llama-{}", std::process::id()));
    let run = dir.join("llama");
    let run = run.to_str().unwrap();
    let base = ["train-lm", "--arch", "llama", "--task", "addition", "--digits", "2", "--eval-size", "20"];
    let (ok, out, err) =
        typeformer(&[&base[..], &["--steps", "60", "--batch-size", "8", "--warmup", "10", "--out", run]].concat());
    assert!(ok, "{err}");
    assert!(err.contains("Llama blocks"), "{err}");
    // From ln 256 = 5.55 at the start: the digits, '+', '=' and newlines are learnt within 60 steps.
    let val: f64 = out.split("validation loss: ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(val < 3.5, "validation loss {val}: {out}");
    let (ok, text, err) = typeformer(&[
        "generate",
        "--checkpoint",
        run,
        "--prompt",
        "12+3",
        "--max-new-tokens",
        "4",
        "--temperature",
        "0",
    ]);
    assert!(ok && text.starts_with("12+3"), "{text} {err}");
    // Resuming it as the other architecture is refused by name.
    let (ok, _, err) = typeformer(&[
        "train-lm",
        "--arch",
        "gpt",
        "--task",
        "addition",
        "--digits",
        "2",
        "--eval-size",
        "20",
        "--steps",
        "80",
        "--out",
        run,
        "--resume",
    ]);
    assert!(!ok && err.contains("llama-small") && err.contains("lm-small"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
