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
    assert!(
        out.lines().last().unwrap().starts_with("exact match: ") && out.contains("on 10 held-out sequences"),
        "{out}"
    );
    for file in ["model.safetensors", "loss.csv", "loss.png"] {
        assert!(dir.join(file).exists(), "{file} missing");
    }
    let csv = std::fs::read_to_string(dir.join("loss.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    std::fs::remove_dir_all(&dir).unwrap();
}
