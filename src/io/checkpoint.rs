//! Checkpoints in safetensors, named by the model's dotted parameter paths
//! (`encoder.layers.0.self_attn.w_q.weight`).
//!
//! Only trainable tensors are stored: fixed buffers such as the sinusoidal table are rebuilt from
//! the model's type. Loading checks every name, shape and dtype before touching the model, and
//! reports every problem at once.

use super::write_atomic;
use crate::error::{Error, Result};
use crate::FloatDtype;
use ::safetensors::tensor::{Dtype as SafeDtype, SafeTensors, TensorView};
use dfdx::nn::tensor_collection::{
    RecursiveWalker, TensorCollection, TensorOptions, TensorVisitor, ViewTensorMut, ViewTensorName, ViewTensorRef,
};
use dfdx::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

fn safe_dtype<E: FloatDtype>() -> Result<SafeDtype> {
    match std::any::type_name::<E>() {
        "f32" => Ok(SafeDtype::F32),
        "f64" => Ok(SafeDtype::F64),
        other => Err(Error::InvalidConfig(format!("checkpoints support f32 and f64 models, not {other}"))),
    }
}

fn to_bytes<E: FloatDtype>(values: &[E], dtype: SafeDtype) -> Vec<u8> {
    match dtype {
        SafeDtype::F64 => values.iter().flat_map(|v| v.to_f64().unwrap_or(f64::NAN).to_le_bytes()).collect(),
        _ => values.iter().flat_map(|v| v.to_f32().unwrap_or(f32::NAN).to_le_bytes()).collect(),
    }
}

fn from_bytes<E: FloatDtype>(bytes: &[u8], dtype: SafeDtype) -> Vec<E> {
    match dtype {
        SafeDtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| E::from_f64(f64::from_le_bytes(c.try_into().expect("8 bytes"))).unwrap_or(E::nan()))
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|c| E::from_f32(f32::from_le_bytes(c.try_into().expect("4 bytes"))).unwrap_or(E::nan()))
            .collect(),
    }
}

struct Collect {
    tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)>,
    dtype: SafeDtype,
}

impl<E: FloatDtype, Dev: Device<E>> TensorVisitor<E, Dev> for Collect {
    type Viewer = (ViewTensorRef, ViewTensorName);
    type Err = Dev::Err;
    type E2 = E;
    type D2 = Dev;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, E, Dev>,
        (t, name): (&Tensor<S, E, Dev>, String),
    ) -> Result<Option<Tensor<S, E, Dev>>, Self::Err> {
        if opts.do_gradient_update {
            let bytes = to_bytes(&t.as_vec(), self.dtype);
            self.tensors.insert(name, (t.shape().concrete().into_iter().collect(), bytes));
        }
        Ok(None)
    }
}

/// The trainable tensors of `model`, by name, with their shapes.
pub fn parameter_shapes<M: TensorCollection<E, Dev>, E: FloatDtype, Dev: Device<E>>(
    model: &M,
) -> Result<Vec<(String, Vec<usize>)>> {
    let mut c = Collect { tensors: BTreeMap::new(), dtype: safe_dtype::<E>()? };
    M::iter_tensors(&mut RecursiveWalker { m: (model, String::new()), f: &mut c })
        .map_err(|e| Error::Training(format!("{e:?}")))?;
    Ok(c.tensors.into_iter().map(|(n, (s, _))| (n, s)).collect())
}

/// Saves `model`'s trainable tensors to `path` atomically, with `metadata` in the header.
pub fn save_checkpoint<M: TensorCollection<E, Dev>, E: FloatDtype, Dev: Device<E>>(
    model: &M,
    path: &Path,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let dtype = safe_dtype::<E>()?;
    let mut c = Collect { tensors: BTreeMap::new(), dtype };
    M::iter_tensors(&mut RecursiveWalker { m: (model, String::new()), f: &mut c })
        .map_err(|e| Error::Training(format!("{e:?}")))?;
    let views = c
        .tensors
        .iter()
        .map(|(name, (shape, bytes))| {
            Ok((
                name.as_str(),
                TensorView::new(dtype, shape.clone(), bytes).map_err(|e| Error::Training(format!("{name}: {e:?}")))?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = ::safetensors::serialize(views, &Some(metadata))
        .map_err(|e| Error::BadFile { path: path.into(), reason: format!("{e:?}") })?;
    write_atomic(path, &bytes)
}

struct Restore<'a> {
    file: &'a SafeTensors<'a>,
    problems: Vec<String>,
    seen: Vec<String>,
}

impl<E: FloatDtype, Dev: Device<E>> TensorVisitor<E, Dev> for Restore<'_> {
    type Viewer = (ViewTensorMut, ViewTensorName);
    type Err = Dev::Err;
    type E2 = E;
    type D2 = Dev;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, E, Dev>,
        (t, name): (&mut Tensor<S, E, Dev>, String),
    ) -> Result<Option<Tensor<S, E, Dev>>, Self::Err> {
        if !opts.do_gradient_update {
            return Ok(None);
        }
        let expected: Vec<usize> = t.shape().concrete().into_iter().collect();
        match self.file.tensor(&name) {
            Err(_) => self.problems.push(format!("missing: {name} {expected:?}")),
            Ok(view) => {
                self.seen.push(name.clone());
                let dtype = view.dtype();
                if view.shape() != expected.as_slice() {
                    self.problems.push(format!(
                        "wrong shape: {name} is {:?} in the file, the model needs {expected:?}",
                        view.shape()
                    ));
                } else if dtype != SafeDtype::F32 && dtype != SafeDtype::F64 {
                    self.problems.push(format!("wrong dtype: {name} is {dtype:?} in the file, expected F32 or F64"));
                } else if self.problems.is_empty() {
                    t.copy_from(&from_bytes::<E>(view.data(), dtype));
                }
            }
        }
        Ok(None)
    }
}

/// Loads a checkpoint written by [`save_checkpoint`] into `model`. On any problem (a missing,
/// unexpected or mis-shaped tensor, a wrong dtype, a truncated or corrupt file) returns an error
/// that lists all of them, and leaves `model` unchanged.
pub fn load_checkpoint<M: TensorCollection<E, Dev> + Clone, E: FloatDtype, Dev: Device<E>>(
    model: &mut M,
    path: &Path,
) -> Result<HashMap<String, String>> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::BadFile { path: path.into(), reason: format!("not a valid safetensors file ({e:?})") })?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::BadFile { path: path.into(), reason: format!("{e:?}") })?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let mut staged = model.clone();
    let mut restore = Restore { file: &file, problems: Vec::new(), seen: Vec::new() };
    M::iter_tensors(&mut RecursiveWalker { m: (&mut staged, String::new()), f: &mut restore })
        .map_err(|e| Error::Training(format!("{e:?}")))?;
    let mut problems = restore.problems;
    let mut unexpected: Vec<&String> = file.names().into_iter().filter(|n| !restore.seen.contains(n)).collect();
    unexpected.sort();
    problems.extend(unexpected.into_iter().map(|n| format!("unexpected: {n}")));
    if !problems.is_empty() {
        return Err(Error::CheckpointMismatch { path: path.into(), problems: problems.join("\n") });
    }
    *model = staged;
    Ok(metadata)
}
