//! One complete run on a built-in task: train, save, evaluate. The command-line tool's `train`
//! is a thin layer over [`run_task`].

use super::{
    agree, exact_match, train_seq2seq_on, write_curve_csv, Adam, Decoding, GradientExchange, SingleProcess, StepLog,
    TrainConfig, CURVE_FILE, MODEL_FILE,
};
use crate::data::{Example, TaskData, TaskSpec};
use crate::error::{Error, Result};
use crate::generate::{check_beam_config, BeamConfig};
use crate::io::{load_checkpoint, read_latest, save_checkpoint, Checkpoint, Occupants, RunLock};
use crate::memory::check_memory;
use crate::models::Seq2Seq;
use crate::nn::set_dropout;
use crate::FloatDtype;
use dfdx::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything a task run needs.
#[derive(Debug, Clone)]
pub struct TaskRun {
    /// Which task and which sequences.
    pub spec: TaskSpec,
    /// Optimisation settings.
    pub train: TrainConfig,
    /// Dropout everywhere in the model.
    pub dropout: f64,
    /// Held-out sequences for exact-match evaluation.
    pub eval_size: usize,
    /// Seeds the data and the initialisation.
    pub seed: u64,
    /// The run directory for the checkpoint, loss curve and plots (`None`: nowhere).
    pub out_dir: Option<PathBuf>,
    /// Replace a checkpoint `out_dir` already holds (otherwise that is an error).
    pub overwrite: bool,
    /// Name of the model configuration, recorded in the checkpoint.
    pub model_name: String,
    /// Also evaluate with beam search of this configuration (its `max_len` is set per batch).
    pub beam: Option<BeamConfig>,
    /// Set (by a signal handler) to stop the training after the current step: the run then
    /// ends with [`Error::Interrupted`] and saves nothing.
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// What a task run produced.
#[derive(Debug, Clone)]
pub struct TaskReport {
    /// One entry per step.
    pub logs: Vec<StepLog>,
    /// Exact match on the held-out sequences.
    pub evaluation: TaskEvaluation,
    /// Wall-clock seconds of training (without evaluation).
    pub train_seconds: f64,
    /// Files written.
    pub files: Vec<PathBuf>,
    /// What could not be written besides the checkpoint (a plot), without harm to the run.
    pub warnings: Vec<String>,
}

/// Builds a fresh `M` on `dev`, trains it on `run.spec`, writes the checkpoint
/// (`model.safetensors`) and loss curve (`loss.csv`, `loss.png`) to `run.out_dir`, evaluates
/// exact match on held-out sequences, and draws the cross-attention of the longest held-out
/// source to `attention.png` there.
pub fn run_task<M, const V: usize, E, Dev>(
    run: &TaskRun,
    dev: &Dev,
    on_step: impl FnMut(&StepLog),
) -> Result<(M, TaskReport)>
where
    M: Seq2Seq<V, V, E, Dev> + TensorCollection<E, Dev, To<E, Dev> = M>,
    M::State: Clone,
    E: FloatDtype,
    Dev: Device<E>,
{
    run_task_on::<M, V, E, Dev>(&SingleProcess, run, dev, on_step)
}

/// [`run_task`] as one replica of a data-parallel run over `exchange` ([`train_seq2seq_on`]):
/// `run.train.batch_size` is the global batch; rank 0 alone owns `run.out_dir`, writes the
/// files and calls `on_step`; every rank evaluates its (identical) model and returns it.
pub fn run_task_on<M, const V: usize, E, Dev>(
    exchange: &dyn GradientExchange,
    run: &TaskRun,
    dev: &Dev,
    on_step: impl FnMut(&StepLog),
) -> Result<(M, TaskReport)>
where
    M: Seq2Seq<V, V, E, Dev> + TensorCollection<E, Dev, To<E, Dev> = M>,
    M::State: Clone,
    E: FloatDtype,
    Dev: Device<E>,
{
    let root = exchange.rank() == 0;
    let prepared = (|| {
        run.spec.validate(V, M::MAX_LEN)?;
        run.train.validate()?;
        if let Some(beam) = &run.beam {
            check_beam_config::<M, V, V, E, Dev>(beam)?;
        }
        if run.eval_size == 0 {
            return Err(Error::InvalidConfig("--eval-size must be at least 1".into()));
        }
        // Owned before any work, so that a second run on the directory stops at once.
        let lock = run.out_dir.as_deref().filter(|_| root).map(RunLock::acquire).transpose()?;
        if let (Some(lock), false) = (&lock, run.overwrite) {
            match Checkpoint::latest(lock.dir()) {
                Ok(None) => {
                    if let Some(refusal) = Occupants::of(lock.dir())?.refusal(lock.dir()) {
                        return Err(refusal);
                    }
                }
                Ok(Some(existing)) => {
                    return Err(Error::InvalidConfig(format!(
                        "{} already holds a trained model ({}): pass --force to replace it, or choose another --out",
                        lock.dir().display(),
                        existing.path(MODEL_FILE).display()
                    )))
                }
                Err(e) => return Err(Error::InvalidConfig(format!("{e}; pass --force to replace that run"))),
            }
        }
        check_memory("--eval-size", run.eval_size, TaskData::bytes_per_held_out(&run.spec))?;
        Ok(lock)
    })();
    let lock = agree(exchange, prepared)?;
    let mut data = TaskData::new(run.spec, run.eval_size, run.seed)?;
    let mut model = M::try_build(dev).map_err(|e| Error::Device(format!("cannot build the model: {e:?}")))?;
    set_dropout(&mut model, run.dropout)?;

    let start = Instant::now();
    let never = std::sync::atomic::AtomicBool::new(false);
    let stop = run.stop.as_deref().unwrap_or(&never);
    let mut opt = Adam::new(run.train.adam)?;
    let logs =
        train_seq2seq_on::<M, V, V, E, Dev>(exchange, &mut model, &mut opt, &mut data, &run.train, stop, on_step)?;
    let train_seconds = start.elapsed().as_secs_f64();

    #[cfg_attr(not(feature = "plots"), allow(unused_mut))]
    let (mut files, mut warnings) = (Vec::new(), Vec::new());
    // Plots are views of the run: one that cannot be written is reported, not fatal.
    #[cfg(feature = "plots")]
    let plot = |files: &mut Vec<PathBuf>, warnings: &mut Vec<String>, png: PathBuf, result: Result<()>| match result {
        Ok(()) => files.push(png),
        Err(e) => warnings.push(format!("no plot: {e}")),
    };
    let committed = (|| -> Result<()> {
        if let Some(lock) = &lock {
            // A task run always starts afresh: no plot of an earlier run survives its commit.
            lock.start_new_run();
            let metadata = HashMap::from([
                ("format".to_string(), "typeformer".to_string()),
                ("model".to_string(), run.model_name.clone()),
                ("task".to_string(), run.spec.task.to_string()),
                ("symbols".to_string(), run.spec.symbols.to_string()),
                ("min_len".to_string(), run.spec.min_len.to_string()),
                ("max_len".to_string(), run.spec.max_len.to_string()),
                ("steps".to_string(), run.train.steps.to_string()),
                ("seed".to_string(), run.seed.to_string()),
                ("eval_size".to_string(), run.eval_size.to_string()),
                ("held_out_digest".to_string(), data.held_out_digest()),
            ]);
            let checkpoint = lock.commit(
                run.train.steps,
                &[
                    (MODEL_FILE, &|path: &Path| save_checkpoint(&model, path, metadata.clone())),
                    (CURVE_FILE, &|path: &Path| write_curve_csv(path, &logs)),
                ],
            )?;
            files.extend([checkpoint.path(MODEL_FILE), checkpoint.path(CURVE_FILE)]);
            #[cfg(feature = "plots")]
            {
                let png = lock.dir().join("loss.png");
                let title = format!("{} task, {}: training loss", run.spec.task, run.model_name);
                plot(&mut files, &mut warnings, png.clone(), super::write_curve_png(&png, &logs, &title));
            }
        }
        Ok(())
    })();
    agree(exchange, committed)?;

    let evaluation = evaluate_task::<M, V, E, Dev>(&model, data.held_out(), run.beam)?;
    #[cfg(feature = "plots")]
    if let Some(lock) = &lock {
        // The longest held-out source shows the most of what the model learned.
        if let Some(example) = data.held_out().iter().max_by_key(|e| e.source.len()) {
            let png = lock.dir().join("attention.png");
            let title = format!("{} task, held-out example: cross-attention", run.spec.task);
            let drawn = super::plot_attention::<M, V, E, Dev>(
                &model,
                &example.source,
                &super::AttentionSelection::cross(),
                &png,
                &title,
            );
            plot(&mut files, &mut warnings, png, drawn.map(|_| ()));
        }
    }
    Ok((model, TaskReport { logs, evaluation, train_seconds, files, warnings }))
}

/// Exact match of a task model on held-out examples.
#[derive(Debug, Clone)]
pub struct TaskEvaluation {
    /// Fraction decoded exactly by greedy decoding.
    pub exact_match: f64,
    /// The same with beam search, when asked for.
    pub beam_exact_match: Option<f64>,
    /// The examples with their greedy decodings.
    pub decoded: Vec<(Example, Vec<usize>)>,
}

/// Greedy (and, with `beam`, beam-search) exact match of `model` on `held_out`.
pub fn evaluate_task<M, const V: usize, E, Dev>(
    model: &M,
    held_out: &[Example],
    beam: Option<BeamConfig>,
) -> Result<TaskEvaluation>
where
    M: Seq2Seq<V, V, E, Dev>,
    M::State: Clone,
    E: FloatDtype,
    Dev: Device<E>,
{
    let (greedy, outputs) = exact_match::<M, V, V, E, Dev>(model, held_out, 100, Decoding::Greedy)?;
    let beam_exact_match = match beam {
        Some(cfg) => Some(exact_match::<M, V, V, E, Dev>(model, held_out, 100, Decoding::Beam(cfg))?.0),
        None => None,
    };
    Ok(TaskEvaluation {
        exact_match: greedy,
        beam_exact_match,
        decoded: held_out.iter().cloned().zip(outputs).collect(),
    })
}

/// What a checkpoint written by [`run_task`] says of its run: the model's name, the task, and
/// the seed, size and fingerprint of its held-out set.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskCheckpoint {
    /// `model.safetensors` of the run's committed checkpoint.
    pub path: PathBuf,
    /// The model configuration (`small`, `medium`).
    pub model_name: String,
    /// The task and its sequences.
    pub spec: TaskSpec,
    /// The run's seed (its held-out set is drawn from it).
    pub seed: u64,
    /// How many held-out sequences the run set aside.
    pub eval_size: usize,
    /// [`TaskData::held_out_digest`] of them (absent in checkpoints of older typeformers).
    pub held_out_digest: Option<String>,
}

impl TaskCheckpoint {
    /// Reads the metadata of the model in the run directory `dir`.
    pub fn read(dir: &Path) -> Result<Self> {
        let (path, metadata) = read_latest(dir, |checkpoint| {
            let path = checkpoint.file(MODEL_FILE)?;
            Ok((path.clone(), crate::io::read_metadata(&path)?))
        })?;
        let field = |key: &str| -> Result<&String> {
            metadata.get(key).ok_or_else(|| Error::BadFile {
                path: path.clone(),
                reason: format!("no `{key}` in its metadata: not a task checkpoint"),
            })
        };
        let number = |key: &str| -> Result<u64> {
            field(key)?
                .parse()
                .map_err(|_| Error::BadFile { path: path.clone(), reason: format!("`{key}` is not a number") })
        };
        let size = |key: &str| -> Result<usize> {
            usize::try_from(number(key)?)
                .map_err(|_| Error::BadFile { path: path.clone(), reason: format!("`{key}` is too large") })
        };
        let spec = TaskSpec {
            task: field("task")?.parse().map_err(|e| Error::BadFile { path: path.clone(), reason: format!("{e}") })?,
            symbols: size("symbols")?,
            min_len: size("min_len")?,
            max_len: size("max_len")?,
        };
        Ok(Self {
            model_name: field("model")?.clone(),
            spec,
            seed: number("seed")?,
            eval_size: size("eval_size")?,
            held_out_digest: metadata.get("held_out_digest").cloned(),
            path,
        })
    }

    /// A fresh `M` on `dev` with the checkpoint's weights, after checking that the run's task
    /// fits `M` (a checkpoint's metadata is read from outside).
    pub fn load_model<M, const V: usize, E, Dev>(&self, dev: &Dev) -> Result<M>
    where
        M: Seq2Seq<V, V, E, Dev> + TensorCollection<E, Dev, To<E, Dev> = M>,
        E: FloatDtype,
        Dev: Device<E>,
    {
        self.spec.validate(V, M::MAX_LEN).map_err(|e| Error::BadFile {
            path: self.path.clone(),
            reason: format!("its metadata describes a task this model cannot run: {e}"),
        })?;
        let mut model = M::try_build(dev).map_err(|e| Error::Device(format!("cannot build the model: {e:?}")))?;
        load_checkpoint(&mut model, &self.path)?;
        Ok(model)
    }

    /// The run's held-out examples, rebuilt from its metadata and checked against the
    /// fingerprint it recorded; the first `count` of them (all when `None`). More than the run
    /// set aside is an error: the others were training material.
    pub fn held_out(&self, count: Option<usize>) -> Result<Vec<Example>> {
        let count = count.unwrap_or(self.eval_size);
        if count == 0 || count > self.eval_size {
            return Err(Error::InvalidConfig(format!(
                "--eval-size {count}: the run set aside {} held-out sequences, so evaluate on 1 to {} of them \
                 (any other sequence may have been trained on)",
                self.eval_size, self.eval_size
            )));
        }
        check_memory("the run's --eval-size", self.eval_size, TaskData::bytes_per_held_out(&self.spec))?;
        let data = TaskData::new(self.spec, self.eval_size, self.seed)?;
        match &self.held_out_digest {
            Some(digest) if *digest == data.held_out_digest() => Ok(data.held_out()[..count].to_vec()),
            Some(_) => Err(Error::BadFile {
                path: self.path.clone(),
                reason: "its task, lengths, symbols, seed or evaluation size do not rebuild the held-out set the run \
                         recorded: the metadata was changed since training"
                    .into(),
            }),
            None => Err(Error::BadFile {
                path: self.path.clone(),
                reason: "written by a typeformer that did not record its held-out set, which this one draws \
                         differently: it cannot be evaluated on sequences it was sure never to have trained on"
                    .into(),
            }),
        }
    }
}

/// Loads a checkpoint written by [`run_task`] into a fresh `M` on `dev` and evaluates it on the
/// held-out examples of the run that wrote it (the first `eval_size` of them, or all; see
/// [`TaskCheckpoint::held_out`]).
pub fn evaluate_checkpoint<M, const V: usize, E, Dev>(
    checkpoint: &TaskCheckpoint,
    dev: &Dev,
    eval_size: Option<usize>,
    beam: Option<BeamConfig>,
) -> Result<TaskEvaluation>
where
    M: Seq2Seq<V, V, E, Dev> + TensorCollection<E, Dev, To<E, Dev> = M>,
    M::State: Clone,
    E: FloatDtype,
    Dev: Device<E>,
{
    if let Some(beam) = &beam {
        check_beam_config::<M, V, V, E, Dev>(beam)?;
    }
    // The model first: it checks that the run's task fits the model before anything is drawn.
    let model: M = checkpoint.load_model::<M, V, E, Dev>(dev)?;
    let held_out = checkpoint.held_out(eval_size)?;
    evaluate_task::<M, V, E, Dev>(&model, &held_out, beam)
}
