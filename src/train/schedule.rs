//! The learning-rate schedule of section 5.3.

/// `lrate = factor * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)`: linear warmup for
/// `warmup` steps, then decay with the inverse square root of the step (steps count from 1).
/// The paper uses `factor = 1`, `warmup = 4000`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupSchedule {
    /// Model width.
    pub d_model: usize,
    /// Steps of linear warmup.
    pub warmup: usize,
    /// Overall scale.
    pub factor: f64,
}

impl WarmupSchedule {
    /// The paper's schedule for a model of width `d_model`.
    pub fn paper(d_model: usize) -> Self {
        Self { d_model, warmup: 4000, factor: 1.0 }
    }

    /// The learning rate at `step` (1-based; step 0 is treated as 1).
    ///
    /// ```
    /// use typeformer::train::WarmupSchedule;
    /// let s = WarmupSchedule::paper(512);
    /// // The peak is at the end of warmup: 512^-0.5 * 4000^-0.5.
    /// assert!((s.lr(4000) - 0.000698771).abs() < 1e-9);
    /// assert!(s.lr(2000) < s.lr(4000) && s.lr(8000) < s.lr(4000));
    /// ```
    pub fn lr(&self, step: usize) -> f64 {
        let step = step.max(1) as f64;
        let warmup = self.warmup.max(1) as f64;
        self.factor * (self.d_model as f64).powf(-0.5) * (step.powf(-0.5)).min(step * warmup.powf(-1.5))
    }
}
