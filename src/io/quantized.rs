//! [`QuantizedWeights`]: a Llama model's products computed from the GGUF file's own quantized
//! blocks instead of the model's f32 copy.

use super::checkpoint::{rope_rows_fit, unrope_rows, Source};
use super::{dequantize, gguf_llama_source, GgmlType, Gguf};
use crate::error::{Error, Result};
use crate::kernels::{QuantMatrix, QuantRegistry, QuantScope, RowDecoder};
use crate::models::LlamaModel;
use dfdx::nn::tensor_collection::{RecursiveWalker, TensorOptions, TensorVisitor, ViewTensorName, ViewTensorRef};
use dfdx::prelude::*;
use std::marker::PhantomData;
use std::sync::Arc;

/// The quantized blocks of a GGUF file, standing in for a model's f32 weights in its matrix
/// products: code run through [`QuantizedWeights::run`] multiplies by the file's Q4_0, Q4_1,
/// Q8_0 (and K-quant, F16, BF16) matrices as stored, expanding them in registers, so that a
/// generated token reads about a fifth of the bytes the f32 copy costs.
///
/// The model's type, and so every shape contract, is unchanged: the same model, its products
/// read from another storage. Its results equal the f32 path's up to rounding (the f32 copy is
/// the same blocks dequantized). It borrows the model, so the weights cannot change under it;
/// it is for inference (a backward pass inside `run` would still read the f32 weights for its
/// own products). Products on other threads, of other dtypes or devices, or of tensors it did
/// not register run as usual.
pub struct QuantizedWeights<'m, M> {
    registry: Arc<QuantRegistry>,
    model: PhantomData<&'m M>,
}

impl<'m, M> QuantizedWeights<'m, M> {
    /// Runs `f` with the quantized matrices in use for products that `f` starts on this thread.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        let _scope = QuantScope::enter(Arc::clone(&self.registry));
        f()
    }

    /// How many of the model's weights have a quantized matrix.
    pub fn matrices(&self) -> usize {
        self.registry.len()
    }

    /// How many products have read them so far (inside [`Self::run`]).
    pub fn products(&self) -> usize {
        self.registry.served()
    }

    /// Bytes those matrices hold.
    pub fn bytes(&self) -> usize {
        self.registry.bytes()
    }
}

impl<M> std::fmt::Debug for QuantizedWeights<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantizedWeights").field("matrices", &self.matrices()).field("bytes", &self.bytes()).finish()
    }
}

impl<'m, M: LlamaModel<f32, Cpu>> QuantizedWeights<'m, M> {
    /// The quantized matrices of `file` for `model`, which [`load_gguf_llama`](super::load_gguf_llama)
    /// loaded from it: each projection (and the embedding, as the tied output) gets its
    /// tensor's blocks, rows reordered as the loader reorders them. An error names a tensor
    /// whose shape or bytes do not fit its weight.
    pub fn from_gguf(model: &'m M, file: &Gguf) -> Result<Self> {
        let mut collect =
            Collect { file, heads: (M::HEADS, M::KV_HEADS), registry: QuantRegistry::default(), error: None };
        match M::iter_tensors(&mut RecursiveWalker { m: (model, String::new()), f: &mut collect }) {
            Ok(_) => {}
            Err(never) => match never {},
        }
        if let Some(e) = collect.error {
            return Err(e);
        }
        Ok(Self { registry: Arc::new(collect.registry), model: PhantomData })
    }
}

/// Registers each weight that maps onto a quantized matrix of the file.
struct Collect<'f> {
    file: &'f Gguf,
    heads: (usize, usize),
    registry: QuantRegistry,
    error: Option<Error>,
}

impl Collect<'_> {
    /// The quantized matrix for the weight `name` of `len` elements, if its tensor is one.
    fn matrix(&self, name: &str, len: usize) -> Result<Option<QuantMatrix>> {
        let Some(source) = gguf_llama_source(name, self.heads.0, self.heads.1) else { return Ok(None) };
        let Source { name: theirs, rope_rows, .. } = source;
        let Some(tensor) = self.file.tensor(&theirs) else { return Ok(None) };
        if tensor.kind == GgmlType::F32 || tensor.shape.len() != 2 {
            return Ok(None); // norms, and anything stored as f32 already
        }
        let (n, k) = (tensor.shape[0], tensor.shape[1]);
        let bad = |reason: String| Error::BadFile {
            path: self.file.path.clone(),
            reason: format!("tensor `{theirs}`: {reason}"),
        };
        if n * k != len {
            return Err(bad(format!("{n} x {k} values for a weight of {len}")));
        }
        let (_, mut raw) = self.file.read_raw(&theirs)?;
        let row_bytes = raw.len() / n;
        if let Some(heads) = rope_rows {
            if !rope_rows_fit(n, heads) {
                return Err(bad(format!("{n} rows are not {heads} heads of an even number of rows")));
            }
            // llama.cpp interleaves the two halves of each head's rows: undo it, as the loader does.
            raw = unrope_rows(&raw, n, heads);
        }
        let q = match tensor.kind {
            GgmlType::Q4_0 => QuantMatrix::nibbles(n, k, &raw, false),
            GgmlType::Q4_1 => QuantMatrix::nibbles(n, k, &raw, true),
            GgmlType::Q8_0 => QuantMatrix::bytes(n, k, &raw),
            kind => {
                let decode: RowDecoder = Box::new(move |row: &[u8], out: &mut [f32]| {
                    // The bytes were checked to be whole blocks when the file was opened.
                    let _ = dequantize(kind, row, out);
                });
                QuantMatrix::rows(n, k, raw, row_bytes, decode)
            }
        };
        q.map(Some)
            .ok_or_else(|| bad(format!("{} bytes are not {n} rows of {k} {} values", tensor.bytes, tensor.kind.name())))
    }
}

impl TensorVisitor<f32, Cpu> for Collect<'_> {
    type Viewer = (ViewTensorRef, ViewTensorName);
    type Err = std::convert::Infallible;
    type E2 = f32;
    type D2 = Cpu;

    fn visit<S: Shape>(
        &mut self,
        _: TensorOptions<S, f32, Cpu>,
        (t, name): (&Tensor<S, f32, Cpu>, String),
    ) -> std::result::Result<Option<Tensor<S, f32, Cpu>>, Self::Err> {
        if self.error.is_some() {
            return Ok(None);
        }
        let Some((data, _)) = crate::kernels::buffer_of(t) else { return Ok(None) };
        match self.matrix(&name, data.len()) {
            Ok(Some(q)) => self.registry.add(data, q),
            Ok(None) => {}
            Err(e) => self.error = Some(e),
        }
        Ok(None)
    }
}
