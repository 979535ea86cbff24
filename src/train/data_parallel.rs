//! Data-parallel training: replicas of one model on several processes (or threads), each
//! computing the gradients of its share of every global batch, summed across replicas before
//! clipping and Adam so that every replica takes the same step.
//!
//! The exchange sits behind one small trait, [`GradientExchange`] (an all-reduce of `f64`
//! buffers, and who is who), so the training loops do not know whether they run alone
//! ([`SingleProcess`]), as threads of one process ([`ThreadGroup`], what the tests use) or as
//! processes under `mpirun` (`MpiExchange`, with the cargo feature `mpi`); a NCCL backend for
//! GPUs would be one more implementation.
//!
//! What makes N replicas train exactly like one process with the whole batch:
//! - every rank draws the same global batch from the same `(seed, step)` stream and keeps rows
//!   `rank * b..(rank + 1) * b`, with the global batch's padding ([`Shard`]);
//! - each rank's gradient is weighted by its share of the real (non-padding) tokens, so the sum
//!   is the gradient of the global mean loss, padded batches included;
//! - dropout masks are drawn per global example ([`seed_dropout_per_example`](crate::nn::seed_dropout_per_example));
//! - rank 0's model and optimizer are copied to every rank before the first step, so a run
//!   resumed by rank 0 alone (the only rank that reads and writes the run directory) continues
//!   on every rank, whatever the number of ranks.
//!
//! A rank that fails (bad data, a full disk on rank 0) does not leave the others waiting in an
//! all-reduce: failures travel in the next exchange ([`agree`]) and every rank stops with an
//! error; a rank that dies is the MPI launcher's to report (`mpirun` ends the job).

use super::optimizer::device;
use crate::error::{Error, Result};
use crate::FloatDtype;
use dfdx::nn::tensor_collection::{
    RecursiveWalker, ScalarOptions, TensorCollection, TensorOptions, TensorVisitor, ViewTensorMut, ViewTensorRef,
};
use dfdx::prelude::*;
use std::cell::Cell;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// How replicas of a data-parallel run exchange their gradients: an all-reduce over every rank.
///
/// Every rank must make the same calls in the same order with buffers of the same length (the
/// training loops here do; a user's own loop can use [`agree`] and [`all_reduce_gradients`]).
pub trait GradientExchange {
    /// This replica's rank, `0..ranks()`; rank 0 writes the checkpoints and prints.
    fn rank(&self) -> usize;
    /// Number of replicas.
    fn ranks(&self) -> usize;
    /// Replaces `values` on every rank by the element-wise sum of every rank's `values`.
    fn all_reduce_sum(&self, values: &mut [f64]) -> Result<()>;
}

/// One replica alone: the exchange of a run that is not distributed.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl GradientExchange for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn ranks(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
}

/// Replicas as threads of one process: `ThreadGroup::new(n)` gives one [`ThreadRank`] per
/// thread. Sums are taken in rank order, so results do not depend on which thread arrives
/// first. A rank that is dropped (its thread returned early or panicked) makes the others'
/// exchanges fail with [`Error::RankFailed`] instead of waiting for it.
#[derive(Debug)]
pub struct ThreadGroup;

impl ThreadGroup {
    /// `ranks` members, one to move into each thread.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(ranks: usize) -> Result<Vec<ThreadRank>> {
        if ranks == 0 {
            return Err(Error::InvalidConfig("a thread group needs at least one rank".into()));
        }
        let shared = Arc::new(Shared {
            ranks,
            round: Mutex::new(Round { generation: 0, parts: vec![None; ranks], sum: Arc::new(Vec::new()), left: None }),
            done: Condvar::new(),
        });
        Ok((0..ranks).map(|rank| ThreadRank { rank, shared: shared.clone() }).collect())
    }
}

/// One member of a [`ThreadGroup`].
#[derive(Debug)]
pub struct ThreadRank {
    rank: usize,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    ranks: usize,
    round: Mutex<Round>,
    done: Condvar,
}

#[derive(Debug)]
struct Round {
    /// Completed all-reduces.
    generation: u64,
    /// Each rank's contribution to the round under way.
    parts: Vec<Option<Vec<f64>>>,
    /// The sum of the last completed round.
    sum: Arc<Vec<f64>>,
    /// The first rank that left the group.
    left: Option<usize>,
}

impl ThreadRank {
    fn round(&self) -> Result<std::sync::MutexGuard<'_, Round>> {
        self.shared
            .round
            .lock()
            .map_err(|_| Error::Training("a thread of the data-parallel group panicked during an exchange".into()))
    }
}

impl GradientExchange for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }
    fn ranks(&self) -> usize {
        self.shared.ranks
    }
    fn all_reduce_sum(&self, values: &mut [f64]) -> Result<()> {
        let ranks = self.shared.ranks;
        let mut round = self.round()?;
        if let Some(rank) = round.left {
            return Err(Error::RankFailed { rank, ranks });
        }
        if let Some(other) = round.parts.iter().flatten().next() {
            if other.len() != values.len() {
                return Err(Error::DimMismatch {
                    what: "values in an all-reduce (the ranks run different models or loops)",
                    expected: other.len(),
                    found: values.len(),
                });
            }
        }
        round.parts[self.rank] = Some(values.to_vec());
        if round.parts.iter().all(Option::is_some) {
            let mut sum = vec![0.0; values.len()];
            for part in round.parts.iter_mut() {
                for (s, v) in sum.iter_mut().zip(part.take().into_iter().flatten()) {
                    *s += v;
                }
            }
            round.sum = Arc::new(sum);
            round.generation += 1;
            self.shared.done.notify_all();
        } else {
            let generation = round.generation;
            while round.generation == generation && round.left.is_none() {
                round = self.shared.done.wait(round).map_err(|_| {
                    Error::Training("a thread of the data-parallel group panicked during an exchange".into())
                })?;
            }
            if round.generation == generation {
                return Err(Error::RankFailed { rank: round.left.unwrap_or(0), ranks });
            }
        }
        // No later round can complete before this rank joins it: the sum is still this round's.
        values.copy_from_slice(&round.sum);
        Ok(())
    }
}

impl Drop for ThreadRank {
    fn drop(&mut self) {
        let mut round = match self.shared.round.lock() {
            Ok(round) => round,
            Err(poisoned) => poisoned.into_inner(),
        };
        round.left.get_or_insert(self.rank);
        self.shared.done.notify_all();
    }
}

/// The processes of an MPI job (`mpirun -n N ...`) as replicas: rank and size of
/// `MPI_COMM_WORLD`, sums with `MPI_Allreduce`. Needs the cargo feature `mpi` and an MPI
/// library (OpenMPI or MPICH). MPI is initialised once per process and finalised when this value
/// is dropped; MPI's default error handler ends the job on a communication failure.
#[cfg(feature = "mpi")]
pub struct MpiExchange {
    // Declared before the universe so that it is dropped before MPI is finalised.
    world: mpi::topology::SimpleCommunicator,
    _universe: mpi::environment::Universe,
}

#[cfg(feature = "mpi")]
impl MpiExchange {
    /// Initialises MPI; an error if it was already initialised in this process.
    pub fn init() -> Result<Self> {
        let universe = mpi::initialize()
            .ok_or_else(|| Error::Training("MPI cannot be initialised twice in one process".into()))?;
        Ok(Self { world: universe.world(), _universe: universe })
    }

    /// Whether this process was started by an MPI launcher (`mpirun`, `mpiexec`, `srun`), read
    /// from the environment those launchers set.
    pub fn launched() -> bool {
        launched_by_mpi()
    }
}

#[cfg(feature = "mpi")]
impl std::fmt::Debug for MpiExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiExchange").field("rank", &self.rank()).field("ranks", &self.ranks()).finish()
    }
}

#[cfg(feature = "mpi")]
impl GradientExchange for MpiExchange {
    fn rank(&self) -> usize {
        use mpi::traits::Communicator;
        self.world.rank() as usize
    }
    fn ranks(&self) -> usize {
        use mpi::traits::Communicator;
        self.world.size() as usize
    }
    fn all_reduce_sum(&self, values: &mut [f64]) -> Result<()> {
        use mpi::traits::CommunicatorCollectives;
        let send = values.to_vec();
        self.world.all_reduce_into(&send[..], values, mpi::collective::SystemOperation::sum());
        Ok(())
    }
}

/// Whether the environment is that of a process started by an MPI launcher: OpenMPI's
/// `mpirun`, MPICH's `mpiexec` (PMI) or PMIx-based launchers.
pub fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"].iter().any(|v| std::env::var_os(v).is_some())
}

/// What a [`Metered`] exchange did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ExchangeStats {
    /// All-reduces.
    pub calls: u64,
    /// Bytes this rank contributed (8 per value; the network carries about twice that in a ring
    /// all-reduce).
    pub bytes: u64,
    /// Seconds spent in the all-reduces, waiting for slower ranks included.
    pub seconds: f64,
}

/// An exchange that counts its calls, bytes and time.
pub struct Metered<'a> {
    inner: &'a dyn GradientExchange,
    stats: Cell<ExchangeStats>,
}

impl<'a> Metered<'a> {
    /// Counts what `inner` does.
    pub fn new(inner: &'a dyn GradientExchange) -> Self {
        Self { inner, stats: Cell::new(ExchangeStats::default()) }
    }
    /// What it did so far.
    pub fn stats(&self) -> ExchangeStats {
        self.stats.get()
    }
}

impl GradientExchange for Metered<'_> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn ranks(&self) -> usize {
        self.inner.ranks()
    }
    fn all_reduce_sum(&self, values: &mut [f64]) -> Result<()> {
        let start = Instant::now();
        let result = self.inner.all_reduce_sum(values);
        let mut stats = self.stats.get();
        stats.calls += 1;
        stats.bytes += 8 * values.len() as u64;
        stats.seconds += start.elapsed().as_secs_f64();
        self.stats.set(stats);
        result
    }
}

/// One rank's share of a global batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This rank.
    pub rank: usize,
    /// Ranks in the run.
    pub ranks: usize,
    /// Sequences each rank computes.
    pub per_rank: usize,
}

impl Shard {
    /// Splits a global batch of `global` sequences evenly over the ranks of `exchange`; an
    /// error when it does not split.
    pub fn of(global: usize, exchange: &dyn GradientExchange) -> Result<Self> {
        let ranks = exchange.ranks();
        if global == 0 || !global.is_multiple_of(ranks) {
            return Err(Error::InvalidConfig(format!(
                "--batch-size {global} (the global batch) does not split evenly over {ranks} ranks: give a positive \
                 multiple of {ranks}"
            )));
        }
        Ok(Self { rank: exchange.rank(), ranks, per_rank: global / ranks })
    }

    /// The rows of the global batch this rank computes.
    pub fn rows(&self) -> Range<usize> {
        self.rank * self.per_rank..(self.rank + 1) * self.per_rank
    }
}

/// Every rank's `local` outcome, agreed: `local` itself when every rank succeeded, this rank's
/// own error when it failed, and [`Error::RankFailed`] (naming the first rank that failed) when
/// another did. Every rank must call it at the same point; with one rank it returns `local`.
pub fn agree<T>(exchange: &dyn GradientExchange, local: Result<T>) -> Result<T> {
    if exchange.ranks() == 1 {
        return local;
    }
    let mut failed = vec![0.0; exchange.ranks()];
    failed[exchange.rank()] = f64::from(u8::from(local.is_err()));
    let exchanged = exchange.all_reduce_sum(&mut failed);
    let local = local?;
    exchanged?;
    match failed.iter().position(|&f| f > 0.0) {
        Some(rank) => Err(Error::RankFailed { rank, ranks: exchange.ranks() }),
        None => Ok(local),
    }
}

/// Values per all-reduce: large messages (32 MiB of `f64`), and a bounded extra copy however
/// large the model.
const BUCKET: usize = 1 << 22;

/// Sums `parts` over every rank in buckets of [`BUCKET`] values, multiplying each value by
/// `scale_in` before the sum and by `scale_out` after it.
fn all_reduce_parts<E: FloatDtype>(
    exchange: &dyn GradientExchange,
    parts: &mut [Vec<E>],
    scale_in: f64,
    scale_out: f64,
) -> Result<()> {
    let total: usize = parts.iter().map(Vec::len).sum();
    let mut bucket = Vec::with_capacity(BUCKET.min(total));
    // (part, offset) of the first value of the next bucket.
    let (mut part, mut offset) = (0, 0);
    while part < parts.len() {
        bucket.clear();
        let mut segments = Vec::new();
        while bucket.len() < BUCKET && part < parts.len() {
            let take = (BUCKET - bucket.len()).min(parts[part].len() - offset);
            let values = &parts[part][offset..offset + take];
            bucket.extend(values.iter().map(|v| v.to_f64().unwrap_or(f64::NAN) * scale_in));
            segments.push((part, offset..offset + take));
            offset += take;
            if offset == parts[part].len() {
                (part, offset) = (part + 1, 0);
            }
        }
        exchange.all_reduce_sum(&mut bucket)?;
        let mut sums = bucket.iter();
        for (part, range) in segments {
            for (v, s) in parts[part][range].iter_mut().zip(&mut sums) {
                *v = E::from_f64(s * scale_out).unwrap_or(E::nan());
            }
        }
    }
    Ok(())
}

/// What the ranks agreed on in a step's exchange.
#[derive(Debug)]
pub struct ReducedStep<E: Dtype, Dev: Storage<E>> {
    /// Mean loss over the global batch's real tokens.
    pub loss: f64,
    /// Real tokens in the global batch.
    pub tokens: usize,
    /// Whether any rank was asked to stop (Ctrl-C) during the step.
    pub interrupted: bool,
    /// The gradient of the global mean loss, one flat tensor per trainable tensor of the model
    /// in visiting order; `None` with one rank, whose own gradients are that already.
    pub gradients: Option<Vec<Tensor<(usize,), E, Dev>>>,
}

/// One rank's part of a training step: its gradients (from `model.alloc_grads()`), the mean
/// loss over its real tokens and their number.
pub type LocalStep<'a, E, Dev> = (&'a Gradients<E, Dev>, f64, usize);

/// The step's exchange: every rank's token-weighted gradients, loss and token count summed, with
/// the stop requests and failures. `local` is this rank's step, or `None` when an error
/// prevented it: this rank then contributes nothing (and should return its own error), and every
/// rank gets [`Error::RankFailed`]. Apply the result with [`Adam::update_from`](super::Adam::update_from)
/// (or, with one rank, [`Adam::update`](super::Adam::update) with the rank's own gradients).
pub fn all_reduce_gradients<M, E, Dev>(
    exchange: &dyn GradientExchange,
    model: &M,
    local: Option<LocalStep<'_, E, Dev>>,
    interrupted: bool,
) -> Result<ReducedStep<E, Dev>>
where
    M: TensorCollection<E, Dev>,
    E: FloatDtype,
    Dev: Device<E>,
{
    let ranks = exchange.ranks();
    if ranks == 1 {
        let (_, loss, tokens) = local.ok_or(Error::RankFailed { rank: 0, ranks })?;
        return Ok(ReducedStep { loss, tokens, interrupted, gradients: None });
    }
    // Header: tokens, loss * tokens, stop requests, then one failure flag per rank.
    let mut header = vec![0.0; 3 + ranks];
    let mut parts = Vec::new();
    match &local {
        Some((_, loss, tokens)) => (header[0], header[1]) = (*tokens as f64, loss * *tokens as f64),
        None => header[3 + exchange.rank()] = 1.0,
    }
    // A rank that failed contributes zeros of the same sizes.
    let mut collect = CollectGradients { grads: local.map(|(grads, _, _)| grads), parts: &mut parts, dev: None };
    M::iter_tensors(&mut RecursiveWalker { m: model, f: &mut collect }).map_err(device)?;
    let dev = collect.dev;
    let weight = header[0];
    header[2] = f64::from(u8::from(interrupted));
    let exchanged = exchange.all_reduce_sum(&mut header);
    let failed = header[3..].iter().position(|&f| f > 0.0);
    let tokens = header[0];
    // The sums carry on even after a failure, so that every rank makes the same calls.
    let summed = exchanged
        .and_then(|()| all_reduce_parts(exchange, &mut parts, weight, if tokens > 0.0 { 1.0 / tokens } else { 0.0 }));
    summed?;
    if let Some(rank) = failed {
        return Err(Error::RankFailed { rank, ranks });
    }
    let dev = dev.ok_or_else(|| Error::InvalidConfig("the model has no trainable tensor".into()))?;
    let gradients = parts
        .into_iter()
        .map(|values| {
            let n = values.len();
            dev.tensor_from_vec(values, (n,))
        })
        .collect();
    Ok(ReducedStep {
        loss: header[1] / tokens,
        tokens: tokens as usize,
        interrupted: header[2] > 0.0,
        gradients: Some(gradients),
    })
}

/// Copies rank 0's model and optimizer state (Adam's step and moments) to every rank, after
/// checking that every rank runs the same configuration (`fingerprint`: the same data, model and
/// settings give the same value, such as [`fingerprint`] of their description). With one rank
/// it does nothing. Every rank calls it before its first step.
pub fn sync_replicas<M, E, Dev>(
    exchange: &dyn GradientExchange,
    model: &mut M,
    opt: &mut super::Adam<E, Dev>,
    fingerprint: u64,
) -> Result<()>
where
    M: TensorCollection<E, Dev>,
    E: FloatDtype,
    Dev: Device<E>,
{
    if exchange.ranks() == 1 {
        return Ok(());
    }
    let root = exchange.rank() == 0;
    // Rank 0's step, whether it has moments, and its fingerprint in 16-bit pieces (exact in f64).
    let mut header = vec![0.0; 6];
    if root {
        header[0] = opt.step as f64;
        header[1] = f64::from(u8::from(!opt.moments_mut().is_empty()));
        for (i, h) in header[2..].iter_mut().enumerate() {
            *h = ((fingerprint >> (16 * i)) & 0xffff) as f64;
        }
    }
    exchange.all_reduce_sum(&mut header)?;
    let root_fingerprint = (0..4).fold(0u64, |acc, i| acc | ((header[2 + i] as u64) << (16 * i)));
    let same = if root_fingerprint == fingerprint {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "rank {} of {} does not run what rank 0 runs (another model, data file or setting): every rank must \
             run the same command on the same data",
            exchange.rank(),
            exchange.ranks()
        )))
    };
    agree(exchange, same)?;
    opt.step = header[0] as usize;
    let mut parts = Vec::new();
    let mut read = ReadTensors { parts: &mut parts, trainable: Vec::new(), scalars: Vec::new(), dev: None };
    M::iter_tensors(&mut RecursiveWalker { m: &*model, f: &mut read }).map_err(device)?;
    let (trainable, mut scalars, dev) = (read.trainable, read.scalars, read.dev);
    // Hyperparameters held in the model (dropout, epsilons): rank 0's, exactly.
    if !root {
        scalars.fill(0.0);
    }
    exchange.all_reduce_sum(&mut scalars)?;
    let model_parts = parts.len();
    let moments = opt.moments_mut();
    if header[1] > 0.0 {
        if let (true, Some(dev)) = (moments.is_empty(), &dev) {
            for &n in &trainable {
                moments.push((dev.zeros_like(&(n,)), dev.zeros_like(&(n,))));
            }
        }
        if moments.len() != trainable.len() {
            return Err(Error::DimMismatch {
                what: "moment pairs of the optimizer (one per trainable tensor)",
                expected: trainable.len(),
                found: moments.len(),
            });
        }
        for (m, v) in moments.iter() {
            parts.push(m.as_vec());
            parts.push(v.as_vec());
        }
    } else {
        moments.clear();
    }
    all_reduce_parts(exchange, &mut parts, if root { 1.0 } else { 0.0 }, 1.0)?;
    let mut moment_parts = parts.split_off(model_parts).into_iter();
    for (m, v) in opt.moments_mut().iter_mut() {
        if let (Some(new_m), Some(new_v)) = (moment_parts.next(), moment_parts.next()) {
            m.copy_from(&new_m);
            v.copy_from(&new_v);
        }
    }
    let mut write = WriteTensors { parts: parts.into_iter(), scalars: scalars.into_iter() };
    M::iter_tensors(&mut RecursiveWalker { m: model, f: &mut write }).map_err(device)?;
    Ok(())
}

/// FNV-1a of `text`: a run's description reduced to what [`sync_replicas`] compares across ranks.
pub fn fingerprint(text: &str) -> u64 {
    crate::data::fnv1a(text.bytes())
}

/// The gradient of every trainable tensor (zeros without gradients), in visiting order.
struct CollectGradients<'a, E: Dtype, Dev: Storage<E>> {
    grads: Option<&'a Gradients<E, Dev>>,
    parts: &'a mut Vec<Vec<E>>,
    /// The model's device, for the reduced gradients.
    dev: Option<Dev>,
}

impl<E: FloatDtype, Dev: Device<E>> TensorVisitor<E, Dev> for CollectGradients<'_, E, Dev> {
    type Viewer = ViewTensorRef;
    type Err = Dev::Err;
    type E2 = E;
    type D2 = Dev;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, E, Dev>,
        t: &Tensor<S, E, Dev>,
    ) -> Result<Option<Tensor<S, E, Dev>>, Self::Err> {
        if opts.do_gradient_update {
            self.dev.get_or_insert_with(|| t.device().clone());
            self.parts.push(match self.grads {
                Some(grads) => grads.get(t).as_vec(),
                None => vec![E::default(); t.shape().num_elements()],
            });
        }
        Ok(None)
    }
}

/// Every tensor's values, the sizes of the trainable ones and every scalar hyperparameter, in
/// visiting order.
struct ReadTensors<'a, E, Dev> {
    parts: &'a mut Vec<Vec<E>>,
    trainable: Vec<usize>,
    scalars: Vec<f64>,
    dev: Option<Dev>,
}

impl<E: FloatDtype, Dev: Device<E>> TensorVisitor<E, Dev> for ReadTensors<'_, E, Dev> {
    type Viewer = ViewTensorRef;
    type Err = Dev::Err;
    type E2 = E;
    type D2 = Dev;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, E, Dev>,
        t: &Tensor<S, E, Dev>,
    ) -> Result<Option<Tensor<S, E, Dev>>, Self::Err> {
        if opts.do_gradient_update {
            self.trainable.push(t.shape().num_elements());
        }
        self.dev.get_or_insert_with(|| t.device().clone());
        self.parts.push(t.as_vec());
        Ok(None)
    }

    fn visit_scalar<N: num_traits::NumCast>(&mut self, _: ScalarOptions<N>, value: &N) -> Result<Option<N>, Self::Err> {
        self.scalars.push(value.to_f64().unwrap_or(f64::NAN));
        Ok(None)
    }
}

/// Writes what [`ReadTensors`] read (after the exchange) back, in the same order.
struct WriteTensors<E> {
    parts: std::vec::IntoIter<Vec<E>>,
    scalars: std::vec::IntoIter<f64>,
}

impl<E: FloatDtype, Dev: Device<E>> TensorVisitor<E, Dev> for WriteTensors<E> {
    type Viewer = ViewTensorMut;
    type Err = Dev::Err;
    type E2 = E;
    type D2 = Dev;

    fn visit<S: Shape>(
        &mut self,
        _: TensorOptions<S, E, Dev>,
        t: &mut Tensor<S, E, Dev>,
    ) -> Result<Option<Tensor<S, E, Dev>>, Self::Err> {
        if let Some(values) = self.parts.next() {
            t.copy_from(&values);
        }
        Ok(None)
    }

    fn visit_scalar<N: num_traits::NumCast>(
        &mut self,
        _: ScalarOptions<N>,
        value: &mut N,
    ) -> Result<Option<N>, Self::Err> {
        if let Some(new) = self.scalars.next().and_then(N::from) {
            *value = new;
        }
        Ok(None)
    }
}
