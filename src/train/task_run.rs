//! One complete run on a built-in task: train, save, evaluate. The command-line tool's `train`
//! is a thin layer over [`run_task`].

use super::{exact_match, train_seq2seq, Decoding, StepLog, TrainConfig};
use crate::data::{Example, TaskData, TaskSpec};
use crate::error::{Error, Result};
use crate::generate::BeamConfig;
use crate::io::{load_checkpoint, save_checkpoint, write_curve_csv, write_curve_png};
use crate::models::Seq2Seq;
use crate::nn::set_dropout;
use crate::FloatDtype;
use dfdx::prelude::*;
use std::collections::HashMap;
use std::path::PathBuf;
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
    /// Where the checkpoint and loss curve go (`None`: nowhere).
    pub out_dir: Option<PathBuf>,
    /// Name of the model configuration, recorded in the checkpoint.
    pub model_name: String,
    /// Also evaluate with beam search of this configuration (its `max_len` is set per batch).
    pub beam: Option<BeamConfig>,
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
}

/// Builds a fresh `M` on `dev`, trains it on `run.spec`, writes the checkpoint
/// (`model.safetensors`) and loss curve (`loss.csv`, `loss.png`) to `run.out_dir`, and evaluates
/// exact match on held-out sequences.
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
    run.spec.validate(V, M::MAX_LEN)?;
    run.train.validate()?;
    if run.eval_size == 0 {
        return Err(Error::InvalidConfig("--eval-size must be at least 1".into()));
    }
    if let Some(dir) = &run.out_dir {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    }
    let mut data = TaskData::new(run.spec, run.eval_size, run.seed)?;
    let mut model = M::try_build(dev).map_err(|e| Error::Training(format!("cannot build the model: {e:?}")))?;
    set_dropout(&mut model, run.dropout)?;

    let start = Instant::now();
    let logs = train_seq2seq::<M, V, V, E, Dev>(&mut model, &mut data, &run.train, on_step)?;
    let train_seconds = start.elapsed().as_secs_f64();

    let mut files = Vec::new();
    if let Some(dir) = &run.out_dir {
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
        ]);
        let checkpoint = dir.join("model.safetensors");
        save_checkpoint(&model, &checkpoint, metadata)?;
        let csv = dir.join("loss.csv");
        write_curve_csv(&csv, &logs)?;
        let png = dir.join("loss.png");
        write_curve_png(&png, &logs, &format!("{} task, {}: training loss", run.spec.task, run.model_name))?;
        files.extend([checkpoint, csv, png]);
    }

    let evaluation = evaluate_task::<M, V, E, Dev>(&model, data.held_out(), run.beam)?;
    Ok((model, TaskReport { logs, evaluation, train_seconds, files }))
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

/// Loads a checkpoint written by [`run_task`] into a fresh `M` on `dev` and evaluates it on the
/// held-out examples of the run that wrote it (rebuilt from the task, lengths and seed in its
/// metadata; `eval_size` of them).
pub fn evaluate_checkpoint<M, const V: usize, E, Dev>(
    dir: &std::path::Path,
    dev: &Dev,
    eval_size: usize,
    beam: Option<BeamConfig>,
) -> Result<TaskEvaluation>
where
    M: Seq2Seq<V, V, E, Dev> + TensorCollection<E, Dev, To<E, Dev> = M>,
    M::State: Clone,
    E: FloatDtype,
    Dev: Device<E>,
{
    let path = dir.join("model.safetensors");
    let metadata = crate::io::read_metadata(&path)?;
    let field = |key: &str| -> Result<&String> {
        metadata.get(key).ok_or_else(|| Error::BadFile {
            path: path.clone(),
            reason: format!("no `{key}` in its metadata: not a task checkpoint"),
        })
    };
    let number = |key: &str| -> Result<usize> {
        field(key)?
            .parse()
            .map_err(|_| Error::BadFile { path: path.clone(), reason: format!("`{key}` is not a number") })
    };
    let spec = TaskSpec {
        task: field("task")?.parse()?,
        symbols: number("symbols")?,
        min_len: number("min_len")?,
        max_len: number("max_len")?,
    };
    let seed: u64 = field("seed")?
        .parse()
        .map_err(|_| Error::BadFile { path: path.clone(), reason: "`seed` is not a number".into() })?;
    let data = TaskData::new(spec, eval_size, seed)?;
    let mut model = M::try_build(dev).map_err(|e| Error::Training(format!("cannot build the model: {e:?}")))?;
    load_checkpoint(&mut model, &path)?;
    evaluate_task::<M, V, E, Dev>(&model, data.held_out(), beam)
}
