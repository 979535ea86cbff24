//! Checkpoints in safetensors, named by the model's dotted parameter paths
//! (`encoder.layers.0.self_attn.w_q.weight`).
//!
//! Only trainable tensors are stored: fixed buffers such as the sinusoidal table are rebuilt from
//! the model's type. Loading checks every name, shape and dtype before touching the model, and
//! reports every problem at once.

use super::write_atomic;
use crate::error::{Error, Result};
use crate::nn::check_scalar;
use crate::FloatDtype;
use ::safetensors::tensor::{Dtype as SafeDtype, SafeTensorError, SafeTensors, TensorView};
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

/// Decodes little-endian `bytes` of a floating-point `dtype` (F64, F32, F16 or BF16) into `E`s;
/// `None` for any other dtype.
fn from_bytes<E: FloatDtype>(bytes: &[u8], dtype: SafeDtype) -> Option<Vec<E>> {
    fn decode<const N: usize, E: FloatDtype>(bytes: &[u8], f: impl Fn([u8; N]) -> f64) -> Vec<E> {
        bytes.chunks_exact(N).map(|c| E::from_f64(f(c.try_into().expect("N bytes"))).unwrap_or(E::nan())).collect()
    }
    Some(match dtype {
        SafeDtype::F64 => decode::<8, E>(bytes, f64::from_le_bytes),
        SafeDtype::F32 => decode::<4, E>(bytes, |b| f32::from_le_bytes(b) as f64),
        SafeDtype::F16 => decode::<2, E>(bytes, |b| half::f16::from_le_bytes(b).to_f64()),
        SafeDtype::BF16 => decode::<2, E>(bytes, |b| half::bf16::from_le_bytes(b).to_f64()),
        _ => return None,
    })
}

/// Parses a safetensors file's `bytes` and its header metadata; an error names `path` and says
/// in words what is wrong.
pub(crate) fn parse_safetensors<'a>(
    path: &Path,
    bytes: &'a [u8],
) -> Result<(SafeTensors<'a>, HashMap<String, String>)> {
    let bad = |e: SafeTensorError| Error::BadFile { path: path.into(), reason: describe(&e, bytes) };
    let file = SafeTensors::deserialize(bytes).map_err(bad)?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(bad)?;
    Ok((file, header.metadata().clone().unwrap_or_default()))
}

/// What a safetensors error means for the file `bytes`, in words.
fn describe(e: &SafeTensorError, bytes: &[u8]) -> String {
    let len = bytes.len();
    let header_len = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    // Where the header says the tensors' data ends, when the header can be read at all.
    let data_end = || -> Option<u64> {
        let n = usize::try_from(header_len?).ok()?;
        let json: serde_json::Value = serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
        let end = json
            .as_object()?
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .filter_map(|(_, t)| t.get("data_offsets")?.get(1)?.as_u64())
            .max()
            .unwrap_or(0);
        Some(8 + n as u64 + end)
    };
    match e {
        SafeTensorError::HeaderTooSmall => format!("not a safetensors file: {len} bytes, too short for a header"),
        SafeTensorError::InvalidHeaderLength => match header_len {
            Some(n) => {
                format!("truncated or not a safetensors file: the file is {len} bytes, its header claims {n} bytes")
            }
            None => format!("not a safetensors file: {len} bytes"),
        },
        SafeTensorError::HeaderTooLarge => "not a safetensors file: its header claims more than 100 MB".into(),
        SafeTensorError::InvalidHeader | SafeTensorError::InvalidHeaderStart => {
            "not a safetensors file: its header is not JSON text".into()
        }
        SafeTensorError::InvalidHeaderDeserialization | SafeTensorError::JsonError(_) => {
            "a corrupt safetensors header: not the JSON object of tensors it must be".into()
        }
        SafeTensorError::MetadataIncompleteBuffer => match data_end() {
            Some(end) if end > len as u64 => {
                format!("truncated: the file is {len} bytes, its header says the tensors end at byte {end}")
            }
            Some(end) => format!("the file is {len} bytes but its tensors end at byte {end}: bytes left over or gaps"),
            None => format!("truncated or corrupt: the tensors do not cover the {len}-byte file"),
        },
        SafeTensorError::InvalidOffset(name) => {
            format!("tensor `{name}` has offsets that overlap another tensor or lie outside the file's data")
        }
        SafeTensorError::TensorInvalidInfo | SafeTensorError::InvalidTensorView(..) => {
            "a tensor whose byte size does not match its dtype and shape".into()
        }
        SafeTensorError::ValidationOverflow => {
            "a tensor whose shape is too large to be real (its size overflows)".into()
        }
        SafeTensorError::TensorNotFound(name) => format!("no tensor `{name}`"),
        SafeTensorError::IoError(e) => e.to_string(),
    }
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

/// The metadata entry that says how a checkpoint stores projection weights (see [`WeightLayout`]).
pub(crate) const WEIGHT_LAYOUT_KEY: &str = "typeformer.projection_weights";
/// [`WEIGHT_LAYOUT_KEY`]'s value for [`WeightLayout::InOut`], the layout written today.
pub(crate) const WEIGHT_LAYOUT: &str = "in,out;heads";
/// The value of checkpoints whose block projections are `(in, out)` but whose output head and
/// pooler are not yet.
const PROJECTIONS_IN_OUT: &str = "in,out";

/// How a checkpoint file stores its projection weights, from its metadata. Loading maps each
/// to today's layout, so checkpoints of every earlier typeformer load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WeightLayout {
    /// No layout entry: every projection `[out, in]`, PyTorch's `nn.Linear` layout.
    OutIn,
    /// `in,out`: the blocks' projections `(in, out)`; the output head, generator and pooler
    /// `[out, in]`.
    ProjectionsInOut,
    /// `in,out;heads`: every projection `(in, out)`, the layout the matrix products read in place.
    InOut,
}

impl WeightLayout {
    /// The layout `metadata` (of the file at `path`) names.
    pub(crate) fn of(metadata: &HashMap<String, String>, path: &Path) -> Result<Self> {
        match metadata.get(WEIGHT_LAYOUT_KEY).map(String::as_str) {
            None => Ok(Self::OutIn),
            Some(PROJECTIONS_IN_OUT) => Ok(Self::ProjectionsInOut),
            Some(WEIGHT_LAYOUT) => Ok(Self::InOut),
            Some(other) => Err(Error::BadFile {
                path: path.into(),
                reason: format!("projection weights stored as `{other}`; this typeformer reads `{WEIGHT_LAYOUT}`"),
            }),
        }
    }

    /// Where our parameter `ours` is in a file of this layout.
    pub(crate) fn source(self, ours: &str) -> Source {
        match self {
            Self::OutIn => super::import::out_in_source(ours),
            Self::ProjectionsInOut if super::import::is_head_weight(ours) => Source::new(ours).transposed(),
            Self::ProjectionsInOut | Self::InOut => Source::new(ours),
        }
    }
}

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
        .map_err(|e| Error::Device(format!("{e:?}")))?;
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
        .map_err(|e| Error::Device(format!("{e:?}")))?;
    metadata.extend(c.scalars.iter().map(|(name, v)| (format!("{SCALAR_PREFIX}{name}"), v.to_string())));
    metadata.insert(WEIGHT_LAYOUT_KEY.into(), WEIGHT_LAYOUT.into());
    write_tensors(path, dtype, &c.tensors, metadata)
}

/// Where one of the model's parameters comes from in a checkpoint: a tensor of the file, maybe
/// one of `n` equal blocks of it (a packed Q/K/V projection), maybe then transposed (2-D).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The tensor's name in the file.
    pub name: String,
    /// Take block `k` of `n` equal blocks along the first axis, or the last: `Some(Part { .. })`.
    pub part: Option<Part>,
    /// Before anything else, undo llama.cpp's reordering of the rows of a query or key
    /// projection of this many heads (see [`Source::rope_rows_of`]).
    pub rope_rows: Option<usize>,
    /// Then transpose the result, read as a matrix: PyTorch's `nn.Linear` stores `[out, in]`,
    /// our projections `(in, out)`.
    pub transpose: Option<Transpose>,
}

/// How a tensor is read as a matrix to transpose (the same for a 2-D tensor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transpose {
    /// Rows along the first axis, columns along all the others: `[out, ...in]`.
    FirstAxisRows,
    /// Columns along the last axis, rows along all the others: `[...out, in]`.
    LastAxisColumns,
}

/// One of `n` equal blocks of a tensor along its first or last axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Which block, from 0.
    pub k: usize,
    /// How many blocks.
    pub n: usize,
    /// Along the last axis rather than the first.
    pub last_axis: bool,
}

impl Source {
    /// The tensor `name`, as it is.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), part: None, rope_rows: None, transpose: None }
    }
    /// With its rows reordered back from llama.cpp's layout for rotary projections of `heads`
    /// heads: llama.cpp interleaves the two halves of each head (rows `2j` and `2j + 1` are
    /// Hugging Face's rows `j` and `j + HD/2`), for its pairwise rotation.
    pub fn rope_rows_of(mut self, heads: usize) -> Self {
        self.rope_rows = Some(heads);
        self
    }
    /// Transposed (after taking any block), rows along the first axis.
    pub fn transposed(self) -> Self {
        self.transposed_as(Transpose::FirstAxisRows)
    }
    /// Transposed (after taking any block), read as a matrix as `how` says.
    pub fn transposed_as(mut self, how: Transpose) -> Self {
        self.transpose = Some(how);
        self
    }
    /// Block `k` of `n` along the first axis.
    pub fn part(mut self, k: usize, n: usize) -> Self {
        self.part = Some(Part { k, n, last_axis: false });
        self
    }
    /// Block `k` of `n` along the last axis.
    pub fn part_of_last_axis(mut self, k: usize, n: usize) -> Self {
        self.part = Some(Part { k, n, last_axis: true });
        self
    }

    /// The tensor's values and shape after the transform, or why it cannot be applied.
    fn apply<E: FloatDtype>(
        &self,
        mut values: Vec<E>,
        mut shape: Vec<usize>,
    ) -> std::result::Result<(Vec<E>, Vec<usize>), String> {
        if let Some(heads) = self.rope_rows {
            let rows = shape.first().copied().unwrap_or(0);
            if shape.len() != 2 || !rope_rows_fit(rows, heads) {
                return Err(format!(
                    "wrong shape: {} is {shape:?} in the file, expected {heads} heads of an even number of rows",
                    self.name
                ));
            }
            let cols = shape[1];
            if values.len() != rows * cols {
                return Err(format!("{}: {} values for a shape of {shape:?}", self.name, values.len()));
            }
            values = unrope_rows(&values, rows, heads);
        }
        if let Some(Part { k, n, last_axis }) = self.part {
            let axis = if last_axis { shape.len().saturating_sub(1) } else { 0 };
            if shape.is_empty() || n == 0 || !shape[axis].is_multiple_of(n) {
                let which = if last_axis { "columns (last axis)" } else { "rows" };
                return Err(format!(
                    "wrong shape: {} is {shape:?} in the file, expected {n} equal blocks of {which}",
                    self.name
                ));
            }
            // Row-major: the tensor is `outer` runs of `shape[axis] * inner` values.
            let inner: usize = shape[axis + 1..].iter().product();
            let run = shape[axis] * inner;
            let block = run / n;
            values = values.chunks_exact(run).flat_map(|r| r[k * block..(k + 1) * block].iter().copied()).collect();
            shape[axis] /= n;
        }
        if let Some(how) = self.transpose {
            if shape.len() < 2 {
                return Err(format!(
                    "wrong shape: {} is {shape:?} in the file, expected a matrix to transpose",
                    self.name
                ));
            }
            let rows: usize = match how {
                Transpose::FirstAxisRows => shape[0],
                Transpose::LastAxisColumns => shape[..shape.len() - 1].iter().product(),
            };
            let cols = values.len() / rows.max(1);
            values = (0..cols * rows).map(|i| values[(i % rows) * cols + i / rows]).collect();
            shape = vec![cols, rows];
        }
        Ok((values, shape))
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)?;
        if let Some(Part { k, n, last_axis }) = self.part {
            write!(f, " (block {} of {n}{})", k + 1, if last_axis { ", last axis" } else { "" })?;
        }
        if self.transpose.is_some() {
            write!(f, " (transposed)")?;
        }
        Ok(())
    }
}

/// True when `theirs` lays out the same elements as `ours`, one of them with some adjacent axes
/// merged: a PyTorch `[H * HD, D]` weight is our `(H, HD, D)`. The axis boundaries of the coarser
/// shape must be boundaries of the finer one, so `[F, D]` is not `(D, F)` (only equal counts).
fn same_layout(ours: &[usize], theirs: &[usize]) -> bool {
    // The products of each leading run of axes: where a shape can be cut into rows.
    let cuts = |shape: &[usize]| -> std::collections::BTreeSet<usize> {
        let mut acc = 1usize;
        let mut cuts: std::collections::BTreeSet<usize> = shape
            .iter()
            .map(|&d| {
                acc = acc.saturating_mul(d);
                acc
            })
            .collect();
        cuts.insert(acc); // the total, also for a scalar
        cuts.remove(&1); // axes of size 1 cut nothing
        cuts
    };
    let (a, b) = (cuts(ours), cuts(theirs));
    let total = |shape: &[usize]| shape.iter().fold(1usize, |p, &d| p.saturating_mul(d));
    total(ours) == total(theirs) && (a.is_subset(&b) || b.is_subset(&a))
}

/// For each row of a rotary projection of `rows` rows in `heads` heads, in Hugging Face's
/// order, the row llama.cpp stores it at: llama.cpp interleaves each head's two halves (its
/// rows `2j` and `2j + 1` are rows `j` and `j + HD/2` of the head). `rows` is a multiple of
/// `2 * heads`.
fn rope_row_sources(rows: usize, heads: usize) -> impl Iterator<Item = usize> {
    let hd = rows / heads;
    (0..rows).map(move |to| (to / hd) * hd + 2 * (to % hd % (hd / 2)) + (to % hd) / (hd / 2))
}

/// Whether `rows` rows are `heads` heads of an even number of rows each: what
/// [`unrope_rows`] needs.
pub(crate) fn rope_rows_fit(rows: usize, heads: usize) -> bool {
    heads > 0 && rows.is_multiple_of(2 * heads)
}

/// `data`, `rows` equal rows of any element (values, or a quantized row's bytes), reordered
/// from llama.cpp's rotary layout of `heads` heads back to Hugging Face's (see
/// [`rope_row_sources`]).
pub(crate) fn unrope_rows<T: Copy>(data: &[T], rows: usize, heads: usize) -> Vec<T> {
    let row = data.len() / rows.max(1);
    rope_row_sources(rows, heads).flat_map(|from| data[from * row..(from + 1) * row].iter().copied()).collect()
}

/// A tensor as read from a file, values (row-major) and shape, or why it cannot be read.
pub(crate) type Read<E> = std::result::Result<(Vec<E>, Vec<usize>), String>;

/// A file of named tensors that weights are restored from: safetensors, GGUF.
pub(crate) trait TensorFile {
    /// Every tensor's name.
    fn names(&self) -> Vec<String>;
    /// The values (row-major) and shape of tensor `name`: `None` when there is none, `Err`
    /// (a problem, in words) when it cannot be read as numbers.
    fn read<E: FloatDtype>(&self, name: &str) -> Option<Read<E>>;
}

impl TensorFile for SafeTensors<'_> {
    fn names(&self) -> Vec<String> {
        SafeTensors::names(self).into_iter().cloned().collect()
    }
    fn read<E: FloatDtype>(&self, name: &str) -> Option<Read<E>> {
        let view: TensorView = self.tensor(name).ok()?;
        let dtype = view.dtype();
        Some(
            from_bytes::<E>(view.data(), dtype)
                .map(|values| (values, view.shape().to_vec()))
                .ok_or_else(|| format!("wrong dtype: {name} is {dtype:?} in the file, expected F32, F64, F16 or BF16")),
        )
    }
}

/// Fills a model's trainable tensors from a file, each from the [`Source`] that `map` names.
struct Restore<'a, F> {
    file: &'a F,
    metadata: &'a HashMap<String, String>,
    map: &'a dyn Fn(&str) -> Option<Source>,
    problems: Vec<String>,
    seen: Vec<String>,
}

impl<E: FloatDtype, Dev: Device<E>, F: TensorFile> TensorVisitor<E, Dev> for Restore<'_, F> {
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
        let Some(source) = (self.map)(&name) else {
            self.problems.push(format!("no source: nothing in this format maps to {name} {expected:?}"));
            return Ok(None);
        };
        let what = if source.name == name { name.clone() } else { format!("{source}, for {name}") };
        match self.file.read::<E>(&source.name) {
            None => self.problems.push(format!("missing: {what} {expected:?}")),
            Some(read) => {
                self.seen.push(source.name.clone());
                match read.and_then(|(values, shape)| source.apply(values, shape)) {
                    Err(problem) => self.problems.push(problem),
                    Ok((_, shape)) if !same_layout(&expected, &shape) => self
                        .problems
                        .push(format!("wrong shape: {what} is {shape:?} in the file, the model needs {expected:?}")),
                    Ok((values, _)) => match values.iter().position(|v| !v.is_finite()) {
                        Some(i) => self.problems.push(format!(
                            "not finite: {what} holds {} at element {i} (of {})",
                            values[i].to_f64().unwrap_or(f64::NAN),
                            values.len()
                        )),
                        None if self.problems.is_empty() => t.copy_from(&values),
                        None => {}
                    },
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
        let saved = self.metadata.get(&format!("{SCALAR_PREFIX}{name}")).or_else(|| {
            // Layers kept one residual dropout beside their norms (`layers.0.dropout`) before
            // each sub-layer's residual connection had its own (`layers.0.norm1.dropout`).
            let (layer, norm) = name.strip_suffix(".dropout")?.rsplit_once('.')?;
            norm.starts_with("norm").then(|| self.metadata.get(&format!("{SCALAR_PREFIX}{layer}.dropout")))?
        });
        if let Some(saved) = saved {
            match saved.parse::<f64>().ok().map(|v| (v, check_scalar(&name, v))) {
                Some((v, Ok(()))) => match N::from(v) {
                    Some(v) => *value = v,
                    None => self.problems.push(format!("bad value: {name} = {saved} in the metadata")),
                },
                Some((_, Err(range))) => {
                    self.problems.push(format!("bad value: {name} = {saved} in the metadata; it must be {range}"))
                }
                None => self.problems.push(format!("bad value: {name} = `{saved}` in the metadata, not a number")),
            }
        }
        Ok(None)
    }
}

/// Loads the safetensors file at `path` into `model`, each parameter from the tensor `map` names
/// (given the parameter's dotted name); file tensors for which `ignore` is true may go unused.
/// On any problem (a missing, unexpected or mis-shaped tensor, a wrong dtype, a truncated or
/// corrupt file) returns an error that lists all of them, and leaves `model` unchanged. Returns
/// the file's metadata.
pub fn import_weights<M: TensorCollection<E, Dev> + Clone, E: FloatDtype, Dev: Device<E>>(
    model: &mut M,
    path: &Path,
    map: &dyn Fn(&str) -> Option<Source>,
    ignore: &dyn Fn(&str) -> bool,
) -> Result<HashMap<String, String>> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    let (file, metadata) = parse_safetensors(path, &bytes)?;
    restore_from(model, &file, &metadata, path, map, ignore)?;
    Ok(metadata)
}

/// [`import_weights`] from any [`TensorFile`]; `metadata` holds saved scalars, `path` names the
/// file in errors.
pub(crate) fn restore_from<M: TensorCollection<E, Dev> + Clone, E: FloatDtype, Dev: Device<E>, F: TensorFile>(
    model: &mut M,
    file: &F,
    metadata: &HashMap<String, String>,
    path: &Path,
    map: &dyn Fn(&str) -> Option<Source>,
    ignore: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let mut staged = model.clone();
    restore_in_place(&mut staged, file, metadata, path, map, ignore)?;
    *model = staged;
    Ok(())
}

/// A model of type `M` on `dev` to restore with `map`: the trainable tensors `map` gives a
/// source are zeros (the file overwrites them), the others (computed tables such as rotary
/// positions) get their initialiser. Building with every initialiser costs about a fifth of loading SmolLM2
/// from its GGUF file (random numbers for 135M weights that are then overwritten).
pub(crate) fn build_for_restore<M, E, Dev>(dev: &Dev, map: &dyn Fn(&str) -> Option<Source>) -> Result<M>
where
    M: TensorCollection<E, Dev, To<E, Dev> = M>,
    E: FloatDtype,
    Dev: Device<E>,
{
    let mut build = BuildForRestore { dev, map };
    let built = M::iter_tensors(&mut RecursiveWalker { m: String::new(), f: &mut build })
        .map_err(|e| Error::Device(format!("{e:?}")))?;
    Ok(built.expect("every tensor is built"))
}

/// Builds each tensor zeroed, initialised only where the map gives it no source.
struct BuildForRestore<'a, Dev> {
    dev: &'a Dev,
    map: &'a dyn Fn(&str) -> Option<Source>,
}

impl<E: Dtype, Dev: Device<E>> TensorVisitor<E, Dev> for BuildForRestore<'_, Dev> {
    type Viewer = ViewTensorName;
    type Err = Dev::Err;
    type E2 = E;
    type D2 = Dev;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, E, Dev>,
        name: String,
    ) -> std::result::Result<Option<Tensor<S, E, Dev>>, Self::Err> {
        let mut tensor: Tensor<S, E, Dev> = self.dev.try_zeros_like(&opts.shape)?;
        // As `Restore` reads them: only trainable tensors come from the file.
        if !opts.do_gradient_update || (self.map)(&name).is_none() {
            (opts.reset)(&mut tensor)?;
        }
        Ok(Some(tensor))
    }
}

/// [`restore_from`] without the staging copy, for a model that is dropped on an error: it may
/// be partly written then. Peak memory is the model's, not twice it.
pub(crate) fn restore_in_place<M: TensorCollection<E, Dev>, E: FloatDtype, Dev: Device<E>, F: TensorFile>(
    model: &mut M,
    file: &F,
    metadata: &HashMap<String, String>,
    path: &Path,
    map: &dyn Fn(&str) -> Option<Source>,
    ignore: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let mut restore = Restore { file, metadata, map, problems: Vec::new(), seen: Vec::new() };
    M::iter_tensors(&mut RecursiveWalker { m: (model, String::new()), f: &mut restore })
        .map_err(|e| Error::Device(format!("{e:?}")))?;
    let mut problems = restore.problems;
    let mut unexpected: Vec<String> =
        file.names().into_iter().filter(|n| !restore.seen.contains(n) && !ignore(n)).collect();
    unexpected.sort();
    problems.extend(unexpected.into_iter().map(|n| format!("unexpected: {n}")));
    if !problems.is_empty() {
        return Err(Error::CheckpointMismatch { path: path.into(), problems: problems.join("\n") });
    }
    Ok(())
}

/// The names of the tensors in the safetensors file at `path` (checks that it is one).
pub fn tensor_names(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    let (file, _) = parse_safetensors(path, &bytes)?;
    Ok(file.names().into_iter().cloned().collect())
}

/// Loads a checkpoint written by [`save_checkpoint`] into `model`. On any problem (a missing,
/// unexpected or mis-shaped tensor, a wrong dtype, a truncated or corrupt file) returns an error
/// that lists all of them, and leaves `model` unchanged. Checkpoints written before typeformer
/// stored projection weights `(in, out)` (the blocks' projections first, the output heads and
/// BERT's pooler later) are transposed as they load.
pub fn load_checkpoint<M: TensorCollection<E, Dev> + Clone, E: FloatDtype, Dev: Device<E>>(
    model: &mut M,
    path: &Path,
) -> Result<HashMap<String, String>> {
    let layout = WeightLayout::of(&read_metadata(path)?, path)?;
    import_weights(model, path, &|name| Some(layout.source(name)), &|_| false)
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
    let (file, metadata) = parse_safetensors(path, &bytes)?;
    let mut out = HashMap::new();
    for (name, view) in file.tensors() {
        let values = from_bytes::<E>(view.data(), view.dtype()).ok_or_else(|| Error::BadFile {
            path: path.into(),
            reason: format!("{name} is {:?}, expected a floating-point dtype", view.dtype()),
        })?;
        out.insert(name, values);
    }
    Ok((out, metadata))
}

/// Reads only the metadata of a safetensors file: its header, not its tensors (a model of
/// hundreds of megabytes is not read to learn its name). The tensors are checked when loaded.
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    let bad = |reason: String| Error::BadFile { path: path.into(), reason };
    let mut file = std::fs::File::open(path).map_err(Error::io(path))?;
    let len = file.metadata().map_err(Error::io(path))?.len();
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix)
        .map_err(|_| bad(format!("not a safetensors file: {len} bytes, too short for a header")))?;
    let n = u64::from_le_bytes(prefix);
    if n > 100_000_000 || 8 + n > len {
        return Err(bad(format!(
            "truncated or not a safetensors file: the file is {len} bytes, its header claims {n} bytes"
        )));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(Error::io(path))?;
    let json: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|_| bad("a corrupt safetensors header: not the JSON object of tensors it must be".into()))?;
    let Some(metadata) = json.get("__metadata__") else { return Ok(HashMap::new()) };
    metadata
        .as_object()
        .ok_or_else(|| bad("its __metadata__ is not an object of strings".into()))?
        .iter()
        .map(|(k, v)| match v.as_str() {
            Some(v) => Ok((k.clone(), v.to_string())),
            None => Err(bad(format!("metadata `{k}` is not a string"))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::same_layout;

    #[test]
    fn layouts_match_when_one_shape_merges_adjacent_axes_of_the_other() {
        assert!(same_layout(&[4, 8, 32], &[32, 32])); // (H, HD, D) is [H * HD, D]
        assert!(same_layout(&[32, 4, 8], &[32, 32])); // (D, H, HD) is [D, H * HD]
        assert!(same_layout(&[32, 32], &[4, 8, 32]));
        assert!(same_layout(&[1, 16], &[16]) && same_layout(&[], &[1]));
        assert!(!same_layout(&[16, 64], &[64, 16]), "a transposed matrix is another layout");
        assert!(!same_layout(&[32, 4, 8], &[4, 8, 32]), "(D, H, HD) is not (H, HD, D)");
        assert!(!same_layout(&[4, 8], &[4, 9]));
    }
}
