//! Training a language model, with validation, periodic checkpoints and exact resumption.
//!
//! A run directory holds `model.safetensors` (with the step and run settings in its metadata),
//! `optimizer.safetensors` (Adam's step and moments) and `loss.csv`/`loss.png`. Each file is
//! replaced atomically, so an interrupted run always leaves the last complete checkpoint. The
//! data of step `s` is drawn from an RNG seeded by `(seed, s)`, so a resumed run sees exactly the
//! batches the uninterrupted run would have seen.

use super::{label_smoothed_cross_entropy, Adam, AdamConfig, StepLog, WarmupSchedule};
use crate::data::{AdditionTask, LmSource, BYTE_VOCAB};
use crate::error::{Error, Result};
use crate::generate::{generate, GenerateConfig, Sampler, SamplingConfig};
use crate::io::{
    load_checkpoint, parameter_shapes, read_curve_csv, read_metadata, save_checkpoint, write_curve_csv, write_curve_png,
};
use crate::models::LanguageModel;
use crate::FloatDtype;
use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
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
    Ok(total / tokens.max(1) as f64)
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

/// Writes the checkpoint of `run` after `step` steps into `dir`: the optimizer first, then the
/// model (whose metadata names the step), then the curve.
pub fn save_lm_checkpoint<M, E, Dev>(
    run: &LmRun<M, E, Dev>,
    dir: &Path,
    mut metadata: HashMap<String, String>,
) -> Result<()>
where
    M: LanguageModel<BYTE_VOCAB, E, Dev>,
    E: FloatDtype,
    Dev: Device<E>,
{
    metadata.insert("step".into(), run.opt.step.to_string());
    run.opt.save(&dir.join("optimizer.safetensors"))?;
    save_checkpoint(&run.model, &dir.join("model.safetensors"), metadata)?;
    write_curve_csv(&dir.join("loss.csv"), &run.logs)?;
    if !run.logs.is_empty() {
        write_curve_png(&dir.join("loss.png"), &run.logs, "language model: training loss")?;
    }
    Ok(())
}

/// Loads a run directory written by [`save_lm_checkpoint`] into a model built on `dev`.
/// Errors name what is wrong: a missing file, a checkpoint of another model, files from
/// different steps.
pub fn load_lm_checkpoint<M, E, Dev>(
    dir: &Path,
    dev: &Dev,
    model_name: &str,
    adam: AdamConfig,
) -> Result<(LmRun<M, E, Dev>, Metadata)>
where
    M: LanguageModel<BYTE_VOCAB, E, Dev> + TensorCollection<E, Dev, To<E, Dev> = M>,
    E: FloatDtype,
    Dev: Device<E>,
{
    let model_path = dir.join("model.safetensors");
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
    let mut model = M::try_build(dev).map_err(|e| Error::Training(format!("cannot build the model: {e:?}")))?;
    load_checkpoint(&mut model, &model_path)?;
    let sizes: Vec<usize> = parameter_shapes(&model)?.into_iter().map(|(_, s)| s.iter().product()).collect();
    let opt = Adam::load(adam, &dir.join("optimizer.safetensors"), dev, &sizes)?;
    let step: usize = metadata.get("step").and_then(|s| s.parse().ok()).unwrap_or(usize::MAX);
    if step != opt.step {
        return Err(Error::CheckpointMismatch {
            path: dir.into(),
            problems: format!(
                "the model is at step {step} but the optimizer at step {}: the files come from different runs",
                opt.step
            ),
        });
    }
    let curve = dir.join("loss.csv");
    let mut logs = if curve.exists() { read_curve_csv(&curve)? } else { Vec::new() };
    logs.retain(|l| l.step <= step);
    Ok((LmRun { model, opt, logs }, metadata))
}

/// Trains `run` from its current step up to `cfg.steps`, checkpointing into `dir`. Checks
/// `stop` after every step; when set, saves and returns [`LmStop::Interrupted`].
pub fn train_language_model<M, E, Dev>(
    run: &mut LmRun<M, E, Dev>,
    source: &LmSource,
    cfg: &LmTrainConfig,
    dir: &Path,
    metadata: HashMap<String, String>,
    stop: &AtomicBool,
    mut on_step: impl FnMut(&StepLog),
) -> Result<LmStop>
where
    M: LanguageModel<BYTE_VOCAB, E, Dev>,
    E: FloatDtype,
    Dev: Device<E>,
{
    cfg.validate(M::CONTEXT)?;
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let schedule = WarmupSchedule { d_model: M::D_MODEL, warmup: cfg.warmup, factor: cfg.lr_factor };
    let mut grads = run.model.alloc_grads();
    while run.opt.step < cfg.steps {
        let step = run.opt.step + 1;
        let start = Instant::now();
        let mut rng = batch_rng(cfg.seed, step);
        let (inputs, labels) = source.train_batch(&mut rng, cfg.batch_size, cfg.context)?;
        crate::nn::seed_dropout(rng.gen());
        let logits = run.model.logits_train(&inputs, grads)?;
        let loss = label_smoothed_cross_entropy(logits, &labels, 0.0)?;
        let loss_value = loss.as_vec()[0].to_f64().unwrap_or(f64::NAN);
        if !loss_value.is_finite() {
            return Err(Error::Training(format!("loss is {loss_value} at step {step}; lower --lr-factor")));
        }
        grads = super::backward(loss)?;
        let lr = schedule.lr(step);
        let stats = run.opt.update(&mut run.model, &grads, lr)?;
        run.model.zero_grads(&mut grads);
        let tokens_per_sec = labels.num_tokens() as f64 / start.elapsed().as_secs_f64();
        let val_loss = if step.is_multiple_of(cfg.eval_every) || step == cfg.steps {
            Some(validation_loss(&run.model, source, cfg.batch_size, cfg.context)?)
        } else {
            None
        };
        let log = StepLog { step, loss: loss_value, lr, grad_norm: stats.grad_norm, tokens_per_sec, val_loss };
        run.logs.push(log);
        on_step(&log);
        let interrupted = stop.load(Ordering::SeqCst);
        if step.is_multiple_of(cfg.checkpoint_every) || step == cfg.steps || interrupted {
            save_lm_checkpoint(run, dir, metadata.clone())?;
        }
        if interrupted {
            return Ok(LmStop::Interrupted);
        }
    }
    Ok(LmStop::Finished)
}

/// The paths of a run directory's files.
pub fn lm_files(dir: &Path) -> Vec<PathBuf> {
    ["model.safetensors", "optimizer.safetensors", "loss.csv", "loss.png"].iter().map(|f| dir.join(f)).collect()
}
