//! Data-parallel training under `mpirun` (with `--features mpi` and OpenMPI or MPICH installed):
//! two processes train what one trains, resume each other's checkpoints, and stop together when
//! one fails or dies. Every `mpirun` here ends within a deadline: a hang fails the test.
#![cfg(feature = "mpi")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use typeformer::data::{AdditionTask, LmSource};
use typeformer::io::{load_vectors, save_checkpoint, RunLock};
use typeformer::prelude::*;
use typeformer::train::{
    launched_by_mpi, train_language_model_on, Adam, AdamConfig, GradientExchange, LmRun, LmTrainConfig, MpiExchange,
    SingleProcess,
};

const BIN: &str = env!("CARGO_BIN_EXE_typeformer");
/// Where the worker test writes rank 0's weights.
const OUT_VAR: &str = "TYPEFORMER_MPI_TEST_OUT";

type Lm = DecoderOnly<256, 16, 2, 8, 32, 1, 16, PreNorm, GeluTanh, Learned, TiedOutput, f64, Cpu>;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("typeformer-mpi-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `mpirun -n <ranks> --oversubscribe <program...>` (or any launcher arguments), killed after
/// `deadline`.
fn mpirun(launch: &[&str], deadline: Duration) -> Output {
    let mut child = Command::new("mpirun")
        .args(["--oversubscribe"])
        .args(launch)
        // Containers and CI machines often run as root, which OpenMPI refuses unless told.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun (OpenMPI's openmpi-bin) must be installed for the mpi feature's tests");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "mpirun {launch:?} did not end within {deadline:?}: the ranks hang\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn lm_config(steps: usize) -> LmTrainConfig {
    LmTrainConfig {
        steps,
        batch_size: 4,
        context: 16,
        warmup: 3,
        lr_factor: 2.0,
        adam: AdamConfig::default(),
        seed: 5,
        eval_every: 2,
        checkpoint_every: 3,
        model_name: "mpi-lm".into(),
    }
}

/// Trains the f64 model over `exchange` and saves rank 0's weights under `out`.
fn train_f64(exchange: &dyn GradientExchange, out: &Path) {
    let mut model = Cpu::seed_from_u64(10 + exchange.rank() as u64).build_module::<Lm, f64>();
    typeformer::nn::set_dropout(&mut model, 0.2).unwrap();
    let mut run = LmRun { model, opt: Adam::new(AdamConfig::default()).unwrap(), logs: Vec::new() };
    let source = LmSource::Addition(AdditionTask::new(2, 20, 1).unwrap());
    let lock = (exchange.rank() == 0).then(|| RunLock::acquire(&out.join("run")).unwrap());
    let never = AtomicBool::new(false);
    train_language_model_on(exchange, &mut run, &source, &lm_config(4), lock.as_ref(), HashMap::new(), &never, |_| {})
        .unwrap();
    if exchange.rank() == 0 {
        save_checkpoint(&run.model, &out.join("weights.safetensors"), HashMap::new()).unwrap();
    }
}

/// Run by the test below under `mpirun`, as each rank.
#[test]
#[ignore = "a rank of `two_mpi_processes_train_like_one_with_the_whole_batch`, started by it under mpirun"]
fn mpi_rank() {
    let out = PathBuf::from(std::env::var(OUT_VAR).expect("started by the test below"));
    let exchange = MpiExchange::init().unwrap();
    assert_eq!(exchange.ranks(), 2);
    train_f64(&exchange, &out);
}

fn max_difference(a: &Path, b: &Path) -> f64 {
    let (a, b) = (load_vectors::<f64>(a).unwrap().0, load_vectors::<f64>(b).unwrap().0);
    assert_eq!(a.len(), b.len());
    a.iter().flat_map(|(name, x)| x.iter().zip(&b[name]).map(|(x, y)| (x - y).abs())).fold(0.0, f64::max)
}

#[test]
fn two_mpi_processes_train_like_one_with_the_whole_batch() {
    assert!(!launched_by_mpi());
    let dir = scratch("f64");
    train_f64(&SingleProcess, &dir.join("one"));
    let exe = std::env::current_exe().unwrap();
    let two = dir.join("two");
    std::fs::create_dir_all(&two).unwrap();
    let out = mpirun(
        &["-n", "2", "-x", &format!("{OUT_VAR}={}", two.display()), exe.to_str().unwrap()]
            .into_iter()
            .chain(["mpi_rank", "--exact", "--ignored", "--test-threads", "1"])
            .collect::<Vec<_>>(),
        Duration::from_secs(300),
    );
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let difference = max_difference(&dir.join("one/weights.safetensors"), &two.join("weights.safetensors"));
    assert!(difference < 1e-6, "2 ranks' weights differ from 1 process's by {difference:e}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn train_lm_args(out: &Path, steps: usize) -> Vec<String> {
    [BIN, "train-lm", "--task", "addition", "--digits", "2", "--eval-size", "20", "--batch-size", "8"]
        .into_iter()
        .map(String::from)
        .chain(["--steps".into(), steps.to_string(), "--eval-every".into(), "3".into()])
        .chain(["--checkpoint-every".into(), "3".into(), "--out".into(), out.display().to_string()])
        .collect()
}

fn model_file(run: &Path) -> PathBuf {
    typeformer::io::latest_checkpoint(run).unwrap().path("model.safetensors")
}

#[test]
fn the_command_line_tool_trains_and_resumes_across_numbers_of_ranks() {
    let dir = scratch("cli");
    let alone = Command::new(BIN).args(&train_lm_args(&dir.join("one"), 6)[1..]).env("RAYON_NUM_THREADS", "1").output();
    let alone = alone.unwrap();
    assert!(alone.status.success(), "{}", String::from_utf8_lossy(&alone.stderr));

    // Three steps on two ranks, then three more on one: the run is the one-process run.
    let first = train_lm_args(&dir.join("two"), 3);
    let out = mpirun(
        &[&["-n", "2"], &first.iter().map(String::as_str).collect::<Vec<_>>()[..]].concat(),
        Duration::from_secs(300),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("2 data-parallel ranks of 4 sequences") && stderr.contains("data-parallel: 2 ranks"),
        "{stderr}"
    );
    // Rank 0 alone prints the progress and the results.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("validation loss:").count(), 1, "{stdout}");
    let resumed = Command::new(BIN)
        .args(&train_lm_args(&dir.join("two"), 6)[1..])
        .arg("--resume")
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let (a, b) = (model_file(&dir.join("one")), model_file(&dir.join("two")));
    let (a, b) = (load_vectors::<f32>(&a).unwrap().0, load_vectors::<f32>(&b).unwrap().0);
    let difference =
        a.iter().flat_map(|(name, x)| x.iter().zip(&b[name]).map(|(x, y)| (x - y).abs())).fold(0.0f32, f32::max);
    // f32 sums in another order: rounding only.
    assert!(difference < 1e-4, "weights differ by {difference:e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ranks_given_different_commands_stop_with_a_clear_error() {
    let dir = scratch("mismatch");
    let mut one = train_lm_args(&dir.join("run"), 3);
    let mut other = one.clone();
    one.extend(["--seed".into(), "1".into()]);
    other.extend(["--seed".into(), "2".into()]);
    let launch: Vec<&str> = ["-n", "1"]
        .into_iter()
        .chain(one.iter().map(String::as_str))
        .chain([":", "-n", "1"])
        .chain(other.iter().map(String::as_str))
        .collect();
    let out = mpirun(&launch, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("rank 1 of 2 does not run what rank 0 runs"), "{stderr}");
    assert!(stderr.contains("rank 1 of the 2 data-parallel ranks failed"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_killed_rank_ends_the_job() {
    let dir = scratch("killed");
    let args = train_lm_args(&dir.join("run"), 100_000).join(" ");
    // Rank 1 is killed (SIGKILL) a few seconds into training; rank 0 must not wait for it forever.
    let script = format!(
        "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then {args} & pid=$!; sleep 4; kill -9 $pid; wait $pid; exit 137; \
         else exec {args}; fi"
    );
    let out = mpirun(&["-n", "2", "sh", "-c", &script], Duration::from_secs(120));
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_sequence_task_trains_on_two_ranks_like_on_one() {
    let dir = scratch("task");
    let args = |out: &str| -> Vec<String> {
        [BIN, "train", "--steps", "4", "--batch-size", "8", "--eval-size", "20", "--dropout", "0.1", "--out"]
            .into_iter()
            .map(String::from)
            .chain([dir.join(out).display().to_string()])
            .collect()
    };
    let alone = Command::new(BIN).args(&args("one")[1..]).env("RAYON_NUM_THREADS", "1").output().unwrap();
    assert!(alone.status.success(), "{}", String::from_utf8_lossy(&alone.stderr));
    let two = args("two");
    let launch: Vec<&str> = ["-n", "2"].into_iter().chain(two.iter().map(String::as_str)).collect();
    let out = mpirun(&launch, Duration::from_secs(300));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Rank 0 alone prints the evaluation.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("exact match:").count(), 1, "{stdout}");
    let (a, b) = (model_file(&dir.join("one")), model_file(&dir.join("two")));
    let (a, b) = (load_vectors::<f32>(&a).unwrap().0, load_vectors::<f32>(&b).unwrap().0);
    let difference =
        a.iter().flat_map(|(name, x)| x.iter().zip(&b[name]).map(|(x, y)| (x - y).abs())).fold(0.0f32, f32::max);
    assert!(difference < 1e-4, "weights differ by {difference:e}");
    let _ = std::fs::remove_dir_all(&dir);
}
