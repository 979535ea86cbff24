//! The training loop for sequence-to-sequence tasks, and exact-match evaluation.

use super::{agree, all_reduce_gradients, fingerprint, sync_replicas, GradientExchange, Shard, SingleProcess};
use super::{label_smoothed_cross_entropy, Adam, AdamConfig, Cooldown, WarmupSchedule};
use crate::data::{Example, Seq2SeqBatch, TaskData, BOS, EOS};
use crate::error::{Error, Result};
use crate::generate::{beam_search, greedy_decode, BeamConfig};
use crate::memory::check_memory;
use crate::models::Seq2Seq;
use crate::shape::Tokens;
use crate::FloatDtype;
use dfdx::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// How long and how hard to train.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainConfig {
    /// Optimizer updates.
    pub steps: usize,
    /// Sequences per update.
    pub batch_size: usize,
    /// Label smoothing ε (0.1 in the paper).
    pub label_smoothing: f64,
    /// Learning-rate schedule (its `d_model` is taken from the model).
    pub warmup: usize,
    /// Scale of the schedule.
    pub lr_factor: f64,
    /// Fraction of the steps, at the end, over which the rate goes down linearly towards zero
    /// ([`Cooldown`]; 0 keeps the paper's schedule to the end).
    pub cooldown: f64,
    /// Adam's settings.
    pub adam: AdamConfig,
}

impl Default for TrainConfig {
    /// The recipe of `typeformer train` (and of `cargo run --release`): 1200 steps of 64
    /// sequences, the paper's warmup schedule (200 warmup steps, factor 0.5) with a linear
    /// cooldown over the last 30% of the steps, label smoothing 0.1 and the paper's Adam.
    fn default() -> Self {
        Self {
            steps: 1200,
            batch_size: 64,
            label_smoothing: 0.1,
            warmup: 200,
            lr_factor: 0.5,
            cooldown: 0.3,
            adam: AdamConfig::default(),
        }
    }
}

impl TrainConfig {
    /// Rejects configurations that cannot train.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.batch_size == 0 {
            return Err(Error::InvalidConfig(format!(
                "--steps and --batch-size must be positive, got {} and {}",
                self.steps, self.batch_size
            )));
        }
        if self.warmup == 0 || !(self.lr_factor > 0.0 && self.lr_factor.is_finite()) {
            return Err(Error::InvalidConfig(format!(
                "--warmup must be positive and --lr-factor a positive number, got {} and {}",
                self.warmup, self.lr_factor
            )));
        }
        if !(0.0..=1.0).contains(&self.cooldown) {
            return Err(Error::InvalidConfig(format!(
                "--cooldown is a fraction of the steps, in [0, 1]; got {}",
                self.cooldown
            )));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(Error::InvalidConfig(format!(
                "--label-smoothing must be in [0, 1), got {}",
                self.label_smoothing
            )));
        }
        Ok(())
    }
}

/// What one training step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLog {
    /// 1-based step.
    pub step: usize,
    /// Label-smoothed loss of the batch.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens per second in this step.
    pub tokens_per_sec: f64,
    /// Validation loss, on the steps where it was measured.
    pub val_loss: Option<f64>,
}

/// Trains `model` on `data` for `cfg.steps` updates, calling `on_step` after each.
pub fn train_seq2seq<M, const SV: usize, const TV: usize, E, Dev>(
    model: &mut M,
    data: &mut TaskData,
    cfg: &TrainConfig,
    on_step: impl FnMut(&StepLog),
) -> Result<Vec<StepLog>>
where
    M: Seq2Seq<SV, TV, E, Dev>,
    E: FloatDtype,
    Dev: Device<E>,
{
    train_seq2seq_until::<M, SV, TV, E, Dev>(model, data, cfg, &AtomicBool::new(false), on_step)
}

/// [`train_seq2seq`], checking `stop` after every step: once it is set, the training ends with
/// [`Error::Interrupted`].
pub fn train_seq2seq_until<M, const SV: usize, const TV: usize, E, Dev>(
    model: &mut M,
    data: &mut TaskData,
    cfg: &TrainConfig,
    stop: &AtomicBool,
    on_step: impl FnMut(&StepLog),
) -> Result<Vec<StepLog>>
where
    M: Seq2Seq<SV, TV, E, Dev>,
    E: FloatDtype,
    Dev: Device<E>,
{
    let mut opt = Adam::<E, Dev>::new(cfg.adam)?;
    train_seq2seq_on::<M, SV, TV, E, Dev>(&SingleProcess, model, &mut opt, data, cfg, stop, on_step)
}

/// [`train_seq2seq_until`] as one replica of a data-parallel run over `exchange` (see
/// [`GradientExchange`]), continuing `opt`: every rank draws the same global batch of
/// `cfg.batch_size` examples from `data` (built from the same seed on every rank) and computes
/// its share; rank 0's model and optimizer are copied to every rank first. `on_step` is called
/// on rank 0 only. A stop request on any rank stops every rank, an error on any rank every rank.
pub fn train_seq2seq_on<M, const SV: usize, const TV: usize, E, Dev>(
    exchange: &dyn GradientExchange,
    model: &mut M,
    opt: &mut Adam<E, Dev>,
    data: &mut TaskData,
    cfg: &TrainConfig,
    stop: &AtomicBool,
    mut on_step: impl FnMut(&StepLog),
) -> Result<Vec<StepLog>>
where
    M: Seq2Seq<SV, TV, E, Dev>,
    E: FloatDtype,
    Dev: Device<E>,
{
    let prepared = (|| {
        cfg.validate()?;
        check_memory("--steps", cfg.steps, std::mem::size_of::<StepLog>() as u64)?;
        let shard = Shard::of(cfg.batch_size, exchange)?;
        // The longest batch: sources and targets (with BOS/EOS) of the longest examples.
        let longest = 2 * (data.spec.max_len + 1);
        check_memory("--batch-size", shard.per_rank, longest as u64 * M::TRAIN_BYTES_PER_TOKEN)?;
        let schedule = WarmupSchedule { d_model: M::D_MODEL, warmup: cfg.warmup, factor: cfg.lr_factor };
        schedule.validate()?;
        Ok((shard, schedule))
    })();
    let (shard, schedule) = agree(exchange, prepared)?;
    let settings = format!("{cfg:?} {:?} {}", data.spec, crate::io::parameter_shapes(model)?.len());
    sync_replicas(exchange, model, opt, fingerprint(&settings))?;
    let cooldown = Cooldown::fraction(cfg.steps, cfg.cooldown);
    let mut grads = Some(model.alloc_grads());
    let mut logs = Vec::new();
    for step in 1..=cfg.steps {
        let start = Instant::now();
        // Every rank draws the whole global batch and keeps its rows, padded like the whole batch.
        let examples = data.train_examples(cfg.batch_size);
        let dropout_seed = data.dropout_seed();
        let slot = grads.take().unwrap_or_else(|| model.alloc_grads());
        let local = seq2seq_local_step::<M, SV, TV, E, Dev>(model, &examples, cfg, &shard, dropout_seed, slot);
        let reduced = all_reduce_gradients(
            exchange,
            &*model,
            local.as_ref().ok().map(|(g, loss, tokens, _)| (g, *loss, *tokens)),
            stop.load(Ordering::SeqCst),
        );
        let (mut local_grads, _, _, global_tokens) = local?;
        let reduced = reduced?;
        let lr = schedule.lr(step) * cooldown.scale(step);
        let stats = match &reduced.gradients {
            Some(gradients) => opt.update_from(model, gradients, lr)?,
            None => opt.update(model, &local_grads, lr)?,
        };
        model.zero_grads(&mut local_grads);
        grads = Some(local_grads);
        let log = StepLog {
            step,
            loss: reduced.loss,
            lr,
            grad_norm: stats.grad_norm,
            tokens_per_sec: global_tokens as f64 / start.elapsed().as_secs_f64(),
            val_loss: None,
        };
        if exchange.rank() == 0 {
            on_step(&log);
        }
        logs.push(log);
        if reduced.interrupted {
            return Err(Error::Interrupted { step });
        }
    }
    Ok(logs)
}

/// This rank's share of a step on the global batch `examples`: the gradients of its mean loss
/// (in `grads`), the loss, its label tokens (what the loss averages over), and the global
/// batch's source and label tokens (what the training speed counts).
fn seq2seq_local_step<M, const SV: usize, const TV: usize, E, Dev>(
    model: &M,
    examples: &[Example],
    cfg: &TrainConfig,
    shard: &Shard,
    dropout_seed: u64,
    grads: Gradients<E, Dev>,
) -> Result<(Gradients<E, Dev>, f64, usize, usize)>
where
    M: Seq2Seq<SV, TV, E, Dev>,
    E: FloatDtype,
    Dev: Device<E>,
{
    let batch = Seq2SeqBatch::<SV, TV>::new(examples)?;
    let global_tokens = batch.src.num_tokens() + batch.labels.num_tokens();
    let rows = shard.rows();
    let batch = match shard.ranks {
        1 => batch,
        _ => Seq2SeqBatch {
            src: batch.src.rows(rows.clone())?,
            tgt_in: batch.tgt_in.rows(rows.clone())?,
            labels: batch.labels.rows(rows.clone())?,
        },
    };
    crate::nn::seed_dropout_per_example(dropout_seed, rows.start, rows.len());
    let logits = model.forward_train(&batch.src, &batch.tgt_in, grads)?;
    let loss = label_smoothed_cross_entropy(logits, &batch.labels, cfg.label_smoothing)?;
    let loss_value = loss.as_vec()[0].to_f64().unwrap_or(f64::NAN);
    if !loss_value.is_finite() {
        return Err(Error::Training(format!("loss is {loss_value}; lower --lr-factor")));
    }
    Ok((super::backward(loss)?, loss_value, batch.labels.num_tokens(), global_tokens))
}

/// How held-out sequences are decoded for evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decoding {
    /// One most likely token at a time.
    Greedy,
    /// Beam search.
    Beam(BeamConfig),
}

/// Decodes every example's source (in batches of `batch_size`) and returns the fraction whose
/// output equals the target exactly, with the decoded outputs.
pub fn exact_match<M, const SV: usize, const TV: usize, E, Dev>(
    model: &M,
    examples: &[Example],
    batch_size: usize,
    decoding: Decoding,
) -> Result<(f64, Vec<Vec<usize>>)>
where
    M: Seq2Seq<SV, TV, E, Dev>,
    M::State: Clone,
    E: FloatDtype,
    Dev: Device<E>,
{
    if examples.is_empty() || batch_size == 0 {
        return Err(Error::InvalidConfig("evaluation needs at least one example and a positive batch size".into()));
    }
    let mut outputs = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(batch_size) {
        let sources: Vec<Vec<usize>> = chunk.iter().map(|e| e.source.clone()).collect();
        let src = Tokens::<SV>::from_sequences(&sources)?;
        let longest = chunk.iter().map(|e| e.target.len()).max().unwrap_or(0);
        // Room for the target plus EOS, within the positional table.
        let max_len = (longest + 1).min(M::MAX_LEN - 1);
        outputs.extend(match decoding {
            Decoding::Greedy => greedy_decode::<M, SV, TV, E, Dev>(model, &src, BOS, EOS, max_len)?,
            Decoding::Beam(cfg) => {
                beam_search::<M, SV, TV, E, Dev>(model, &src, BOS, EOS, &BeamConfig { max_len, ..cfg })?
            }
        });
    }
    let correct = examples.iter().zip(&outputs).filter(|(e, o)| &e.target == *o).count();
    Ok((correct as f64 / examples.len() as f64, outputs))
}
