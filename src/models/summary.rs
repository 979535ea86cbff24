//! A model's parameters by name, shape and count, read from its type alone: nothing is
//! allocated, so even the paper's big model is summarised instantly.

use crate::FloatDtype;
use dfdx::nn::tensor_collection::{RecursiveWalker, TensorCollection, TensorOptions, TensorVisitor, ViewTensorName};
use dfdx::prelude::*;
use std::fmt;

/// One parameter tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    /// Dotted path, as in checkpoints.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Whether an optimizer updates it (the sinusoidal table is a fixed buffer).
    pub trainable: bool,
}

/// Every parameter of a model type, in visiting order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The tensors.
    pub params: Vec<ParamInfo>,
    /// Bytes per element of the dtype.
    pub element_bytes: usize,
}

struct Lister(Vec<ParamInfo>);

impl<E: Dtype, Dev: Device<E>> TensorVisitor<E, Dev> for Lister {
    type Viewer = ViewTensorName;
    type Err = Dev::Err;
    type E2 = E;
    type D2 = Dev;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, E, Dev>,
        name: String,
    ) -> Result<Option<Tensor<S, E, Dev>>, Self::Err> {
        self.0.push(ParamInfo {
            name,
            shape: opts.shape.concrete().into_iter().collect(),
            trainable: opts.do_gradient_update,
        });
        Ok(None)
    }
}

impl Summary {
    /// The parameters of the model type `M`, without building it.
    ///
    /// ```
    /// use typeformer::prelude::*;
    /// let s = Summary::of::<PaperBig<f32, Cpu>, f32, Cpu>();
    /// assert_eq!(s.trainable_params(), PaperBig::<f32, Cpu>::NUM_PARAMS);
    /// ```
    pub fn of<M: TensorCollection<E, Dev>, E: FloatDtype, Dev: Device<E>>() -> Self {
        let mut lister = Lister(Vec::new());
        // Visiting with names only creates no tensor; the lister never fails.
        let _ = M::iter_tensors(&mut RecursiveWalker { m: String::new(), f: &mut lister });
        Summary { params: lister.0, element_bytes: std::mem::size_of::<E>() }
    }

    /// Elements in trainable tensors.
    pub fn trainable_params(&self) -> usize {
        self.params.iter().filter(|p| p.trainable).map(|p| p.shape.iter().product::<usize>()).sum()
    }

    /// Elements in fixed buffers.
    pub fn buffer_params(&self) -> usize {
        self.params.iter().filter(|p| !p.trainable).map(|p| p.shape.iter().product::<usize>()).sum()
    }
}

fn human_bytes(bytes: usize) -> String {
    let mb = bytes as f64 / (1024.0 * 1024.0);
    if mb >= 1024.0 {
        format!("{:.2} GiB", mb / 1024.0)
    } else {
        format!("{mb:.2} MiB")
    }
}

impl fmt::Display for Summary {
    /// One row per tensor (name, shape, count), then the totals and the memory they take.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.params.iter().map(|p| p.name.len()).max().unwrap_or(4).max(9);
        writeln!(f, "{:<width$}  {:<18}  {:>12}", "parameter", "shape", "count")?;
        writeln!(f, "{}", "-".repeat(width + 34))?;
        for p in &self.params {
            let count: usize = p.shape.iter().product();
            let note = if p.trainable { "" } else { "  (fixed buffer)" };
            writeln!(f, "{:<width$}  {:<18}  {:>12}{note}", p.name, format!("{:?}", p.shape), count)?;
        }
        writeln!(f, "{}", "-".repeat(width + 34))?;
        let trainable = self.trainable_params();
        writeln!(f, "trainable parameters: {trainable} ({})", human_bytes(trainable * self.element_bytes))?;
        if self.buffer_params() > 0 {
            writeln!(
                f,
                "fixed buffers: {} ({})",
                self.buffer_params(),
                human_bytes(self.buffer_params() * self.element_bytes)
            )?;
        }
        Ok(())
    }
}
