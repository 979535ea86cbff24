//! A model's layers (output shape, parameter count) and parameters (name, shape, count), read
//! from its type alone: nothing is allocated, so even the paper's big model is summarised
//! instantly. As a table, or as a Graphviz graph.

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

/// One layer of a model, in the order of the forward pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Dotted path: its parameters are the ones under `path.`.
    pub path: String,
    /// What it is (`EncoderLayer`, `LayerNorm`, ...).
    pub kind: String,
    /// Its output shape, with `B` and `S` for the run-time batch and sequence lengths.
    pub output: String,
    /// The layers it reads (the previous one when empty).
    pub inputs: Vec<String>,
}

impl Layer {
    /// A layer reading the previous one.
    pub fn new(path: impl Into<String>, kind: impl Into<String>, output: impl Into<String>) -> Self {
        Self { path: path.into(), kind: kind.into(), output: output.into(), inputs: Vec::new() }
    }
    /// Reads `inputs` instead of the previous layer.
    pub fn reading(mut self, inputs: &[&str]) -> Self {
        self.inputs = inputs.iter().map(|s| s.to_string()).collect();
        self
    }
}

/// Every parameter of a model type, in visiting order, and its layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The tensors.
    pub params: Vec<ParamInfo>,
    /// Bytes per element of the dtype.
    pub element_bytes: usize,
    /// The layers: as the model describes them, or else one per group of parameters.
    pub layers: Vec<Layer>,
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
        let layers = group_layers(&lister.0);
        Summary { params: lister.0, element_bytes: std::mem::size_of::<E>(), layers }
    }

    /// The same summary with the model's own description of its layers (kinds, output shapes).
    pub fn with_layers(mut self, layers: Vec<Layer>) -> Self {
        self.layers = layers;
        self
    }

    /// Trainable elements under `layer.path`.
    pub fn layer_params(&self, layer: &Layer) -> usize {
        let prefix = format!("{}.", layer.path);
        self.trainable_where(|name| name == layer.path || name.starts_with(&prefix))
    }

    /// Trainable elements whose dotted names start with one of `prefixes` (`"encoder."`).
    pub fn trainable_under(&self, prefixes: &[&str]) -> usize {
        self.trainable_where(|name| prefixes.iter().any(|p| name.starts_with(p)))
    }

    fn trainable_where(&self, keep: impl Fn(&str) -> bool) -> usize {
        self.params.iter().filter(|p| p.trainable && keep(&p.name)).map(|p| p.shape.iter().product::<usize>()).sum()
    }

    /// One row per tensor: name, shape, count (the `--params` table).
    pub fn params_table(&self) -> String {
        let width = self.params.iter().map(|p| p.name.len()).max().unwrap_or(4).max(9);
        let mut out = format!("{:<width$}  {:<18}  {:>12}\n", "parameter", "shape", "count");
        out += &format!("{}\n", "-".repeat(width + 34));
        for p in &self.params {
            let count: usize = p.shape.iter().product();
            let note = if p.trainable { "" } else { "  (fixed buffer)" };
            out += &format!("{:<width$}  {:<18}  {:>12}{note}\n", p.name, format!("{:?}", p.shape), count);
        }
        out
    }

    /// The layers as a Graphviz graph (`dot -Tpng`): one node per layer with its kind, output
    /// shape and parameters, an edge for each input.
    pub fn to_dot(&self, name: &str) -> String {
        let quote = |s: &str| s.replace('"', "\\\"");
        let mut out =
            format!("digraph \"{}\" {{\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n", quote(name));
        out += "  input [shape=oval];\n";
        for (i, layer) in self.layers.iter().enumerate() {
            let label = format!(
                "{}\\n{}\\n{}\\n{} params",
                layer.path,
                layer.kind,
                layer.output,
                group_digits(self.layer_params(layer))
            );
            out += &format!("  \"{}\" [label=\"{}\"];\n", quote(&layer.path), quote(&label));
            if layer.inputs.is_empty() {
                let from = if i == 0 { "input".to_string() } else { self.layers[i - 1].path.clone() };
                out += &format!("  \"{}\" -> \"{}\";\n", quote(&from), quote(&layer.path));
            }
            for input in &layer.inputs {
                out += &format!("  \"{}\" -> \"{}\";\n", quote(input), quote(&layer.path));
            }
        }
        out + "}\n"
    }

    /// Elements in trainable tensors.
    pub fn trainable_params(&self) -> usize {
        self.trainable_where(|_| true)
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

/// The layers of a stack, `{layers}.0` .. `{layers}.{count-1}` (`encoder.layers.0`, or a GPT's
/// `blocks.0`), then the final norm at its path if there is one, each of `kind` with `output`;
/// each layer reads `memory` too when given (cross-attention).
pub(crate) fn stack_layers(
    layers: &str,
    count: usize,
    final_norm: Option<&str>,
    kind: &str,
    output: &str,
    memory: Option<&str>,
) -> Vec<Layer> {
    let mut out: Vec<Layer> = Vec::new();
    for i in 0..count {
        let mut layer = Layer::new(format!("{layers}.{i}"), kind, output);
        if let Some(memory) = memory {
            let previous = out.last().map_or(String::new(), |l: &Layer| l.path.clone());
            layer.inputs = vec![previous, memory.to_string()];
        }
        out.push(layer);
    }
    if let Some(norm) = final_norm {
        out.push(Layer::new(norm, "LayerNorm", output));
    }
    out
}

/// The kind column of a Transformer layer: `EncoderLayer(8x64 heads, ffn 2048 relu, post-norm)`.
pub(crate) fn block_kind(block: &str, h: usize, hd: usize, f: usize, activation: &str, norm: &str) -> String {
    format!("{block}({h}x{hd} heads, ffn {f} {activation}, {norm}-norm)")
}

/// One layer per group of parameters: a repeated block (`encoder.layers.3`) or a module
/// (`encoder.norm`), in visiting order.
fn group_layers(params: &[ParamInfo]) -> Vec<Layer> {
    let mut layers: Vec<Layer> = Vec::new();
    for p in params {
        let parts: Vec<&str> = p.name.split('.').collect();
        let end = match parts.iter().position(|s| s.parse::<usize>().is_ok()) {
            Some(i) => i + 1,
            None => parts.len().saturating_sub(1).max(1),
        };
        let path = parts[..end].join(".");
        if layers.last().map(|l| &l.path) != Some(&path) {
            layers.push(Layer::new(path, "", ""));
        }
    }
    layers
}

/// `1234567` as `1,234,567`.
fn group_digits(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl fmt::Display for Summary {
    /// One row per layer (path, kind, output shape, parameters), then the totals and the memory
    /// they take. [`Summary::params_table`] lists the tensors.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.layers.iter().map(|l| l.path.len()).max().unwrap_or(5).max(5);
        let kind_width = self.layers.iter().map(|l| l.kind.len()).max().unwrap_or(4).max(4);
        let out_width = self.layers.iter().map(|l| l.output.len()).max().unwrap_or(6).max(6);
        let rule = "-".repeat(width + kind_width + out_width + 19);
        writeln!(f, "{:<width$}  {:<kind_width$}  {:<out_width$}  {:>13}", "layer", "kind", "output", "params")?;
        writeln!(f, "{rule}")?;
        for layer in &self.layers {
            let params = group_digits(self.layer_params(layer));
            writeln!(
                f,
                "{:<width$}  {:<kind_width$}  {:<out_width$}  {params:>13}",
                layer.path, layer.kind, layer.output
            )?;
        }
        writeln!(f, "{rule}")?;
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
