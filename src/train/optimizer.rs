//! Adam (Kingma & Ba, 2015) with the paper's settings and gradient clipping by global norm.
//!
//! Written on dfdx's tensor visitors rather than using `dfdx::optim::Adam`, because clipping needs
//! to scale gradients before the update and because resuming needs the moments and step count,
//! which dfdx keeps private.

use crate::error::{Error, Result};
use crate::io::{is_head_weight, WeightLayout};
use crate::{scalar, FloatDtype};
use dfdx::nn::tensor_collection::{
    RecursiveWalker, TensorCollection, TensorOptions, TensorVisitor, ViewTensorMut, ViewTensorRef,
};
use dfdx::prelude::*;

/// Adam's hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// First-moment decay (0.9 in the paper).
    pub beta1: f64,
    /// Second-moment decay (0.98 in the paper).
    pub beta2: f64,
    /// Denominator fuzz (1e-9 in the paper).
    pub eps: f64,
    /// Rescale gradients whose global L2 norm exceeds this; `None` disables clipping.
    pub clip_norm: Option<f64>,
}

impl Default for AdamConfig {
    /// Section 5.3: β1 = 0.9, β2 = 0.98, ε = 1e-9; clipping at 1.0.
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.98, eps: 1e-9, clip_norm: Some(1.0) }
    }
}

/// First and second moments of one tensor, flattened.
type Moments<E, Dev> = (Tensor<(usize,), E, Dev>, Tensor<(usize,), E, Dev>);

/// Adam's state: the step count and one pair of moments per trainable tensor, in the order the
/// model visits them.
#[derive(Debug, Clone)]
pub struct Adam<E: Dtype, Dev: Storage<E>> {
    /// Hyperparameters.
    pub cfg: AdamConfig,
    /// Updates done so far.
    pub step: usize,
    moments: Vec<Moments<E, Dev>>,
}

/// What one update saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateStats {
    /// Global L2 norm of the gradients before clipping.
    pub grad_norm: f64,
}

impl<E: FloatDtype, Dev: Device<E>> Adam<E, Dev> {
    /// A fresh optimizer.
    pub fn new(cfg: AdamConfig) -> Result<Self> {
        let valid = (0.0..1.0).contains(&cfg.beta1) && (0.0..1.0).contains(&cfg.beta2) && cfg.eps > 0.0;
        if !valid || cfg.clip_norm.is_some_and(|c| c.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)) {
            return Err(Error::InvalidConfig(format!(
                "Adam needs betas in [0, 1), eps > 0 and a positive clip norm; got {cfg:?}"
            )));
        }
        Ok(Self { cfg, step: 0, moments: Vec::new() })
    }

    /// One update of `model` with learning rate `lr` from `grads`, which must come from
    /// `model.alloc_grads()` (so every trainable tensor has a gradient).
    pub fn update<M: TensorCollection<E, Dev>>(
        &mut self,
        model: &mut M,
        grads: &Gradients<E, Dev>,
        lr: f64,
    ) -> Result<UpdateStats> {
        self.update_from(model, grads, lr)
    }

    /// [`Adam::update`] reading the gradients from `grads`, tensor by tensor in visiting order:
    /// dfdx's [`Gradients`], or one flat tensor per trainable tensor (the all-reduced gradients
    /// of [`all_reduce_gradients`](super::all_reduce_gradients)).
    pub fn update_from<M: TensorCollection<E, Dev>, G: GradientSource<E, Dev>>(
        &mut self,
        model: &mut M,
        grads: &G,
        lr: f64,
    ) -> Result<UpdateStats> {
        if !lr.is_finite() || lr < 0.0 {
            return Err(Error::InvalidConfig(format!("learning rate must be finite and >= 0, got {lr}")));
        }
        let mut norm = GradNorm { grads, sum_sq: 0.0, index: 0 };
        M::iter_tensors(&mut RecursiveWalker { m: &*model, f: &mut norm }).map_err(device)?;
        let grad_norm = norm.sum_sq.sqrt();
        if !grad_norm.is_finite() {
            return Err(Error::Training(format!("gradient norm is {grad_norm}: the loss diverged")));
        }
        let scale = match self.cfg.clip_norm {
            Some(max) if grad_norm > max => max / grad_norm,
            _ => 1.0,
        };
        self.step += 1;
        let mut op = AdamStep { adam: self, grads, scale, lr, index: 0 };
        M::iter_tensors(&mut RecursiveWalker { m: model, f: &mut op }).map_err(device)?;
        Ok(UpdateStats { grad_norm })
    }
}

impl<E: FloatDtype, Dev: Device<E>> Adam<E, Dev> {
    /// The moments, one pair per trainable tensor in visiting order (empty before the first
    /// update): what replicas of a data-parallel run copy from rank 0.
    pub(crate) fn moments_mut(&mut self) -> &mut Vec<Moments<E, Dev>> {
        &mut self.moments
    }

    /// Saves the step count and moments to `path` (safetensors, written atomically), so that a
    /// resumed run continues exactly.
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        let mut tensors = Vec::with_capacity(2 * self.moments.len());
        for (i, (m, v)) in self.moments.iter().enumerate() {
            tensors.push((format!("m.{i}"), m.as_vec()));
            tensors.push((format!("v.{i}"), v.as_vec()));
        }
        let metadata = std::collections::HashMap::from([
            ("step".to_string(), self.step.to_string()),
            ("config".to_string(), format!("{:?}", self.cfg)),
            (crate::io::WEIGHT_LAYOUT_KEY.to_string(), crate::io::WEIGHT_LAYOUT.to_string()),
        ]);
        crate::io::save_vectors(path, &tensors, metadata)
    }

    /// Restores what [`Adam::save`] wrote onto `dev`, for a model whose trainable tensors have
    /// these names and `shapes` (in visiting order; [`parameter_shapes`](crate::io::parameter_shapes)).
    pub fn load(cfg: AdamConfig, path: &std::path::Path, dev: &Dev, shapes: &[(String, Vec<usize>)]) -> Result<Self> {
        let mut adam = Self::new(cfg)?;
        let (vectors, metadata) = crate::io::load_vectors::<E>(path)?;
        let bad = |reason: String| Error::BadFile { path: path.into(), reason };
        adam.step = metadata
            .get("step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no step count in the optimizer state".into()))?;
        let layout = WeightLayout::of(&metadata, path)?;
        if adam.step > 0 && layout == WeightLayout::OutIn {
            return Err(bad("the state was written before projection weights were stored (in, out): resuming \
                 from it would pair moments with the wrong weights (the model checkpoint itself still loads)"
                .into()));
        }
        if adam.step > 0 {
            for (i, (name, shape)) in shapes.iter().enumerate() {
                let n = shape.iter().product::<usize>();
                // Moments lie like their weights: a head's were stored [out, in] until heads were
                // (in, out) too.
                let stored_transposed = layout == WeightLayout::ProjectionsInOut && is_head_weight(name);
                let get = |name: String| -> Result<Tensor<(usize,), E, Dev>> {
                    let values = vectors
                        .get(&name)
                        .ok_or_else(|| bad(format!("missing {name}: the state belongs to another model")))?;
                    if values.len() != n {
                        return Err(bad(format!("{name} has {} values, the model's tensor {i} has {n}", values.len())));
                    }
                    // A second moment is a mean of squares: never negative.
                    let bad_value = |v: &E| !v.is_finite() || (name.starts_with('v') && *v < E::zero());
                    if let Some(at) = values.iter().position(bad_value) {
                        return Err(bad(format!(
                            "{name} holds {} at element {at}: the optimizer state is corrupt",
                            values[at].to_f64().unwrap_or(f64::NAN)
                        )));
                    }
                    let values = match shape[..] {
                        [rows, cols] if stored_transposed => transpose(values, cols, rows),
                        _ => values.clone(),
                    };
                    Ok(dev.tensor_from_vec(values, (n,)))
                };
                adam.moments.push((get(format!("m.{i}"))?, get(format!("v.{i}"))?));
            }
            if vectors.len() != 2 * shapes.len() {
                return Err(bad(format!("{} moment tensors for a model of {} tensors", vectors.len(), shapes.len())));
            }
        }
        Ok(adam)
    }
}

/// `values`, a row-major `(rows, cols)` matrix, as its `(cols, rows)` transpose.
fn transpose<E: Copy>(values: &[E], rows: usize, cols: usize) -> Vec<E> {
    (0..cols).flat_map(|c| (0..rows).map(move |r| values[r * cols + c])).collect()
}

/// A device failure reported by a tensor visitor.
pub(super) fn device<X: std::fmt::Debug>(e: X) -> Error {
    Error::Device(format!("{e:?}"))
}

/// Where an update reads the gradient of each trainable tensor: dfdx's [`Gradients`], or values
/// combined elsewhere (the all-reduced gradients of data-parallel training), found by the
/// tensor's place in the model's visiting order.
pub trait GradientSource<E: Dtype, Dev: Storage<E>> {
    /// The gradient of `t`, the `index`-th trainable tensor.
    fn gradient<S: Shape>(&self, index: usize, t: &Tensor<S, E, Dev>) -> Tensor<S, E, Dev>;
}

impl<E: Dtype, Dev: Device<E>> GradientSource<E, Dev> for Gradients<E, Dev> {
    fn gradient<S: Shape>(&self, _: usize, t: &Tensor<S, E, Dev>) -> Tensor<S, E, Dev> {
        self.get(t)
    }
}

/// Gradients as flat tensors, one per trainable tensor in visiting order.
impl<E: Dtype, Dev: Device<E>> GradientSource<E, Dev> for Vec<Tensor<(usize,), E, Dev>> {
    fn gradient<S: Shape>(&self, index: usize, t: &Tensor<S, E, Dev>) -> Tensor<S, E, Dev> {
        self[index].clone().reshape_like(t.shape())
    }
}

struct GradNorm<'a, G> {
    grads: &'a G,
    sum_sq: f64,
    index: usize,
}

impl<E: FloatDtype, Dev: Device<E>, G: GradientSource<E, Dev>> TensorVisitor<E, Dev> for GradNorm<'_, G> {
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
            let g = self.grads.gradient(self.index, t);
            self.index += 1;
            self.sum_sq += g.square().sum::<Rank0, _>().as_vec()[0].to_f64().unwrap_or(f64::NAN);
        }
        Ok(None)
    }
}

struct AdamStep<'a, E: Dtype, Dev: Storage<E>, G> {
    adam: &'a mut Adam<E, Dev>,
    grads: &'a G,
    scale: f64,
    lr: f64,
    index: usize,
}

impl<E: FloatDtype, Dev: Device<E>, G: GradientSource<E, Dev>> TensorVisitor<E, Dev> for AdamStep<'_, E, Dev, G> {
    type Viewer = ViewTensorMut;
    type Err = Dev::Err;
    type E2 = E;
    type D2 = Dev;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, E, Dev>,
        t: &mut Tensor<S, E, Dev>,
    ) -> Result<Option<Tensor<S, E, Dev>>, Self::Err> {
        if !opts.do_gradient_update {
            return Ok(None);
        }
        let cfg = self.adam.cfg;
        let n = t.shape().num_elements();
        let g = self.grads.gradient(self.index, t).reshape_like(&(n,)) * scalar::<E>(self.scale); // (N,)
        if self.index == self.adam.moments.len() {
            let dev = t.device();
            self.adam.moments.push((dev.zeros_like(&(n,)), dev.zeros_like(&(n,))));
        }
        let (m, v) = &mut self.adam.moments[self.index];
        self.index += 1;
        m.axpy(cfg.beta1, &g, 1.0 - cfg.beta1);
        v.axpy(cfg.beta2, &g.square(), 1.0 - cfg.beta2);
        let step = self.adam.step as i32;
        let m_hat = m.clone() / scalar::<E>(1.0 - cfg.beta1.powi(step));
        let v_hat = v.clone() / scalar::<E>(1.0 - cfg.beta2.powi(step));
        let update = m_hat / (v_hat.sqrt() + scalar::<E>(cfg.eps)); // (N,)
        t.axpy(1.0, &update.reshape_like(t.shape()), -self.lr);
        Ok(None)
    }
}
