//! GGUF, the file format of llama.cpp (version 2 and 3): a header of typed metadata (the
//! architecture's hyperparameters, the tokenizer's vocabulary and merges, the chat template),
//! a table of tensors, then their data, each tensor aligned and stored in one of ggml's types:
//! plain floats or blocks of quantized weights with their scales.
//!
//! [`Gguf::open`] reads the header and the table only; a tensor's data is read when it is asked
//! for ([`Gguf::read_f32`]), so opening a file of gigabytes costs what its header costs. Every
//! count and length in the header is checked against the file's size before anything is
//! allocated from it, so a corrupt or hostile file is an error, never a panic or an abort.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGUF";
/// Tensor data is aligned to this many bytes unless `general.alignment` says otherwise.
const DEFAULT_ALIGNMENT: u64 = 32;
/// At most this many dimensions per tensor (ggml's limit).
const MAX_DIMS: u32 = 4;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// `uint8`.
    U8(u8),
    /// `int8`.
    I8(i8),
    /// `uint16`.
    U16(u16),
    /// `int16`.
    I16(i16),
    /// `uint32`.
    U32(u32),
    /// `int32`.
    I32(i32),
    /// `uint64`.
    U64(u64),
    /// `int64`.
    I64(i64),
    /// `float32`.
    F32(f32),
    /// `float64`.
    F64(f64),
    /// `bool`.
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// An array of values of one type.
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The value as a bool, when it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The value as an unsigned integer, when it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, when it is a float or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// How a tensor's elements are stored: ggml's type ids, with their block sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)] // ggml's own names: Q4_K, as llama.cpp and every model card write them
#[non_exhaustive]
pub enum GgmlType {
    /// 32-bit floats.
    F32,
    /// IEEE half floats.
    F16,
    /// bfloat16.
    BF16,
    /// Blocks of 32: an f16 scale `d` and 32 4-bit values `q`; `x = d * (q - 8)`.
    Q4_0,
    /// Blocks of 32: f16 `d` and minimum `m`, 32 4-bit `q`; `x = d * q + m`.
    Q4_1,
    /// Blocks of 32: f16 `d`, 32 5-bit `q` (4 low bits packed, high bits apart); `x = d * (q - 16)`.
    Q5_0,
    /// Blocks of 32: f16 `d` and `m`, 32 5-bit `q`; `x = d * q + m`.
    Q5_1,
    /// Blocks of 32: f16 `d` and 32 signed bytes `q`; `x = d * q`.
    Q8_0,
    /// Super-blocks of 256: f16 `d` and `dmin`, eight 6-bit scales and minimums (one per 32
    /// values), 4-bit `q`; `x = d * scale * q - dmin * min`.
    Q4_K,
    /// As [`Self::Q4_K`] with 5-bit `q` (the fifth bits in 32 bytes of their own).
    Q5_K,
    /// Super-blocks of 256: 6-bit `q` (4 low bits and 2 high bits apart), sixteen signed 8-bit
    /// scales (one per 16 values), f16 `d`; `x = d * scale * (q - 32)`.
    Q6_K,
    /// A type this version recognises but does not read yet (Q8_1, Q2_K, Q3_K, Q8_K), by id and name.
    Other(u32, &'static str),
}

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            9 => Self::Other(9, "Q8_1"),
            10 => Self::Other(10, "Q2_K"),
            11 => Self::Other(11, "Q3_K"),
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            15 => Self::Other(15, "Q8_K"),
            _ => return None,
        })
    }

    /// ggml's name of the type (`Q4_1`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q4_K => "Q4_K",
            Self::Q5_K => "Q5_K",
            Self::Q6_K => "Q6_K",
            Self::Other(_, name) => name,
        }
    }

    /// Elements per block and bytes per block.
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Other(9, _) => (32, 36),
            Self::Other(10, _) => (256, 84),
            Self::Other(11, _) => (256, 110),
            Self::Q4_K => (256, 144),
            Self::Q5_K => (256, 176),
            Self::Q6_K => (256, 210),
            Self::Other(_, _) => (256, 292),
        }
    }
}

/// One tensor of the table: its name, shape, storage type and where its data lies.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensor {
    /// The name (`blk.0.attn_q.weight`).
    pub name: String,
    /// The shape, outermost axis first (row-major, as PyTorch writes it): GGUF lists the axes
    /// innermost first, so a `[576, 49152]` embedding in the file is `(49152, 576)` here.
    pub shape: Vec<usize>,
    /// How the elements are stored.
    pub kind: GgmlType,
    /// Offset of the data from the start of the file.
    pub offset: u64,
    /// Bytes of data.
    pub bytes: u64,
}

impl GgufTensor {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An open GGUF file: its metadata and tensor table, with the data left on disk.
#[derive(Debug, Clone)]
pub struct Gguf {
    /// Where the file is.
    pub path: PathBuf,
    /// The format version (2 or 3).
    pub version: u32,
    /// Metadata by key (`llama.block_count`, `tokenizer.ggml.tokens`, ...).
    pub metadata: BTreeMap<String, GgufValue>,
    /// The tensors, in the file's order.
    pub tensors: Vec<GgufTensor>,
}

impl Gguf {
    /// Reads the header and the tensor table of the GGUF file at `path`. An error says what is
    /// wrong and where: not GGUF, an unsupported version, a truncated header, a count or length
    /// larger than the file, a tensor whose data lies outside it.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(Error::io(path))?;
        let size = file.metadata().map_err(Error::io(path))?.len();
        let mut r = Header { inner: BufReader::new(file), at: 0, size, path };
        let magic: [u8; 4] = r.array()?;
        if &magic != MAGIC {
            return Err(r.bad(format!("not a GGUF file: it starts with {magic:?}, not \"GGUF\"")));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(r.bad(format!("GGUF version {version}; this typeformer reads versions 2 and 3")));
        }
        let tensor_count = r.u64()?;
        let kv_count = r.u64()?;
        // Each entry takes at least 8 bytes, so a count the file cannot hold is found now.
        r.fits(tensor_count.saturating_add(kv_count), 8, "entries")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = r.string()?;
            let kind = r.u32()?;
            let value = r.value(kind, 0).map_err(|e| r.context(&key, e))?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(r.bad(format!("metadata key `{key}` appears twice")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(r.bad(format!("general.alignment is {v:?}; it must be a power of two"))),
            },
        };
        let mut tensors = Vec::new();
        for _ in 0..tensor_count {
            let name = r.string()?;
            let dims = r.u32()?;
            if dims == 0 || dims > MAX_DIMS {
                return Err(r.bad(format!("tensor `{name}` has {dims} dimensions; ggml has 1 to {MAX_DIMS}")));
            }
            let mut shape = Vec::new();
            for _ in 0..dims {
                let d = r.u64()?;
                shape.push(usize::try_from(d).map_err(|_| r.bad(format!("tensor `{name}`: dimension {d}")))?);
            }
            shape.reverse();
            let id = r.u32()?;
            let kind = GgmlType::from_id(id).ok_or_else(|| {
                r.bad(format!("tensor `{name}` has ggml type {id}, which this typeformer does not know"))
            })?;
            let offset = r.u64()?;
            if !offset.is_multiple_of(alignment) {
                return Err(r.bad(format!("tensor `{name}`: data offset {offset} is not aligned to {alignment}")));
            }
            tensors.push((name, shape, kind, offset));
        }
        let data_start = r.at.div_ceil(alignment) * alignment;
        let tensors = tensors
            .into_iter()
            .map(|(name, shape, kind, offset)| {
                let elements = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
                let (per_block, block_bytes) = kind.block();
                let bytes = elements
                    .filter(|n| n.is_multiple_of(per_block) && shape.last().is_some_and(|row| row.is_multiple_of(per_block)))
                    .and_then(|n| (n / per_block).checked_mul(block_bytes))
                    .ok_or_else(|| {
                        r.bad(format!(
                            "tensor `{name}` of shape {shape:?} is not whole blocks of {per_block} {} values",
                            kind.name()
                        ))
                    })? as u64;
                let start = data_start.checked_add(offset);
                match start.and_then(|s| s.checked_add(bytes)) {
                    Some(end) if end <= size => Ok(GgufTensor { name, shape, kind, offset: data_start + offset, bytes }),
                    _ => Err(r.bad(format!(
                        "tensor `{name}`: its {bytes} bytes at offset {offset} end past the file's {size} bytes (truncated?)"
                    ))),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { path: path.into(), version, metadata, tensors })
    }

    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of tensor `name` as the file stores them (whole blocks of its type), with the
    /// tensor's entry.
    pub fn read_raw(&self, name: &str) -> Result<(&GgufTensor, Vec<u8>)> {
        let tensor = self.tensor(name).ok_or_else(|| Error::BadFile {
            path: self.path.clone(),
            reason: format!("no tensor `{name}` in the file"),
        })?;
        crate::memory::check_memory(&format!("tensor `{name}`: its bytes"), tensor.bytes as usize, 1)?;
        let mut raw = vec![0u8; tensor.bytes as usize];
        let mut file = File::open(&self.path).map_err(Error::io(&self.path))?;
        file.seek(SeekFrom::Start(tensor.offset))
            .and_then(|_| file.read_exact(&mut raw))
            .map_err(Error::io(&self.path))?;
        Ok((tensor, raw))
    }

    /// The elements of tensor `name` as f32, row-major (see [`GgufTensor::shape`]),
    /// dequantized from its blocks.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        if let Some(tensor) = self.tensor(name) {
            crate::memory::check_memory(
                &format!("tensor `{name}`: its element count"),
                tensor.len(),
                std::mem::size_of::<f32>() as u64 + tensor.bytes / tensor.len().max(1) as u64,
            )?;
        }
        let (tensor, raw) = self.read_raw(name)?;
        let mut out = vec![0f32; tensor.len()];
        dequantize(tensor.kind, &raw, &mut out).map_err(|reason| Error::BadFile {
            path: self.path.clone(),
            reason: format!("tensor `{name}`: {reason}"),
        })?;
        Ok(out)
    }
}

/// The 6-bit scale and minimum of sub-block `j` (of 8) of a Q4_K or Q5_K super-block, packed in
/// its 12 bytes: the first four pairs in the low 6 bits of bytes 0-7, the last four split
/// between the nibbles of bytes 8-11 and the top 2 bits of bytes 0-7.
fn k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Decodes `raw`, whole blocks of `kind`, into `out` (as many values as the blocks hold).
pub fn dequantize(kind: GgmlType, raw: &[u8], out: &mut [f32]) -> std::result::Result<(), String> {
    let (per_block, block_bytes) = kind.block();
    if !out.len().is_multiple_of(per_block) || raw.len() != out.len() / per_block * block_bytes {
        return Err(format!(
            "{} bytes of {} do not hold {} values ({per_block} per block of {block_bytes} bytes)",
            raw.len(),
            kind.name(),
            out.len()
        ));
    }
    let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    let blocks = raw.chunks_exact(block_bytes).zip(out.chunks_exact_mut(per_block));
    match kind {
        GgmlType::F32 => blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        GgmlType::F16 => blocks.for_each(|(b, y)| y[0] = f16(b)),
        GgmlType::BF16 => blocks.for_each(|(b, y)| y[0] = half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| {
            let d = f16(b);
            for (y, &q) in y.iter_mut().zip(&b[2..]) {
                *y = d * f32::from(q as i8);
            }
        }),
        GgmlType::Q4_0 | GgmlType::Q4_1 => blocks.for_each(|(b, y)| {
            let (d, m, qs) =
                if kind == GgmlType::Q4_0 { (f16(b), None, &b[2..]) } else { (f16(b), Some(f16(&b[2..])), &b[4..]) };
            // The low nibbles are the block's first 16 values, the high nibbles its last 16.
            for (j, &q) in qs.iter().enumerate() {
                let (lo, hi) = (f32::from(q & 0x0f), f32::from(q >> 4));
                (y[j], y[j + 16]) = match m {
                    None => (d * (lo - 8.0), d * (hi - 8.0)),
                    Some(m) => (d * lo + m, d * hi + m),
                };
            }
        }),
        GgmlType::Q5_0 | GgmlType::Q5_1 => blocks.for_each(|(b, y)| {
            let (d, m, rest) =
                if kind == GgmlType::Q5_0 { (f16(b), None, &b[2..]) } else { (f16(b), Some(f16(&b[2..])), &b[4..]) };
            // Bit j of `qh` is the fifth bit of value j.
            let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
            for (j, &q) in rest[4..].iter().enumerate() {
                let lo = u32::from(q & 0x0f) | ((qh >> j) & 1) << 4;
                let hi = u32::from(q >> 4) | ((qh >> (j + 16)) & 1) << 4;
                (y[j], y[j + 16]) = match m {
                    None => (d * (lo as f32 - 16.0), d * (hi as f32 - 16.0)),
                    Some(m) => (d * lo as f32 + m, d * hi as f32 + m),
                };
            }
        }),
        GgmlType::Q4_K | GgmlType::Q5_K => blocks.for_each(|(b, y)| {
            let (d, dmin) = (f16(b), f16(&b[2..]));
            let scales = &b[4..16];
            // Q5_K keeps the fifth bit of each value in 32 bytes before the nibbles.
            let (qh, qs) = if kind == GgmlType::Q5_K { (Some(&b[16..48]), &b[48..]) } else { (None, &b[16..]) };
            // Each 64 values: 32 bytes, low nibbles first, each half with its own scale and min.
            for chunk in 0..4 {
                let q = &qs[32 * chunk..32 * chunk + 32];
                for half in 0..2 {
                    let (scale, min) = k_scale_min(2 * chunk + half, scales);
                    let (d, m) = (d * f32::from(scale), dmin * f32::from(min));
                    let bit = 2 * chunk + half;
                    for (l, &byte) in q.iter().enumerate() {
                        let low = if half == 0 { byte & 0x0f } else { byte >> 4 };
                        let high = qh.map_or(0, |qh| ((qh[l] >> bit) & 1) << 4);
                        y[64 * chunk + 32 * half + l] = d * f32::from(low | high) - m;
                    }
                }
            }
        }),
        GgmlType::Q6_K => blocks.for_each(|(b, y)| {
            let (ql, qh, scales, d) = (&b[..128], &b[128..192], &b[192..208], f16(&b[208..]));
            // Two halves of 128 values: 64 bytes of low nibbles, 32 of high bit pairs, 8 scales.
            for half in 0..2 {
                let (ql, qh, sc) = (&ql[64 * half..], &qh[32 * half..], &scales[8 * half..]);
                let y = &mut y[128 * half..];
                for l in 0..32 {
                    let is = l / 16;
                    let q = [
                        (ql[l] & 0x0f) | (qh[l] & 3) << 4,
                        (ql[l + 32] & 0x0f) | ((qh[l] >> 2) & 3) << 4,
                        (ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4,
                        (ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4,
                    ];
                    for (k, q) in q.into_iter().enumerate() {
                        let scale = f32::from(sc[is + 2 * k] as i8);
                        y[l + 32 * k] = d * scale * f32::from(q as i8 - 32);
                    }
                }
            }
        }),
        GgmlType::Other(_, name) => return Err(format!("{name} weights are not read by this typeformer yet")),
    }
    Ok(())
}

/// The header being read: a position in the file, checked against its size.
struct Header<'a> {
    inner: BufReader<File>,
    at: u64,
    size: u64,
    path: &'a Path,
}

/// Metadata arrays nest at most this deep (arrays of arrays occur; deeper is a corrupt file).
const MAX_NESTING: usize = 4;

impl Header<'_> {
    fn bad(&self, reason: String) -> Error {
        Error::BadFile { path: self.path.into(), reason }
    }

    fn context(&self, key: &str, e: Error) -> Error {
        match e {
            Error::BadFile { reason, .. } => self.bad(format!("metadata `{key}`: {reason}")),
            other => other,
        }
    }

    /// An error unless `count` items of at least `each` bytes fit in the rest of the file.
    fn fits(&self, count: u64, each: u64, what: &str) -> Result<()> {
        let left = self.size - self.at;
        if count.checked_mul(each).is_none_or(|need| need > left) {
            return Err(self.bad(format!(
                "the header claims {count} {what} at byte {}, more than the {left} bytes left in the file",
                self.at
            )));
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut buf = [0u8; N];
        self.inner.read_exact(&mut buf).map_err(|_| {
            self.bad(format!("the header ends at byte {} of {}: the file is truncated", self.at, self.size))
        })?;
        self.at += N as u64;
        Ok(buf)
    }

    fn u32(&mut self) -> Result<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        self.fits(len, 1, "bytes of a string")?;
        let mut buf = vec![0u8; len as usize];
        self.inner.read_exact(&mut buf).map_err(|_| self.bad("a string runs past the end of the file".into()))?;
        self.at += len;
        String::from_utf8(buf).map_err(|_| self.bad(format!("a string at byte {} is not UTF-8", self.at - len)))
    }

    fn value(&mut self, kind: u32, depth: usize) -> Result<GgufValue> {
        Ok(match kind {
            0 => GgufValue::U8(self.array::<1>()?[0]),
            1 => GgufValue::I8(self.array::<1>()?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.array()?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array()?)),
            4 => GgufValue::U32(self.u32()?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array()?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.bad(format!("a bool of value {b}"))),
            },
            8 => GgufValue::String(self.string()?),
            9 if depth < MAX_NESTING => {
                let inner = self.u32()?;
                let count = self.u64()?;
                self.fits(count, 1, "array elements")?;
                let mut items = Vec::with_capacity(count.min(1 << 20) as usize);
                for _ in 0..count {
                    items.push(self.value(inner, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            9 => return Err(self.bad(format!("arrays nested more than {MAX_NESTING} deep"))),
            10 => GgufValue::U64(self.u64()?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array()?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(self.bad(format!("unknown metadata type {other}"))),
        })
    }
}
