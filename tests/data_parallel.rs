//! Data-parallel training: N replicas with a share of the batch each train exactly like one
//! process with the whole batch, resume with any N, and stop together when one fails. The
//! replicas here are threads ([`ThreadGroup`]); `tests/mpi.rs` runs the same under `mpirun`.

use dfdx::nn::tensor_collection::TensorCollection;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use typeformer::data::{AdditionTask, LmSource, Task, TaskSpec};
use typeformer::io::{load_vectors, save_checkpoint, RunLock};
use typeformer::prelude::*;
use typeformer::train::{
    agree, load_lm_checkpoint, run_task_on, train_language_model_on, Adam, AdamConfig, GradientExchange, LmRun, LmStop,
    LmTrainConfig, SingleProcess, TaskRun, ThreadGroup, TrainConfig,
};

/// A byte-level language model small enough for a few steps in f64.
type Lm = DecoderOnly<256, 16, 2, 8, 32, 1, 16, PreNorm, GeluTanh, Learned, TiedOutput, f64, Cpu>;
/// An encoder-decoder for the sequence tasks.
type Seq =
    EncoderDecoder<TASK_VOCAB, TASK_VOCAB, 16, 2, 8, 32, 1, 1, 16, PostNorm, Relu, Sinusoidal, SharedTied, f64, Cpu>;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("typeformer-dp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn lm_config(steps: usize, batch_size: usize) -> LmTrainConfig {
    LmTrainConfig {
        steps,
        batch_size,
        context: 16,
        warmup: 3,
        lr_factor: 2.0,
        adam: AdamConfig::default(),
        seed: 5,
        eval_every: 2,
        checkpoint_every: 3,
        model_name: "dp-lm".into(),
    }
}

/// Addition lines are of different lengths: the batches are padded.
fn addition() -> LmSource {
    LmSource::Addition(AdditionTask::new(2, 20, 1).unwrap())
}

/// A fresh run whose initial weights depend on `rank`: only rank 0's must matter.
fn fresh_lm(rank: usize) -> LmRun<Lm, f64, Cpu> {
    let mut model = Cpu::seed_from_u64(10 + rank as u64).build_module::<Lm, f64>();
    // Dropout on: its masks must agree per example too. Only rank 0's setting counts: the
    // others' models are overwritten, hyperparameters included.
    typeformer::nn::set_dropout(&mut model, if rank == 0 { 0.2 } else { 0.5 }).unwrap();
    LmRun { model, opt: Adam::new(AdamConfig::default()).unwrap(), logs: Vec::new() }
}

/// Every tensor of `model` by name, read back from a checkpoint file.
fn weights<M: TensorCollection<f64, Cpu>>(model: &M, dir: &Path) -> HashMap<String, Vec<f64>> {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("weights.safetensors");
    save_checkpoint(model, &path, HashMap::new()).unwrap();
    load_vectors::<f64>(&path).unwrap().0
}

fn largest_difference(a: &HashMap<String, Vec<f64>>, b: &HashMap<String, Vec<f64>>) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().flat_map(|(name, x)| x.iter().zip(&b[name]).map(|(x, y)| (x - y).abs())).fold(0.0, f64::max)
}

/// How a rank's run ended, and the run.
type Trained = (LmStop, LmRun<Lm, f64, Cpu>);

/// Trains `run` on `ranks` threads (rank 0's run is returned), each starting from `start(rank)`.
fn train_lm_on_threads(
    ranks: usize,
    cfg: &LmTrainConfig,
    dir: &Path,
    start: impl Fn(usize) -> LmRun<Lm, f64, Cpu> + Sync,
) -> Vec<typeformer::Result<Trained>> {
    let source = addition();
    let never = AtomicBool::new(false);
    let members = ThreadGroup::new(ranks).unwrap();
    std::thread::scope(|scope| {
        let handles: Vec<_> = members
            .into_iter()
            .map(|member| {
                let (source, never, start) = (&source, &never, &start);
                scope.spawn(move || {
                    let mut run = start(member.rank());
                    let lock = (member.rank() == 0).then(|| RunLock::acquire(dir).unwrap());
                    let meta = HashMap::from([("model".to_string(), "dp-lm".to_string())]);
                    train_language_model_on(&member, &mut run, source, cfg, lock.as_ref(), meta, never, |_| {})
                        .map(|stop| (stop, run))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn replicas_with_a_share_of_the_batch_train_like_one_process_with_all_of_it() {
    let base = scratch("lm");
    let cfg = lm_config(4, 4);
    let alone = train_lm_on_threads(1, &cfg, &base.join("one"), fresh_lm).pop().unwrap().unwrap().1;
    let reference = weights(&alone.model, &base.join("w1"));
    for ranks in [2, 4] {
        let runs = train_lm_on_threads(ranks, &cfg, &base.join(format!("n{ranks}")), fresh_lm);
        for (rank, result) in runs.into_iter().enumerate() {
            let (stop, run) = result.unwrap();
            assert_eq!((stop, run.opt.step), (LmStop::Finished, 4));
            let difference = largest_difference(&reference, &weights(&run.model, &base.join(format!("w{ranks}"))));
            assert!(difference < 1e-6, "{ranks} ranks, rank {rank}: weights differ by {difference:e}");
            for (a, b) in alone.logs.iter().zip(&run.logs) {
                assert!((a.loss - b.loss).abs() < 1e-9, "{ranks} ranks: loss {} against {}", b.loss, a.loss);
                assert!((a.grad_norm - b.grad_norm).abs() < 1e-9);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn a_checkpoint_resumes_with_another_number_of_ranks() {
    let base = scratch("resume");
    let straight = train_lm_on_threads(1, &lm_config(6, 4), &base.join("straight"), fresh_lm).pop().unwrap().unwrap();
    let reference = weights(&straight.1.model, &base.join("w"));
    for (first, second) in [(2, 1), (1, 2)] {
        let dir = base.join(format!("{first}-{second}"));
        for result in train_lm_on_threads(first, &lm_config(3, 4), &dir, fresh_lm) {
            result.unwrap();
        }
        // Only rank 0 reads the checkpoint; the others start from fresh weights.
        let resumed = train_lm_on_threads(second, &lm_config(6, 4), &dir, |rank| match rank {
            0 => {
                let dev = Cpu::seed_from_u64(99);
                load_lm_checkpoint::<Lm, f64, Cpu>(&dir, &dev, "dp-lm", AdamConfig::default()).unwrap().run
            }
            _ => fresh_lm(rank),
        });
        for result in resumed {
            let run = result.unwrap().1;
            assert_eq!(run.opt.step, 6);
            let difference = largest_difference(&reference, &weights(&run.model, &base.join("w")));
            assert!(difference < 1e-6, "{first} then {second} ranks: weights differ by {difference:e}");
        }
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn replicas_train_a_sequence_task_like_one_process() {
    let run = TaskRun {
        spec: TaskSpec { task: Task::Reverse, symbols: 5, min_len: 1, max_len: 6 },
        train: TrainConfig { steps: 3, batch_size: 6, warmup: 2, ..TrainConfig::default() },
        dropout: 0.1,
        eval_size: 10,
        seed: 2,
        out_dir: None,
        overwrite: false,
        stop: None,
        model_name: "dp-seq".into(),
        beam: None,
    };
    let train = |ranks: usize| -> Vec<Seq> {
        let members = ThreadGroup::new(ranks).unwrap();
        std::thread::scope(|scope| {
            let handles: Vec<_> = members
                .into_iter()
                .map(|member| {
                    let run = &run;
                    scope.spawn(move || {
                        let dev = Cpu::seed_from_u64(3 + member.rank() as u64);
                        run_task_on::<Seq, TASK_VOCAB, f64, Cpu>(&member, run, &dev, |_| {}).unwrap().0
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let base = scratch("seq");
    let reference = weights(&train(1)[0], &base);
    for model in train(3) {
        let difference = largest_difference(&reference, &weights(&model, &base));
        assert!(difference < 1e-6, "weights differ by {difference:e}");
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn a_rank_that_runs_something_else_stops_every_rank_with_a_clear_error() {
    let base = scratch("mismatch");
    let source = addition();
    let never = AtomicBool::new(false);
    let members = ThreadGroup::new(2).unwrap();
    let errors: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = members
            .into_iter()
            .map(|member| {
                let (source, never, base) = (&source, &never, &base);
                scope.spawn(move || {
                    let mut run = fresh_lm(member.rank());
                    // Rank 1 was given another seed.
                    let cfg = LmTrainConfig { seed: 5 + member.rank() as u64, ..lm_config(2, 4) };
                    let lock = (member.rank() == 0).then(|| RunLock::acquire(base).unwrap());
                    train_language_model_on(
                        &member,
                        &mut run,
                        source,
                        &cfg,
                        lock.as_ref(),
                        HashMap::new(),
                        never,
                        |_| {},
                    )
                    .unwrap_err()
                    .to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(errors[0].contains("rank 1 of the 2 data-parallel ranks failed"), "{}", errors[0]);
    assert!(errors[1].contains("rank 1 of 2 does not run what rank 0 runs"), "{}", errors[1]);
    // Nothing was trained, so nothing was committed.
    assert!(typeformer::io::Checkpoint::latest(&base).unwrap().is_none());
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn a_batch_that_does_not_split_over_the_ranks_is_refused_on_every_rank() {
    let base = scratch("split");
    for result in train_lm_on_threads(2, &lm_config(2, 5), &base, fresh_lm) {
        let err = result.map(|_| ()).expect_err("a batch of 5 over 2 ranks").to_string();
        assert!(err.contains("--batch-size 5 (the global batch) does not split evenly over 2 ranks"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn a_rank_that_leaves_does_not_leave_the_others_waiting() {
    let members = ThreadGroup::new(3).unwrap();
    let results: Vec<typeformer::Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = members
            .into_iter()
            .map(|member| {
                scope.spawn(move || {
                    let mut values = vec![member.rank() as f64; 3];
                    member.all_reduce_sum(&mut values)?;
                    assert_eq!(values, vec![3.0; 3]);
                    if member.rank() == 2 {
                        // Returns (and drops its member) before the second exchange.
                        return Ok(());
                    }
                    member.all_reduce_sum(&mut values)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results[2].is_ok());
    for result in &results[..2] {
        let err = result.as_ref().unwrap_err().to_string();
        assert!(err.contains("rank 2 of the 3 data-parallel ranks failed or left"), "{err}");
    }
}

#[test]
fn agreeing_reports_the_failing_rank_to_the_others() {
    let members = ThreadGroup::new(2).unwrap();
    let results: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = members
            .into_iter()
            .map(|member| {
                scope.spawn(move || {
                    let local = match member.rank() {
                        0 => Ok(()),
                        _ => Err(typeformer::Error::InvalidConfig("bad data on rank 1".into())),
                    };
                    agree(&member, local).unwrap_err().to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results[0].contains("rank 1 of the 2"), "{}", results[0]);
    assert!(results[1].contains("bad data on rank 1"), "{}", results[1]);
    // Alone, an outcome is its own agreement.
    assert!(agree(&SingleProcess, Ok(3)).unwrap() == 3);
}

#[test]
fn a_stop_request_on_one_rank_stops_every_rank_after_the_same_step() {
    let base = scratch("stop");
    let source = addition();
    let (asked, never) = (AtomicBool::new(true), AtomicBool::new(false));
    let members = ThreadGroup::new(2).unwrap();
    let steps: Vec<(LmStop, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = members
            .into_iter()
            .map(|member| {
                let (source, base) = (&source, &base);
                // Only rank 1 is asked to stop (as by a signal that reached one process).
                let stop = if member.rank() == 1 { &asked } else { &never };
                scope.spawn(move || {
                    let mut run = fresh_lm(member.rank());
                    let lock = (member.rank() == 0).then(|| RunLock::acquire(base).unwrap());
                    let meta = HashMap::from([("model".to_string(), "dp-lm".to_string())]);
                    let cfg = lm_config(5, 4);
                    let stopped =
                        train_language_model_on(&member, &mut run, source, &cfg, lock.as_ref(), meta, stop, |_| {})
                            .unwrap();
                    (stopped, run.opt.step)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(steps, vec![(LmStop::Interrupted, 1); 2]);
    // Rank 0 wrote the checkpoint of that step.
    assert_eq!(typeformer::io::Checkpoint::latest(&base).unwrap().map(|c| c.step), Some(1));
    let _ = std::fs::remove_dir_all(&base);
}
