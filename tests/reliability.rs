//! Nothing lost, nothing silent: checkpoints that commit as one unit even when the writer is
//! killed at any point of the commit, one owner per run directory, sizes checked before they are
//! allocated, and files, metadata and flags that cannot be meant refused with a clear error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_typeformer")).args(args).envs(env.iter().copied()).output().expect("runs")
}

/// `(success, stdout, stderr)` of the command-line tool.
fn typeformer(args: &[&str]) -> (bool, String, String) {
    let out = run(args, &[]);
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("typeformer-reliability-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The step the run directory's commit record names.
fn committed_step(dir: &Path) -> u64 {
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("checkpoint.json")).unwrap()).unwrap();
    record["step"].as_u64().unwrap()
}

/// The step directory the run directory's commit record names.
fn committed_dir(dir: &Path) -> PathBuf {
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("checkpoint.json")).unwrap()).unwrap();
    dir.join(record["dir"].as_str().unwrap())
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Every tensor of a safetensors file, by name (metadata left out: its order is not fixed).
fn tensors(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let file = ::safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors().into_iter().map(|(name, view)| (name, view.data().to_vec())).collect()
}

/// A short language-model run of `steps` steps, checkpointing every 2.
fn lm_args<'a>(out: &'a str, steps: &'a str) -> Vec<&'a str> {
    lm_args_every(out, steps, "2")
}

/// A short language-model run of `steps` steps, checkpointing every `every`.
fn lm_args_every<'a>(out: &'a str, steps: &'a str, every: &'a str) -> Vec<&'a str> {
    vec![
        "train-lm",
        "--task",
        "addition",
        "--digits",
        "1",
        "--eval-size",
        "5",
        "--steps",
        steps,
        "--batch-size",
        "2",
        "--context",
        "16",
        "--checkpoint-every",
        every,
        "--eval-every",
        "100",
        "--out",
        out,
    ]
}

#[test]
fn a_commit_killed_at_any_point_leaves_a_checkpoint_that_loads_and_resumes_exactly() {
    let base = temp_dir("crash");
    let reference = base.join("reference");
    let out = run(&lm_args(reference.to_str().unwrap(), "6"), &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = tensors(&reference.join("step-000006/model.safetensors"));

    let points = typeformer::io::crash_points(&["model.safetensors", "optimizer.safetensors", "loss.csv"]);
    for (k, point) in points.iter().enumerate() {
        let dir = base.join(format!("killed-{k}"));
        let d = dir.to_str().unwrap();
        // Killed while committing step 4, with step 2 committed before.
        let crash = format!("{point}@4");
        let out = run(&lm_args(d, "4"), &[("TYPEFORMER_TEST_CRASH_AT", &crash)]);
        assert!(!out.status.success(), "the run was not killed at `{point}`");
        let step = committed_step(&dir);
        let committed = ["committed", "removed an older checkpoint"].contains(&point.as_str());
        assert_eq!(step, if committed { 4 } else { 2 }, "killed at `{point}`");
        // Inference reads it, and a resumed run finishes exactly as the uninterrupted one.
        let (ok, _, err) = typeformer(&["generate", "--checkpoint", d, "--prompt", "1+1=", "--max-new-tokens", "2"]);
        assert!(ok, "generate after a kill at `{point}`: {err}");
        let mut resume = lm_args(d, "6");
        resume.push("--resume");
        let out = run(&resume, &[]);
        assert!(out.status.success(), "resume after `{point}`: {}", String::from_utf8_lossy(&out.stderr));
        // The committed checkpoint and the one before it, nothing else.
        let want_entries = [".lock", "checkpoint.json", "loss.png", "step-000004", "step-000006"];
        assert_eq!(entries(&dir), want_entries, "after `{point}`");
        assert!(tensors(&dir.join("step-000006/model.safetensors")) == want, "weights differ after `{point}`");
    }
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn a_run_directory_has_one_owner_until_it_dies() {
    let dir = temp_dir("lock");
    let d = dir.to_str().unwrap().to_string();
    let args = lm_args_every(&d, "1000000", "100000");
    let mut child = Command::new(env!("CARGO_BIN_EXE_typeformer"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while std::fs::read_to_string(dir.join(".lock")).map_or(true, |s| s.trim() != child.id().to_string()) {
        assert!(start.elapsed().as_secs() < 60, "the run never took its lock");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let owner = format!("in use by process {}", child.id());
    let (ok, _, err) = typeformer(&lm_args(&d, "2"));
    assert!(!ok && err.contains(&owner), "{err}");
    let mut resume = lm_args(&d, "2");
    resume.push("--resume");
    let (ok, _, err) = typeformer(&resume);
    assert!(!ok && err.contains(&owner), "{err}");
    let (ok, _, err) = typeformer(&["train", "--steps", "1", "--out", &d]);
    assert!(!ok && err.contains(&owner), "{err}");
    // The lock goes with the process, however it ends.
    child.kill().unwrap();
    child.wait().unwrap();
    let (ok, _, err) = typeformer(&lm_args(&d, "2"));
    assert!(ok, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn train_replaces_an_earlier_run_only_when_told_to() {
    let dir = temp_dir("force");
    let d = dir.to_str().unwrap();
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--steps", "2", "--batch-size", "2", "--max-len", "4", "--eval-size", "5"];
        args.extend_from_slice(extra);
        args.extend(["--out", d]);
        typeformer(&args)
    };
    assert!(train(&[]).0);
    let (ok, _, err) = train(&["--seed", "1"]);
    assert!(!ok && err.contains("already holds a trained model") && err.contains("--force"), "{err}");
    let (ok, _, err) = train(&["--seed", "1", "--force"]);
    assert!(ok, "{err}");
    let replaced = [".lock", "attention.png", "checkpoint.json", "loss.png", "step-000002", "step-000002.1"];
    assert_eq!(entries(&dir), replaced);
    let (ok, out, err) = typeformer(&["evaluate", "--checkpoint", d]);
    assert!(ok && out.contains("on 5 held-out sequences"), "{out}{err}");
    // train-lm likewise.
    let lm = dir.join("lm");
    let lm = lm.to_str().unwrap();
    assert!(typeformer(&lm_args(lm, "2")).0);
    let (ok, _, err) = typeformer(&lm_args(lm, "2"));
    assert!(!ok && err.contains("--resume to continue it, --force to replace it"), "{err}");
    let mut force = lm_args(lm, "2");
    force.push("--force");
    assert!(typeformer(&force).0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sizes_are_checked_before_anything_is_allocated_from_them() {
    let huge = "1000000000000";
    let cases: &[(&[&str], &str)] = &[
        (&["train", "--steps", huge], "--steps 1000000000000 would need about"),
        (&["train", "--batch-size", huge], "--batch-size 1000000000000 would need about"),
        (&["train", "--batch-size", "1000000"], "--batch-size 1000000 would need about"),
        (&["train", "--beam-width", huge], "--beam-width 1000000000000 would need about"),
        (&["train", "--symbols", "16", "--max-len", "64", "--eval-size", huge], "--eval-size 1000000000000 would need"),
        (&["train-lm", "--task", "addition", "--steps", huge], "--steps 1000000000000 would need about"),
        (&["train-lm", "--task", "addition", "--batch-size", huge], "--batch-size 1000000000000 would need about"),
        (&["train-lm", "--task", "addition", "--digits", "9", "--eval-size", huge], "--eval-size 1000000000000"),
    ];
    let dir = temp_dir("sizes");
    for (args, message) in cases {
        let mut args = args.to_vec();
        let out = dir.join("run");
        args.extend(["--out", out.to_str().unwrap()]);
        let output = run(&args, &[]);
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
    // generate: a count that would overflow the context check.
    let lm = dir.join("lm");
    assert!(typeformer(&lm_args(lm.to_str().unwrap(), "2")).0);
    let output = run(
        &[
            "generate",
            "--checkpoint",
            lm.to_str().unwrap(),
            "--prompt",
            "1+",
            "--max-new-tokens",
            &u64::MAX.to_string(),
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.code() == Some(1) && err.contains("ask for at most 126 new tokens"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn flags_that_cannot_be_meant_are_refused() {
    let cases: &[(&[&str], &str)] = &[
        (&["train", "--clip-norm", "-1"], "--clip-norm must be a positive number, or 0 for no clipping; got -1"),
        (&["train", "--clip-norm", "NaN"], "--clip-norm must be a positive number"),
        (&["train", "--clip-norm", "inf"], "--clip-norm must be a positive number"),
        (&["train", "--beam-width", "2", "--length-penalty", "NaN"], "--length-penalty must be a finite number"),
        (&["train", "--beam-width", "2", "--length-penalty", "inf"], "--length-penalty must be a finite number"),
        (&["train", "--lr-factor", "1e12"], "--lr-factor 1000000000000 gives a peak learning rate of"),
        (&["train", "--cooldown", "2"], "--cooldown is a fraction of the steps, in [0, 1]"),
        (&["train-lm", "--task", "addition", "--eval-size", "0"], "--eval-size 0"),
        (&["train-lm", "--task", "addition", "--lr-factor", "1e12"], "gives a peak learning rate"),
    ];
    let dir = temp_dir("flags");
    for (args, message) in cases {
        let mut args = args.to_vec();
        let out = dir.join("run");
        args.extend(["--out", out.to_str().unwrap()]);
        let (ok, _, err) = typeformer(&args);
        assert!(!ok && err.contains(message), "{args:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Replaces `from` by `to` (of the same length, so that the file keeps its committed size) in
/// the file at `path`.
fn patch(path: &Path, from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.windows(from.len()).position(|w| w == from).expect("the bytes to patch");
    bytes[at..at + from.len()].copy_from_slice(to);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_run_is_evaluated_on_its_own_held_out_set_or_not_at_all() {
    let dir = temp_dir("heldout");
    let d = dir.to_str().unwrap();
    let args = ["train", "--steps", "2", "--batch-size", "2", "--max-len", "6", "--eval-size", "5", "--out", d];
    assert!(typeformer(&args).0);
    let (ok, out, _) = typeformer(&["evaluate", "--checkpoint", d, "--eval-size", "3"]);
    assert!(ok && out.contains("on 3 held-out sequences"), "{out}");
    let (ok, _, err) = typeformer(&["evaluate", "--checkpoint", d, "--eval-size", "15"]);
    assert!(!ok && err.contains("the run set aside 5 held-out sequences"), "{err}");
    // Metadata that would rebuild another held-out set (another task, other lengths): refused.
    let checkpoint = typeformer::train::TaskCheckpoint::read(&dir).unwrap();
    assert_eq!(checkpoint.held_out(None).unwrap().len(), 5);
    for spec in [
        typeformer::data::TaskSpec { task: typeformer::data::Task::Copy, ..checkpoint.spec },
        typeformer::data::TaskSpec { max_len: 7, ..checkpoint.spec },
    ] {
        let edited = typeformer::train::TaskCheckpoint { spec, ..checkpoint.clone() };
        let err = edited.held_out(None).unwrap_err().to_string();
        assert!(err.contains("the metadata was changed since training"), "{err}");
    }
    // An edit of the file itself is found by its checksum.
    patch(&dir.join("step-000002/model.safetensors"), br#""max_len":"6""#, br#""max_len":"7""#);
    let (ok, _, err) = typeformer(&["evaluate", "--checkpoint", d]);
    assert!(!ok && err.contains("its contents changed since the checkpoint of step 2"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn weights_that_are_not_numbers_and_scalars_out_of_range_are_refused_by_name() {
    use typeformer::prelude::*;
    type Tiny = EncoderDecoder<8, 8, 8, 2, 4, 16, 1, 1, 8, PostNorm, Relu, Sinusoidal, SharedTied, f32, Cpu>;
    let dir = temp_dir("values");
    let model = Cpu::seed_from_u64(0).build_module::<Tiny, f32>();
    let path = dir.join("model.safetensors");
    typeformer::io::save_checkpoint(&model, &path, Default::default()).unwrap();
    let load = |path: &Path| {
        let mut fresh = Cpu::seed_from_u64(1).build_module::<Tiny, f32>();
        typeformer::io::load_checkpoint(&mut fresh, path).map(|_| ()).unwrap_err().to_string()
    };
    // A NaN in one tensor.
    let bytes = std::fs::read(&path).unwrap();
    let file = ::safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, Vec<f32>, Vec<usize>)> = file
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let values = v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            (n, values, v.shape().to_vec())
        })
        .collect();
    let (_, header) = ::safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let metadata = header.metadata().clone().unwrap();
    let write = |path: &Path, poison: Option<&str>, metadata: &std::collections::HashMap<String, String>| {
        let data: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
            .iter()
            .map(|(n, values, shape)| {
                let mut values = values.clone();
                if poison == Some(n.as_str()) {
                    values[1] = f32::NAN;
                }
                (n.clone(), values.iter().flat_map(|v| v.to_le_bytes()).collect(), shape.clone())
            })
            .collect();
        let views: Vec<(&str, ::safetensors::tensor::TensorView)> = data
            .iter()
            .map(|(n, b, s)| {
                (n.as_str(), ::safetensors::tensor::TensorView::new(::safetensors::Dtype::F32, s.clone(), b).unwrap())
            })
            .collect();
        std::fs::write(path, ::safetensors::serialize(views, &Some(metadata.clone())).unwrap()).unwrap();
    };
    let poisoned = dir.join("nan.safetensors");
    write(&poisoned, Some("encoder.layers.0.ffn.linear1.weight"), &metadata);
    let err = load(&poisoned);
    assert!(err.contains("not finite: encoder.layers.0.ffn.linear1.weight holds NaN at element 1"), "{err}");
    // Scalars that cannot be meant.
    let eps = "scalar:encoder.layers.0.norm1.eps";
    let drop = "scalar:dropout";
    for (key, value, range) in [
        (eps, "NaN", "(0, 1)"),
        (eps, "-1", "(0, 1)"),
        (eps, "1e30", "(0, 1)"),
        (drop, "1", "[0, 1)"),
        (drop, "2", "[0, 1)"),
        (drop, "NaN", "[0, 1)"),
    ] {
        let mut edited = metadata.clone();
        assert!(edited.contains_key(key), "{key} in {:?}", edited.keys());
        edited.insert(key.into(), value.into());
        let bad = dir.join("scalar.safetensors");
        write(&bad, None, &edited);
        let err = load(&bad);
        assert!(err.contains(&format!("= {value} in the metadata; it must be")) && err.contains(range), "{err}");
    }
    // A truncated file says so, with the sizes.
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap();
    let err = load(&truncated);
    let end = bytes.len();
    assert!(
        err.contains(&format!(
            "truncated: the file is {} bytes, its header says the tensors end at byte {end}",
            end - 10
        )),
        "{err}"
    );
    assert!(err.contains("truncated.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unreadable_loss_curve_costs_the_history_not_the_model() {
    let dir = temp_dir("curve");
    let d = dir.to_str().unwrap();
    assert!(typeformer(&lm_args(d, "2")).0);
    patch(&dir.join("step-000002/loss.csv"), b"step,loss", b"garbage!!");
    let (ok, _, err) = typeformer(&["generate", "--checkpoint", d, "--prompt", "1+", "--max-new-tokens", "2"]);
    assert!(ok, "{err}");
    let mut resume = lm_args(d, "4");
    resume.push("--resume");
    let (ok, _, err) = typeformer(&resume);
    assert!(ok && err.contains("warning: the loss curve cannot be read"), "{err}");
    assert_eq!(committed_step(&dir), 4);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn readers_never_fail_while_a_run_commits_under_them() {
    let dir = temp_dir("readers");
    let d = dir.to_str().unwrap().to_string();
    assert!(typeformer(&lm_args_every(&d, "2", "1")).0);
    let mut resume = lm_args_every(&d, "100000", "1");
    resume.push("--resume");
    let mut child = Command::new(env!("CARGO_BIN_EXE_typeformer"))
        .args(&resume)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..40 {
        let (ok, _, err) = typeformer(&["generate", "--checkpoint", &d, "--prompt", "1+", "--max-new-tokens", "1"]);
        assert!(ok, "generate during training: {err}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn what_a_user_did_to_a_run_directory_is_never_made_worse() {
    let dir = temp_dir("damaged");
    let d = dir.to_str().unwrap();
    assert!(typeformer(&lm_args(d, "4")).0);
    // The record deleted by hand: nothing runs over the checkpoint, which stays.
    std::fs::remove_file(dir.join("checkpoint.json")).unwrap();
    let mut resume = lm_args(d, "6");
    resume.push("--resume");
    let (ok, _, err) = typeformer(&resume);
    assert!(!ok && err.contains("holds checkpoints that no checkpoint.json names"), "{err}");
    assert!(dir.join("step-000004/model.safetensors").exists(), "the checkpoint was deleted");
    // A broken record: refused, and --force replaces the run.
    std::fs::write(dir.join("checkpoint.json"), "{ not json").unwrap();
    let (ok, _, err) = typeformer(&lm_args(d, "2"));
    assert!(!ok && err.contains("not a commit record"), "{err}");
    let mut force = lm_args(d, "2");
    force.push("--force");
    let (ok, _, err) = typeformer(&force);
    assert!(ok, "{err}");
    assert_eq!(committed_step(&dir), 2);
    // A truncated loss curve: the model still loads, a resumed run warns and goes on.
    let curve = committed_dir(&dir).join("loss.csv");
    let text = std::fs::read_to_string(&curve).unwrap();
    std::fs::write(&curve, &text[..text.len() / 2]).unwrap();
    let (ok, _, err) = typeformer(&["generate", "--checkpoint", d, "--prompt", "1+", "--max-new-tokens", "2"]);
    assert!(ok, "{err}");
    let mut resume = lm_args(d, "4");
    resume.push("--resume");
    let (ok, _, err) = typeformer(&resume);
    assert!(ok && err.contains("warning: the loss curve cannot be read"), "{err}");
    // A flipped byte inside the model's tensors is found.
    let model = committed_dir(&dir).join("model.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    std::fs::write(&model, bytes).unwrap();
    let (ok, _, err) = typeformer(&["generate", "--checkpoint", d, "--prompt", "1+"]);
    assert!(!ok && err.contains("its contents changed since the checkpoint of step 4 was committed"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_resumed_run_is_the_same_run() {
    let dir = temp_dir("same-run");
    let d = dir.to_str().unwrap();
    assert!(typeformer(&lm_args(d, "4")).0);
    let mut fewer = lm_args(d, "4");
    fewer.push("--resume");
    let (ok, _, err) = typeformer(&fewer);
    assert!(!ok && err.contains("--steps 4: the checkpoint is already at step 4"), "{err}");
    let mut other = lm_args(d, "6");
    let at = other.iter().position(|a| *a == "--eval-size").unwrap();
    other[at + 1] = "7";
    other.push("--resume");
    let (ok, _, err) = typeformer(&other);
    assert!(!ok && err.contains("--resume needs the run's own --eval-size"), "{err}");
    let mut changed = lm_args(d, "6");
    changed.extend(["--resume", "--lr-factor", "0.5"]);
    let (ok, _, err) = typeformer(&changed);
    assert!(ok && err.contains("note: --lr-factor 0.5 differs from the run's 1"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_run_that_fails_before_its_first_checkpoint_leaves_nothing_behind() {
    let dir = temp_dir("nothing-behind");
    for args in [
        &["train", "--dropout", "NaN"][..],
        &["train", "--lr-factor", "1e12"],
        &["train", "--steps", "1000000000000"],
        &["train-lm", "--task", "addition", "--digits", "0"],
        &["train-lm", "--data", "/dev/null"],
    ] {
        let out = dir.join("run");
        let mut args = args.to_vec();
        args.extend(["--out", out.to_str().unwrap()]);
        let (ok, _, err) = typeformer(&args);
        assert!(!ok, "{args:?}");
        assert!(!out.exists(), "{args:?} left {:?}: {err}", entries(&out));
    }
    // A file where the run directory should be.
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let (ok, _, err) = typeformer(&["train", "--steps", "1", "--out", file.to_str().unwrap()]);
    assert!(!ok && err.contains("a file, where a run directory is needed"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn values_that_would_wrap_or_hang_are_refused_at_once() {
    let dir = temp_dir("wrap");
    let max = u64::MAX.to_string();
    let out = dir.join("run");
    let o = out.to_str().unwrap();
    for (args, message) in [
        (vec!["train", "--max-len", &max, "--out", o], "needs"),
        (vec!["train", "--symbols", &max, "--out", o], "does not fit the model's vocabulary"),
        (vec!["train", "--length-penalty", "NaN", "--out", o], "--length-penalty must be a finite number"),
        (vec!["train", "--lr-factor", "-inf", "--out", o], "--lr-factor"),
    ] {
        let start = std::time::Instant::now();
        let (ok, _, err) = typeformer(&args);
        assert!(!ok && err.contains(message), "{args:?}: {err}");
        assert!(start.elapsed().as_secs() < 20, "{args:?} took {:?}", start.elapsed());
    }
    let (ok, _, err) = typeformer(&["train", "--steps", "2", "--batch-size", "2", "--max-len", "4", "--out", o]);
    assert!(ok, "{err}");
    let (ok, _, err) = typeformer(&["attention", "--checkpoint", o, "--text", "12", "--out", "/nonexistent-dir/x.png"]);
    assert!(!ok && err.contains("the directory /nonexistent-dir does not exist"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_directory_that_is_not_a_whole_run_is_never_cleaned_into_one() {
    let base = temp_dir("not-a-run");
    // A record naming a step directory that does not exist: nothing else is deleted.
    let dir = base.join("missing-dir");
    let d = dir.to_str().unwrap();
    assert!(typeformer(&lm_args(d, "2")).0);
    let record = std::fs::read_to_string(dir.join("checkpoint.json")).unwrap();
    std::fs::write(dir.join("checkpoint.json"), record.replace("step-000002", "step-000999")).unwrap();
    let (ok, _, _) = typeformer(&["train-lm", "--data", "/nonexistent", "--out", d]);
    assert!(!ok);
    assert!(dir.join("step-000002/model.safetensors").exists(), "the real checkpoint was deleted");
    // Checkpoints no record names: a new run refuses without --force.
    std::fs::remove_file(dir.join("checkpoint.json")).unwrap();
    let (ok, _, err) = typeformer(&lm_args(d, "3"));
    assert!(!ok && err.contains("holds checkpoints that no checkpoint.json names (step-000002)"), "{err}");
    let mut resume = lm_args(d, "3");
    resume.push("--resume");
    let (ok, _, err) = typeformer(&resume);
    assert!(!ok && err.contains("restore the record, or pass --force"), "{err}");
    assert!(dir.join("step-000002/model.safetensors").exists());
    // Others' files: refused without --force, and left alone with it.
    let other = base.join("others");
    std::fs::create_dir_all(other.join("step-1")).unwrap();
    std::fs::write(other.join("README"), "mine").unwrap();
    std::fs::write(other.join("step-1/notes.txt"), "mine").unwrap();
    std::fs::write(other.join(".draft.tmp-old"), "mine").unwrap();
    let o = other.to_str().unwrap();
    let (ok, _, err) = typeformer(&lm_args(o, "2"));
    assert!(!ok && err.contains("is not empty and holds no run (.draft.tmp-old, README, step-1)"), "{err}");
    let mut force = lm_args(o, "2");
    force.push("--force");
    assert!(typeformer(&force).0);
    let mut resume = lm_args(o, "4");
    resume.push("--resume");
    assert!(typeformer(&resume).0);
    for file in ["README", "step-1/notes.txt", ".draft.tmp-old"] {
        assert!(other.join(file).exists(), "{file} was deleted");
    }
    // A model directory of another tool is not an old run: --force leaves its weights.
    let hf = base.join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch/gpt2_tiny.safetensors");
    std::fs::copy(&fixture, hf.join("model.safetensors")).unwrap();
    let mut force = lm_args(hf.to_str().unwrap(), "2");
    force.push("--force");
    let (ok, _, err) = typeformer(&force);
    assert!(ok, "{err}");
    assert!(hf.join("model.safetensors").exists(), "another tool's model was deleted");
    // A lock that is a link is refused, not followed.
    let linked = base.join("linked");
    std::fs::create_dir_all(&linked).unwrap();
    std::fs::write(base.join("precious.txt"), "precious").unwrap();
    std::os::unix::fs::symlink(base.join("precious.txt"), linked.join(".lock")).unwrap();
    let (ok, _, err) = typeformer(&lm_args(linked.to_str().unwrap(), "2"));
    assert!(!ok && err.contains("the lock is a link or a directory"), "{err}");
    assert_eq!(std::fs::read_to_string(base.join("precious.txt")).unwrap(), "precious");
    // A commit record that is a directory stops the run before it trains.
    let odd = base.join("odd");
    std::fs::create_dir_all(odd.join("checkpoint.json")).unwrap();
    let mut force = lm_args(odd.to_str().unwrap(), "2");
    force.push("--force");
    let (ok, _, err) = typeformer(&force);
    assert!(!ok && err.contains("the commit record is a link or a directory"), "{err}");
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn signals_end_runs_cleanly_and_resumes_need_the_same_text() {
    let base = temp_dir("signals");
    // SIGTERM stops train-lm as Ctrl-C does: with a checkpoint, status 130.
    let lm = base.join("lm");
    let args = lm_args_every(lm.to_str().unwrap(), "1000000", "1000000");
    let child = Command::new(env!("CARGO_BIN_EXE_typeformer"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(committed_step(&lm) > 0);
    // Ctrl-C during `train` (which saves at the end) leaves nothing, not even the directories.
    let task = base.join("a/b/task");
    let child = Command::new(env!("CARGO_BIN_EXE_typeformer"))
        .args(["train", "--steps", "1000000", "--batch-size", "2", "--max-len", "4", "--out", task.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !task.join(".lock").exists() {
        assert!(start.elapsed().as_secs() < 60);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing was saved"));
    assert!(!base.join("a").exists(), "left {:?}", entries(&base));
    // Another text of the same size is other data.
    let (a, b) = (base.join("a.txt"), base.join("b.txt"));
    std::fs::write(&a, "the quick brown fox jumps over the lazy dog. ".repeat(4)).unwrap();
    std::fs::write(&b, "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG. ".repeat(4)).unwrap();
    let text = base.join("text");
    let t = text.to_str().unwrap();
    let train = |data: &Path, steps: &str, resume: bool| {
        let mut args = vec!["train-lm", "--data", data.to_str().unwrap(), "--steps", steps, "--batch-size", "2"];
        args.extend(["--context", "16", "--out", t]);
        if resume {
            args.push("--resume");
        }
        typeformer(&args)
    };
    assert!(train(&a, "2", false).0);
    let (ok, _, err) = train(&b, "4", true);
    assert!(!ok && err.contains("--resume needs the run's own --data or --task"), "{err}");
    assert!(train(&a, "4", true).0);
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn a_plot_that_cannot_be_drawn_is_a_warning_not_a_lost_run() {
    let dir = temp_dir("plot");
    std::fs::create_dir_all(dir.join("loss.png")).unwrap();
    std::fs::write(dir.join(".keep"), "").unwrap();
    let d = dir.to_str().unwrap();
    let mut args = lm_args(d, "4");
    args.push("--force");
    let (ok, out, err) = typeformer(&args);
    assert!(ok && err.contains("warning: no plot") && out.contains("validation loss"), "{out}{err}");
    assert_eq!(committed_step(&dir), 4);
    // A long but valid file name for a plot.
    let name = format!("{}.png", "a".repeat(251));
    let train = dir.join("task");
    assert!(
        typeformer(&["train", "--steps", "2", "--batch-size", "2", "--max-len", "4", "--out", train.to_str().unwrap()])
            .0
    );
    let png = dir.join(&name);
    let (ok, _, err) = typeformer(&[
        "attention",
        "--checkpoint",
        train.to_str().unwrap(),
        "--text",
        "12",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(ok && png.exists(), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_checkpoint_is_not_a_run_directory_and_a_plot_replaces_only_a_plot() {
    let base = temp_dir("nested");
    let lm = base.join("lm");
    assert!(typeformer(&lm_args(lm.to_str().unwrap(), "2")).0);
    let step = committed_dir(&lm);
    let mut resume = lm_args(step.to_str().unwrap(), "4");
    resume.push("--resume");
    let (ok, _, err) = typeformer(&resume);
    assert!(!ok && err.contains("is a checkpoint of the run in"), "{err}");
    let inner = step.join("inner");
    let (ok, _, err) = typeformer(&["train", "--steps", "1", "--force", "--out", inner.to_str().unwrap()]);
    assert!(!ok && err.contains("is a checkpoint of the run in"), "{err}");
    let (ok, _, err) =
        typeformer(&["generate", "--checkpoint", lm.to_str().unwrap(), "--prompt", "1+", "--max-new-tokens", "1"]);
    assert!(ok, "the run was damaged: {err}");
    // attention --out never replaces a run's files.
    let task = base.join("task");
    let t = task.to_str().unwrap();
    assert!(typeformer(&["train", "--steps", "2", "--batch-size", "2", "--max-len", "4", "--out", t]).0);
    let model = committed_dir(&task).join("model.safetensors");
    let plot_to =
        |out: &Path| typeformer(&["attention", "--checkpoint", t, "--text", "12", "--out", out.to_str().unwrap()]);
    for target in [task.join("checkpoint.json"), model.clone(), task.join(".lock")] {
        let (ok, _, err) = plot_to(&target);
        assert!(!ok && err.contains("is not a PNG"), "{target:?}: {err}");
    }
    let (ok, _, err) = plot_to(&committed_dir(&task).join("a.png"));
    assert!(!ok && err.contains("inside the checkpoint"), "{err}");
    // An earlier plot is replaced.
    let (ok, _, err) = plot_to(&task.join("attention.png"));
    assert!(ok, "{err}");
    let (ok, out, _) = typeformer(&["evaluate", "--checkpoint", t]);
    assert!(ok && out.contains("exact match"), "{out}");
    // A run of another kind that replaces this one leaves none of its pictures behind.
    let mut replace = lm_args(t, "2");
    replace.push("--force");
    let (ok, _, err) = typeformer(&replace);
    assert!(ok, "{err}");
    assert!(!task.join("attention.png").exists(), "the earlier run's attention plot survived its model");
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn lost_output_is_an_error_and_a_full_stderr_is_not_fatal() {
    let dir = temp_dir("full");
    let d = dir.to_str().unwrap();
    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_typeformer"))
        .args(["summary", "paper-big"])
        .stdout(full())
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&status.stderr).contains("cannot write the output"));
    // Progress and warnings that cannot be written do not stop a run.
    let out = Command::new(env!("CARGO_BIN_EXE_typeformer")).args(lm_args(d, "2")).stderr(full()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let gen = Command::new(env!("CARGO_BIN_EXE_typeformer"))
        .args(["generate", "--checkpoint", d, "--prompt", "1+", "--max-new-tokens", "3"])
        .stdout(full())
        .output()
        .unwrap();
    assert_eq!(gen.status.code(), Some(1));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn process_limits_give_errors_not_kills() {
    let dir = temp_dir("limits");
    let bin = env!("CARGO_BIN_EXE_typeformer");
    let out_dir = dir.join("run");
    let o = out_dir.to_str().unwrap();
    // An address-space limit counts as the memory there is.
    let script = format!("ulimit -v 2000000; {bin} train --batch-size 6000 --out {o}");
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(1) && err.contains("--batch-size 6000 would need about"), "{err}");
    // A file-size limit fails the checkpoint's write with an error, leaving no staging directory.
    let lm = dir.join("lm");
    let args = lm_args(lm.to_str().unwrap(), "2").join(" ");
    let script = format!("ulimit -f 100; {bin} {args}");
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("File too large"), "{err}");
    // (The run committed nothing, so it removed the directory it had created.)
    assert!(!lm.exists() || !entries(&lm).iter().any(|e| e.starts_with(".staging")), "{:?}", entries(&lm));
    std::fs::remove_dir_all(&dir).unwrap();
}
