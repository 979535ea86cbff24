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
use std::collections::HashMap;
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

/// Parses a safetensors file's `bytes` and its header metadata; an error names `path`.
fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<(SafeTensors<'a>, HashMap<String, String>)> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::BadFile { path: path.into(), reason: format!("not a valid safetensors file ({e:?})") })?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::BadFile { path: path.into(), reason: format!("{e:?}") })?;
    Ok((file, header.metadata().clone().unwrap_or_default()))
}

/// Serializes named tensors `(name, shape, little-endian bytes)` of `dtype` and writes them to
/// `path` atomically.
fn write_tensors(
    path: &Path,
    dtype: SafeDtype,
    tensors: &[(String, ShapedBytes)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let views = tensors
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

/// Metadata key under which a scalar hyperparameter (`eps`, `dropout`) is stored.
const SCALAR_PREFIX: &str = "scalar:";

/// A tensor's shape and little-endian bytes.
type ShapedBytes = (Vec<usize>, Vec<u8>);

struct Collect {
    /// In the order the model visits them (the order optimizer state follows).
    tensors: Vec<(String, ShapedBytes)>,
    dtype: SafeDtype,
    scalars: Vec<(String, f64)>,
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
            self.tensors.push((name, (t.shape().concrete().into_iter().collect(), bytes)));
        }
        Ok(None)
    }

    fn visit_scalar<N: num_traits::NumCast>(
        &mut self,
        _: ScalarOptions<N>,
        (value, name): (&N, String),
    ) -> Result<Option<N>, Self::Err> {
        self.scalars.push((name, value.to_f64().unwrap_or(f64::NAN)));
        Ok(None)
    }
}

/// The trainable tensors of `model`, by name, with their shapes, in the order the model visits
/// them (the order optimizer state follows).
pub fn parameter_shapes<M: TensorCollection<E, Dev>, E: FloatDtype, Dev: Device<E>>(
    model: &M,
) -> Result<Vec<(String, Vec<usize>)>> {
    let mut c = Collect { tensors: Vec::new(), dtype: safe_dtype::<E>()?, scalars: Vec::new() };
    M::iter_tensors(&mut RecursiveWalker { m: (model, String::new()), f: &mut c })
        .map_err(|e| Error::Training(format!("{e:?}")))?;
    Ok(c.tensors.into_iter().map(|(n, (s, _))| (n, s)).collect())
}

/// Saves `model`'s trainable tensors to `path` atomically, with `metadata` and the model's scalar
/// hyperparameters (layer-norm `eps`, `dropout`) in the header.
pub fn save_checkpoint<M: TensorCollection<E, Dev>, E: FloatDtype, Dev: Device<E>>(
    model: &M,
    path: &Path,
    mut metadata: HashMap<String, String>,
) -> Result<()> {
    let dtype = safe_dtype::<E>()?;
    let mut c = Collect { tensors: Vec::new(), dtype, scalars: Vec::new() };
    M::iter_tensors(&mut RecursiveWalker { m: (model, String::new()), f: &mut c })
        .map_err(|e| Error::Training(format!("{e:?}")))?;
    metadata.extend(c.scalars.iter().map(|(name, v)| (format!("{SCALAR_PREFIX}{name}"), v.to_string())));
    write_tensors(path, dtype, &c.tensors, metadata)
}

struct Restore<'a> {
    file: &'a SafeTensors<'a>,
    metadata: &'a HashMap<String, String>,
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

    fn visit_scalar<N: num_traits::NumCast>(
        &mut self,
        _: ScalarOptions<N>,
        (value, name): (&mut N, String),
    ) -> Result<Option<N>, Self::Err> {
        // Checkpoints from elsewhere carry no scalars: the model keeps its own then.
        if let Some(saved) = self.metadata.get(&format!("{SCALAR_PREFIX}{name}")) {
            match saved.parse::<f64>().ok().and_then(N::from) {
                Some(v) => *value = v,
                None => self.problems.push(format!("bad value: {name} = `{saved}` in the metadata")),
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
    let (file, metadata) = parse(path, &bytes)?;
    let mut staged = model.clone();
    let mut restore = Restore { file: &file, metadata: &metadata, problems: Vec::new(), seen: Vec::new() };
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

/// Saves named flat vectors (optimizer state and the like) to `path` atomically.
pub fn save_vectors<E: FloatDtype>(
    path: &Path,
    vectors: &[(String, Vec<E>)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let dtype = safe_dtype::<E>()?;
    let tensors: Vec<(String, ShapedBytes)> =
        vectors.iter().map(|(n, v)| (n.clone(), (vec![v.len()], to_bytes(v, dtype)))).collect();
    write_tensors(path, dtype, &tensors, metadata)
}

/// Reads what [`save_vectors`] wrote.
#[allow(clippy::type_complexity)]
pub fn load_vectors<E: FloatDtype>(path: &Path) -> Result<(HashMap<String, Vec<E>>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    let (file, metadata) = parse(path, &bytes)?;
    let mut out = HashMap::new();
    for (name, view) in file.tensors() {
        if view.dtype() != SafeDtype::F32 && view.dtype() != SafeDtype::F64 {
            return Err(Error::BadFile {
                path: path.into(),
                reason: format!("{name} is {:?}, expected F32 or F64", view.dtype()),
            });
        }
        out.insert(name, from_bytes::<E>(view.data(), view.dtype()));
    }
    Ok((out, metadata))
}

/// Reads only the metadata of a safetensors file (checks that it is one).
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    Ok(parse(path, &bytes)?.1)
}
