//! Training a language model, with validation, periodic checkpoints and exact resumption.
//!
//! A checkpoint holds `model.safetensors` (with the step and run settings in its metadata),
//! `optimizer.safetensors` (Adam's step and moments) and `loss.csv`, committed as one unit in
//! the run directory ([`RunLock::commit`]), so an interrupted run always leaves the last complete
//! checkpoint; `loss.png` is drawn beside it. The
//! data of step `s` is drawn from an RNG seeded by `(seed, s)`, so a resumed run sees exactly the
//! batches the uninterrupted run would have seen.

use super::{agree, all_reduce_gradients, fingerprint, sync_replicas, GradientExchange, Shard, SingleProcess};
use super::{label_smoothed_cross_entropy, Adam, AdamConfig, StepLog, WarmupSchedule};
use super::{read_curve_csv, write_curve_csv};
use crate::data::{AdditionTask, LmSource, BYTE_VOCAB};
use crate::error::{Error, Result};
use crate::generate::{generate, GenerateConfig, Sampler, SamplingConfig};
use crate::io::{load_checkpoint, parameter_shapes, read_latest, read_metadata, save_checkpoint, Checkpoint, RunLock};
use crate::memory::check_memory;
use crate::models::LanguageModel;
use crate::FloatDtype;
use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// How to train a language model.
#[derive(Debug, Clone, PartialEq)]
pub struct LmTrainConfig {
    /// Total optimizer steps (a resumed run continues up to this step).
    pub steps: usize,
    /// Sequences per step.
    pub batch_size: usize,
    /// Tokens per training sequence (at most the model's context).
    pub context: usize,
    /// Warmup steps of the schedule.
    pub warmup: usize,
    /// Scale of the schedule.
    pub lr_factor: f64,
    /// Adam's settings.
    pub adam: AdamConfig,
    /// Seeds the data stream.
    pub seed: u64,
    /// Measure validation loss every this many steps (and at the end).
    pub eval_every: usize,
    /// Write a checkpoint every this many steps (and at the end, and when interrupted).
    pub checkpoint_every: usize,
    /// Name of the model configuration, recorded in and checked against checkpoints.
    pub model_name: String,
}

impl LmTrainConfig {
    /// Rejects settings that cannot train a model with `context` positions.
    pub fn validate(&self, context: usize) -> Result<()> {
        if self.steps == 0 || self.batch_size == 0 || self.eval_every == 0 || self.checkpoint_every == 0 {
            return Err(Error::InvalidConfig(
                "--steps, --batch-size, --eval-every and --checkpoint-every must be positive".into(),
            ));
        }
        if self.context < 2 || self.context > context {
            return Err(Error::InvalidConfig(format!(
                "--context must be in 2..={context} (the model's positions), got {}",
                self.context
            )));
        }
        if self.warmup == 0 || !(self.lr_factor > 0.0 && self.lr_factor.is_finite()) {
            return Err(Error::InvalidConfig("--warmup and --lr-factor must be positive".into()));
        }
        Ok(())
    }
}

/// How a training run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LmStop {
    /// All steps done.
    Finished,
    /// Stopped early by the stop flag (Ctrl-C); the checkpoint holds the last finished step.
    Interrupted,
}

/// A model, its optimizer and its history: what a run directory holds.
#[derive(Debug, Clone)]
pub struct LmRun<M, E: Dtype, Dev: Storage<E>> {
    /// The model.
    pub model: M,
    /// Its optimizer (step count and moments).
    pub opt: Adam<E, Dev>,
    /// One entry per step done so far.
    pub logs: Vec<StepLog>,
}

/// A checkpoint's header metadata.
pub type Metadata = HashMap<String, String>;

fn batch_rng(seed: u64, step: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Mean next-token loss over the validation batches.
pub fn validation_loss<M, E, Dev>(model: &M, source: &LmSource, batch_size: usize, context: usize) -> Result<f64>
where
    M: LanguageModel<BYTE_VOCAB, E, Dev>,
    E: FloatDtype,
    Dev: Device<E>,
{
    let (mut total, mut tokens) = (0.0, 0usize);
    for (inputs, labels) in source.validation_batches(batch_size, context)? {
        let loss = label_smoothed_cross_entropy(model.logits(&inputs)?, &labels, 0.0)?;
        total += loss.as_vec()[0].to_f64().unwrap_or(f64::NAN) * labels.num_tokens() as f64;
        tokens += labels.num_tokens();
    }
    if tokens == 0 {
        return Err(Error::InvalidConfig("no validation tokens: the data leaves nothing to validate on".into()));
    }
    Ok(total / tokens as f64)
}

/// Fraction of held-out `a+b=` prompts that the model completes with the right sum.
pub fn addition_accuracy<M, E, Dev>(model: &M, task: &AdditionTask) -> Result<f64>
where
    M: LanguageModel<BYTE_VOCAB, E, Dev>,
    E: FloatDtype,
    Dev: Device<E>,
{
    let cfg = GenerateConfig { max_new_tokens: task.digits as usize + 2, stop_tokens: vec![b'\n' as usize] };
    let mut correct = 0;
    for &(a, b) in task.held_out() {
        let prompt: Vec<usize> = format!("{a}+{b}=").bytes().map(usize::from).collect();
        let mut sampler = Sampler::new(SamplingConfig::greedy())?;
        let out = generate::<M, BYTE_VOCAB, E, Dev>(model, &prompt, &cfg, &mut sampler, |_| {})?;
        let text: String = out.iter().map(|&t| t as u8 as char).collect();
        correct += usize::from(text == format!("{}\n", a + b));
    }
    Ok(correct as f64 / task.held_out().len().max(1) as f64)
}

/// The model's file in a language-model checkpoint.
pub const MODEL_FILE: &str = "model.safetensors";
/// The optimizer's file (Adam's step and moments): what resuming needs beside the model.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The loss curve's file.
pub const CURVE_FILE: &str = "loss.csv";

/// Commits the checkpoint of `run` in the run directory `lock` owns: the model (whose metadata
/// names the step), the optimizer and the loss curve as one unit (see [`RunLock::commit`]).
pub fn save_lm_checkpoint<M, E, Dev>(
    run: &LmRun<M, E, Dev>,
    lock: &RunLock,
    mut metadata: HashMap<String, String>,
) -> Result<Checkpoint>
where
    M: LanguageModel<BYTE_VOCAB, E, Dev>,
    E: FloatDtype,
    Dev: Device<E>,
{
    metadata.insert("step".into(), run.opt.step.to_string());
    lock.commit(
        run.opt.step,
        &[
            (MODEL_FILE, &|path: &Path| save_checkpoint(&run.model, path, metadata.clone())),
            (OPTIMIZER_FILE, &|path: &Path| run.opt.save(path)),
            (CURVE_FILE, &|path: &Path| write_curve_csv(path, &run.logs)),
        ],
    )
}

/// A language model's checkpoint, loaded to continue training.
#[derive(Debug, Clone)]
pub struct LmResume<M, E: Dtype, Dev: Storage<E>> {
    /// The model, its optimizer and its loss history.
    pub run: LmRun<M, E, Dev>,
    /// The model file's metadata (the run's settings).
    pub metadata: Metadata,
    /// Where it was read from.
    pub checkpoint: Checkpoint,
    /// What could not be restored without harm to the run (an unreadable loss curve: the
    /// history before the checkpoint is then lost, the training is not).
    pub warnings: Vec<String>,
}

/// Loads only the model of the checkpoint in the run directory `dir` into a model built on
/// `dev`, for inference: neither the optimizer nor the loss curve is read. Errors name what is
/// wrong: no checkpoint, a checkpoint of another model, a bad file.
pub fn load_lm_model<M, E, Dev>(dir: &Path, dev: &Dev, model_name: &str) -> Result<(M, Metadata, Checkpoint)>
where
    M: LanguageModel<BYTE_VOCAB, E, Dev> + TensorCollection<E, Dev, To<E, Dev> = M>,
    E: FloatDtype,
    Dev: Device<E>,
{
    read_latest(dir, |checkpoint| {
        let model_path = checkpoint.file(MODEL_FILE)?;
        let metadata = read_metadata(&model_path)?;
        match metadata.get("model") {
            Some(name) if name == model_name => {}
            other => {
                return Err(Error::CheckpointMismatch {
                    path: model_path,
                    problems: format!(
                        "it holds a `{}` model, but a `{model_name}` language model was expected",
                        other.map_or("unknown", String::as_str)
                    ),
                })
            }
        }
        let mut model = M::try_build(dev).map_err(|e| Error::Device(format!("cannot build the model: {e:?}")))?;
        load_checkpoint(&mut model, &model_path)?;
        Ok((model, metadata, checkpoint.clone()))
    })
}

/// Loads the checkpoint in the run directory `dir` (the model, its optimizer and its loss
/// curve) to continue training it. Errors name what is wrong: no checkpoint, a checkpoint of
/// another model, files from different steps, a bad file; a loss curve that cannot be read is
/// a warning (the history is lost, the training is not).
pub fn load_lm_checkpoint<M, E, Dev>(
    dir: &Path,
    dev: &Dev,
    model_name: &str,
    adam: AdamConfig,
) -> Result<LmResume<M, E, Dev>>
where
    M: LanguageModel<BYTE_VOCAB, E, Dev> + TensorCollection<E, Dev, To<E, Dev> = M>,
    E: FloatDtype,
    Dev: Device<E>,
{
    let (model, metadata, checkpoint) = load_lm_model::<M, E, Dev>(dir, dev, model_name)?;
    let opt = Adam::load(adam, &checkpoint.file(OPTIMIZER_FILE)?, dev, &parameter_shapes(&model)?)?;
    let model_path = checkpoint.path(MODEL_FILE);
    let step: usize = metadata.get("step").and_then(|s| s.parse().ok()).ok_or_else(|| Error::BadFile {
        path: model_path.clone(),
        reason: "no training step in its metadata: not a checkpoint of train-lm".into(),
    })?;
    let committed = if checkpoint.files.is_empty() { step } else { checkpoint.step };
    if step != opt.step || step != committed {
        return Err(Error::CheckpointMismatch {
            path: checkpoint.dir.clone(),
            problems: format!(
                "the model is at step {step}, the optimizer at step {} and the commit record at step {committed}: \
                 the files come from different runs",
                opt.step
            ),
        });
    }
    let mut warnings = Vec::new();
    let mut logs = if checkpoint.has(CURVE_FILE) {
        checkpoint.file(CURVE_FILE).and_then(|curve| read_curve_csv(&curve)).unwrap_or_else(|e| {
            warnings.push(format!("the loss curve cannot be read ({e}); the run continues without its history"));
            Vec::new()
        })
    } else {
        Vec::new()
    };
    logs.retain(|l| l.step <= step);
    Ok(LmResume { run: LmRun { model, opt, logs }, metadata, checkpoint, warnings })
}

/// Trains `run` from its current step up to `cfg.steps`, checkpointing into `dir`. Checks
/// `stop` after every step; when set, saves and returns [`LmStop::Interrupted`].
pub fn train_language_model<M, E, Dev>(
    run: &mut LmRun<M, E, Dev>,
    source: &LmSource,
    cfg: &LmTrainConfig,
    lock: &RunLock,
    metadata: HashMap<String, String>,
    stop: &AtomicBool,
    on_step: impl FnMut(&StepLog),
) -> Result<LmStop>
where
    M: LanguageModel<BYTE_VOCAB, E, Dev>,
    E: FloatDtype,
    Dev: Device<E>,
{
    train_language_model_on(&SingleProcess, run, source, cfg, Some(lock), metadata, stop, on_step)
}

/// [`train_language_model`] as one replica of a data-parallel run over `exchange` (see
/// [`data_parallel`](super::GradientExchange)): `cfg.batch_size` is the global batch, split
/// evenly over the ranks, so the run is the same whatever their number, and a checkpoint
/// written with one number of ranks resumes with any other. Rank 0 alone needs `lock` (the
/// others are given `None`: rank 0 reads and writes the run directory, measures the validation
/// loss and calls `on_step`); its model and optimizer are copied to every rank before the first
/// step, so only rank 0 loads a checkpoint to resume. A stop request on any rank stops every
/// rank after the step, and an error on any rank stops every rank (the others with
/// [`Error::RankFailed`]).
#[allow(clippy::too_many_arguments)]
pub fn train_language_model_on<M, E, Dev>(
    exchange: &dyn GradientExchange,
    run: &mut LmRun<M, E, Dev>,
    source: &LmSource,
    cfg: &LmTrainConfig,
    lock: Option<&RunLock>,
    metadata: HashMap<String, String>,
    stop: &AtomicBool,
    mut on_step: impl FnMut(&StepLog),
) -> Result<LmStop>
where
    M: LanguageModel<BYTE_VOCAB, E, Dev>,
    E: FloatDtype,
    Dev: Device<E>,
{
    let root = exchange.rank() == 0;
    let prepared = (|| {
        cfg.validate(M::CONTEXT)?;
        check_memory("--steps", cfg.steps, std::mem::size_of::<StepLog>() as u64)?;
        let shard = Shard::of(cfg.batch_size, exchange)?;
        check_memory("--batch-size", shard.per_rank, cfg.context as u64 * M::TRAIN_BYTES_PER_TOKEN)?;
        let schedule = WarmupSchedule { d_model: M::D_MODEL, warmup: cfg.warmup, factor: cfg.lr_factor };
        schedule.validate()?;
        match (root, lock) {
            (true, None) => {
                Err(Error::InvalidConfig("rank 0 writes the checkpoints: it needs the run directory".into()))
            }
            (_, lock) => Ok((shard, schedule, lock.filter(|_| root))),
        }
    })();
    let (shard, schedule, lock) = agree(exchange, prepared)?;
    let settings = format!("{cfg:?} {} {}", source.describe(), parameter_shapes(&run.model)?.len());
    sync_replicas(exchange, &mut run.model, &mut run.opt, fingerprint(&settings))?;
    let mut grads = Some(run.model.alloc_grads());
    // An error of this rank between exchanges (rank 0's checkpoint), told to the others at the next.
    let mut pending: Option<Error> = None;
    let mut interrupted = false;
    while run.opt.step < cfg.steps && !interrupted {
        let step = run.opt.step + 1;
        let start = Instant::now();
        let local = match pending.take() {
            Some(e) => Err(e),
            None => {
                let slot = grads.take().unwrap_or_else(|| run.model.alloc_grads());
                lm_local_step(&run.model, source, cfg, &shard, step, slot)
            }
        };
        let reduced = all_reduce_gradients(
            exchange,
            &run.model,
            local.as_ref().ok().map(|(g, loss, tokens)| (g, *loss, *tokens)),
            stop.load(Ordering::SeqCst),
        );
        let (mut local_grads, _, _) = local?;
        let reduced = reduced?;
        let lr = schedule.lr(step);
        let stats = match &reduced.gradients {
            Some(gradients) => run.opt.update_from(&mut run.model, gradients, lr)?,
            None => run.opt.update(&mut run.model, &local_grads, lr)?,
        };
        run.model.zero_grads(&mut local_grads);
        grads = Some(local_grads);
        interrupted = reduced.interrupted;
        let tokens_per_sec = reduced.tokens as f64 / start.elapsed().as_secs_f64();
        let Some(lock) = lock else {
            let log =
                StepLog { step, loss: reduced.loss, lr, grad_norm: stats.grad_norm, tokens_per_sec, val_loss: None };
            run.logs.push(log);
            continue;
        };
        let mut finish_step = || -> Result<()> {
            let val_loss = if step.is_multiple_of(cfg.eval_every) || step == cfg.steps {
                Some(validation_loss(&run.model, source, cfg.batch_size, cfg.context)?)
            } else {
                None
            };
            let log = StepLog { step, loss: reduced.loss, lr, grad_norm: stats.grad_norm, tokens_per_sec, val_loss };
            run.logs.push(log);
            on_step(&log);
            if step.is_multiple_of(cfg.checkpoint_every) || step == cfg.steps || interrupted {
                save_lm_checkpoint(run, lock, metadata.clone())?;
            }
            Ok(())
        };
        pending = finish_step().err();
    }
    let end = if interrupted { LmStop::Interrupted } else { LmStop::Finished };
    agree(exchange, pending.map_or(Ok(end), Err))
}

/// This rank's share of step `step`: the gradients of the mean loss over its real tokens (in
/// `grads`), the loss and the number of tokens.
fn lm_local_step<M, E, Dev>(
    model: &M,
    source: &LmSource,
    cfg: &LmTrainConfig,
    shard: &Shard,
    step: usize,
    grads: Gradients<E, Dev>,
) -> Result<(Gradients<E, Dev>, f64, usize)>
where
    M: LanguageModel<BYTE_VOCAB, E, Dev>,
    E: FloatDtype,
    Dev: Device<E>,
{
    let mut rng = batch_rng(cfg.seed, step);
    // Every rank draws the whole global batch and keeps its rows, padded like the whole batch.
    let (inputs, labels) = source.train_batch(&mut rng, cfg.batch_size, cfg.context)?;
    let rows = shard.rows();
    let (inputs, labels) =
        if shard.ranks == 1 { (inputs, labels) } else { (inputs.rows(rows.clone())?, labels.rows(rows.clone())?) };
    crate::nn::seed_dropout_per_example(rng.gen(), rows.start, rows.len());
    let logits = model.logits_train(&inputs, grads)?;
    let loss = label_smoothed_cross_entropy(logits, &labels, 0.0)?;
    let loss_value = loss.as_vec()[0].to_f64().unwrap_or(f64::NAN);
    if !loss_value.is_finite() {
        return Err(Error::Training(format!("loss is {loss_value} at step {step}; lower --lr-factor")));
    }
    Ok((super::backward(loss)?, loss_value, labels.num_tokens()))
}
