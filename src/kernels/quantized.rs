//! Matrix products that read quantized weights (llama.cpp's blocks) directly: the weights stay
//! at 4-8 bits per value in memory and are expanded in registers as the products run, so a
//! generated token reads a fifth of what the fp32 copy costs.
//!
//! A [`QuantMatrix`] holds the `n` columns of a product's right operand (`k` values each) as
//! rows of blocks of 32. Blocks of `x = d * q + m` (Q4_0, whose `m` is `-8 d`, and Q4_1) and of
//! `x = d * q` (Q8_0) are repacked once: their values contiguous, their scales as f32 beside
//! them, so the inner loop is a load, a widening and a fused multiply-add. Other block types
//! (the K-quants) keep their bytes and are decoded a row at a time by the function given.
//!
//! Few rows (generating: one token per sequence) take fused dot products; more rows (a prompt)
//! are bound by arithmetic rather than by reading weights, and multiply by the f32 copy: a
//! decoded panel through gemm measured 0.88x of that on SmolLM2's 126-token prefill.

use super::cpu::Layout;
use std::any::TypeId;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

/// Values per block.
pub(crate) const BLOCK: usize = 32;

/// Decodes one row's bytes into its `k` values.
pub(crate) type RowDecoder = Box<dyn Fn(&[u8], &mut [f32]) + Send + Sync>;

/// How a matrix's values are stored.
enum Storage {
    /// `value = d * q + m`, `q` in 0..16: two 4-bit values per byte, the low nibbles the first
    /// 16 values of a block, the high nibbles the last 16.
    Nibbles { qs: Vec<u8>, d: Vec<f32>, m: Vec<f32> },
    /// `value = d * q`, `q` a signed byte.
    Bytes { qs: Vec<i8>, d: Vec<f32> },
    /// Any other block format: each row's bytes, and how to decode them.
    Rows { data: Vec<u8>, row_bytes: usize, decode: RowDecoder },
}

/// The `n` columns of a product's right operand, each of `k` values, quantized.
pub(crate) struct QuantMatrix {
    /// Columns of the right operand (rows of blocks here).
    n: usize,
    /// Values per column.
    k: usize,
    storage: Storage,
}

impl QuantMatrix {
    /// Q4_0 (`scale_min = false`: blocks of an f16 `d` and 16 bytes) or Q4_1 (`true`: f16 `d`
    /// and `m`, 16 bytes) rows, as llama.cpp writes them. `None` unless `data` is `n` rows of
    /// `k / 32` whole blocks.
    pub(crate) fn nibbles(n: usize, k: usize, data: &[u8], scale_min: bool) -> Option<Self> {
        let block_bytes = if scale_min { 20 } else { 18 };
        let blocks = whole_blocks(n, k, data, block_bytes)?;
        let (mut qs, mut d, mut m) =
            (Vec::with_capacity(blocks * 16), Vec::with_capacity(blocks), Vec::with_capacity(blocks));
        for b in data.chunks_exact(block_bytes) {
            let scale = f16(&b[0..2]);
            d.push(scale);
            m.push(if scale_min { f16(&b[2..4]) } else { -8.0 * scale });
            qs.extend_from_slice(&b[block_bytes - 16..]);
        }
        Some(Self { n, k, storage: Storage::Nibbles { qs, d, m } })
    }

    /// Q8_0 rows (blocks of an f16 `d` and 32 signed bytes). `None` unless whole blocks.
    pub(crate) fn bytes(n: usize, k: usize, data: &[u8]) -> Option<Self> {
        let blocks = whole_blocks(n, k, data, 34)?;
        let (mut qs, mut d) = (Vec::with_capacity(blocks * BLOCK), Vec::with_capacity(blocks));
        for b in data.chunks_exact(34) {
            d.push(f16(&b[0..2]));
            qs.extend(b[2..].iter().map(|&q| q as i8));
        }
        Some(Self { n, k, storage: Storage::Bytes { qs, d } })
    }

    /// Rows of `row_bytes` bytes each that `decode` turns into `k` values. `None` unless
    /// `data` holds exactly `n` of them.
    pub(crate) fn rows(n: usize, k: usize, data: Vec<u8>, row_bytes: usize, decode: RowDecoder) -> Option<Self> {
        (n.checked_mul(row_bytes) == Some(data.len()) && k > 0).then(|| Self {
            n,
            k,
            storage: Storage::Rows { data, row_bytes, decode },
        })
    }

    /// Bytes held.
    pub(crate) fn bytes_held(&self) -> usize {
        match &self.storage {
            Storage::Nibbles { qs, d, m } => qs.len() + 4 * (d.len() + m.len()),
            Storage::Bytes { qs, d } => qs.len() + 4 * d.len(),
            Storage::Rows { data, .. } => data.len(),
        }
    }

    /// Column `j`'s `k` values, decoded into `out`.
    pub(crate) fn decode(&self, j: usize, out: &mut [f32]) {
        let (k, per_row) = (self.k, self.k / BLOCK);
        match &self.storage {
            Storage::Nibbles { qs, d, m } => {
                for b in 0..per_row {
                    let (q, d, m) = (&qs[(j * per_row + b) * 16..][..16], d[j * per_row + b], m[j * per_row + b]);
                    let y = &mut out[b * BLOCK..][..BLOCK];
                    for i in 0..16 {
                        y[i] = d * f32::from(q[i] & 0x0f) + m;
                        y[i + 16] = d * f32::from(q[i] >> 4) + m;
                    }
                }
            }
            Storage::Bytes { qs, d } => {
                for b in 0..per_row {
                    let (q, d) = (&qs[(j * per_row + b) * BLOCK..][..BLOCK], d[j * per_row + b]);
                    for (y, &q) in out[b * BLOCK..][..BLOCK].iter_mut().zip(q) {
                        *y = d * f32::from(q);
                    }
                }
            }
            Storage::Rows { data, row_bytes, decode } => decode(&data[j * row_bytes..][..*row_bytes], &mut out[..k]),
        }
    }

    /// `out[c] = x · column(cols.start + c)` for a row `x` of `k` values; `sums` holds the sum
    /// of each block of 32 values of `x`, `scratch` room for `k` values.
    fn dots(&self, x: &[f32], sums: &[f32], cols: Range<usize>, out: &mut [f32], scratch: &mut [f32]) {
        match &self.storage {
            Storage::Rows { .. } => {
                for (o, j) in out.iter_mut().zip(cols) {
                    self.decode(j, scratch);
                    *o = super::simd_run(Dot { x, w: scratch });
                }
            }
            storage => super::simd_run(Dots { storage, per_row: self.k / BLOCK, x, sums, cols, out }),
        }
    }

    /// Whether this matrix is the right operand `(k, n)` of `layout`: its columns, stored
    /// row-major (`(in, out)` weights) or column-major (a table read transposed).
    fn fits(&self, layout: Layout) -> bool {
        let (k, n) = (self.k, self.n);
        layout.rows == k && layout.cols == n && (layout.strides == [n, 1] || layout.strides == [1, k])
    }
}

/// The dot products of one row with columns of a repacked matrix, compiled for the CPU's widest
/// SIMD instructions (see [`super::simd_run`]).
struct Dots<'a> {
    storage: &'a Storage,
    per_row: usize,
    x: &'a [f32],
    sums: &'a [f32],
    cols: Range<usize>,
    out: &'a mut [f32],
}

impl super::Vectorized for Dots<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Dots { storage, per_row, x, sums, cols, out } = self;
        for (o, j) in out.iter_mut().zip(cols) {
            let base = j * per_row;
            // Sixteen lanes: value i and value i + 16 of every block meet in lane i.
            let mut acc = [0f32; 16];
            let mut offsets = 0f32;
            match storage {
                Storage::Nibbles { qs, d, m } => {
                    for b in 0..per_row {
                        let (q, xb) = (&qs[(base + b) * 16..][..16], &x[b * BLOCK..][..BLOCK]);
                        let scale = d[base + b];
                        for i in 0..16 {
                            let pair = xb[i] * f32::from(q[i] & 0x0f) + xb[i + 16] * f32::from(q[i] >> 4);
                            acc[i] += scale * pair;
                        }
                        offsets += m[base + b] * sums[b];
                    }
                }
                Storage::Bytes { qs, d } => {
                    for b in 0..per_row {
                        let (q, xb) = (&qs[(base + b) * BLOCK..][..BLOCK], &x[b * BLOCK..][..BLOCK]);
                        let scale = d[base + b];
                        for i in 0..16 {
                            acc[i] += scale * (xb[i] * f32::from(q[i]) + xb[i + 16] * f32::from(q[i + 16]));
                        }
                    }
                }
                Storage::Rows { .. } => unreachable!("decoded rows take `Dot`"),
            }
            *o = acc.iter().sum::<f32>() + offsets;
        }
    }
}

/// `x · w`, in sixteen lanes.
struct Dot<'a> {
    x: &'a [f32],
    w: &'a [f32],
}

impl super::Vectorized for Dot<'_> {
    type Output = f32;

    #[inline(always)]
    fn run(self) -> f32 {
        let mut acc = [0f32; 16];
        for (xs, ws) in self.x.chunks(16).zip(self.w.chunks(16)) {
            for ((a, &x), &w) in acc.iter_mut().zip(xs).zip(ws) {
                *a += x * w;
            }
        }
        acc.iter().sum::<f32>()
    }
}

fn f16(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// The number of blocks when `data` is `n` rows of `k / 32` blocks of `block_bytes`.
fn whole_blocks(n: usize, k: usize, data: &[u8], block_bytes: usize) -> Option<usize> {
    let blocks = n.checked_mul(k / BLOCK)?;
    (k > 0 && k.is_multiple_of(BLOCK) && blocks.checked_mul(block_bytes) == Some(data.len())).then_some(blocks)
}

/// `dst[r][c] = lhs_row(r) · column(c)` for the rows and columns given: the few-rows path.
/// `row(r, buf)` fills `buf` with row `r` of the left operand and returns it.
pub(crate) fn fused_tile(
    q: &QuantMatrix,
    rows: Range<usize>,
    cols: Range<usize>,
    mut row: impl FnMut(usize, &mut [f32]),
    tile: &mut [f32],
) {
    let k = q.k;
    let mut x = vec![0f32; k];
    let mut scratch = if matches!(q.storage, Storage::Rows { .. }) { vec![0f32; k] } else { Vec::new() };
    let mut sums = vec![0f32; k / BLOCK];
    let width = cols.len();
    for (i, r) in rows.enumerate() {
        row(r, &mut x);
        for (s, xb) in sums.iter_mut().zip(x.chunks_exact(BLOCK)) {
            *s = xb.iter().sum();
        }
        q.dots(&x, &sums, cols.clone(), &mut tile[i * width..(i + 1) * width], &mut scratch);
    }
}

/// The quantized matrices of one model, by the start address of the f32 weight each stands for.
#[derive(Default)]
pub(crate) struct Registry {
    matrices: HashMap<usize, (usize, Arc<QuantMatrix>)>,
    /// Products that have read a matrix of this registry.
    served: std::sync::atomic::AtomicUsize,
}

impl Registry {
    /// Registers `q` for the weight whose buffer is `weight` (which it must fit: see
    /// [`QuantMatrix::fits`]).
    pub(crate) fn add(&mut self, weight: &[f32], q: QuantMatrix) {
        self.matrices.insert(weight.as_ptr() as usize, (weight.len(), Arc::new(q)));
    }

    /// How many weights are registered.
    pub(crate) fn len(&self) -> usize {
        self.matrices.len()
    }

    /// How many products have read one of the matrices.
    pub(crate) fn served(&self) -> usize {
        self.served.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes their quantized blocks hold.
    pub(crate) fn bytes(&self) -> usize {
        self.matrices.values().map(|(_, q)| q.bytes_held()).sum()
    }
}

thread_local! {
    static ACTIVE: RefCell<Option<Arc<Registry>>> = const { RefCell::new(None) };
}

/// While alive, products on this thread whose right operand is a registered weight read its
/// quantized matrix instead (only this registry's: an inner scope hides an outer one).
pub(crate) struct Scope(Option<Arc<Registry>>);

impl Scope {
    pub(crate) fn enter(registry: Arc<Registry>) -> Self {
        Self(ACTIVE.with(|active| active.replace(Some(registry))))
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let _ = ACTIVE.try_with(|active| *active.borrow_mut() = self.0.take());
    }
}

/// The quantized matrix standing for the right operand `data` viewed as `layout`, when a
/// [`Scope`] is open on this thread, `E` is f32 and `data` is a registered weight, whole.
pub(crate) fn lookup<E: 'static>(data: &[E], layout: Layout) -> Option<Arc<QuantMatrix>> {
    if TypeId::of::<E>() != TypeId::of::<f32>() {
        return None;
    }
    let registry = ACTIVE.try_with(|active| active.borrow().clone()).ok().flatten()?;
    let (len, q) = registry.matrices.get(&(data.as_ptr() as usize))?;
    let found = (*len == data.len() && q.fits(layout)).then(|| Arc::clone(q));
    if found.is_some() {
        registry.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Q4_1 and Q8_0 blocks of random values for `n` columns of `k`.
    fn blocks(n: usize, k: usize, q8: bool, seed: u64) -> Vec<u8> {
        let mut s = seed;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 33) as u32
        };
        let mut out = Vec::new();
        for _ in 0..n * k / BLOCK {
            out.extend(half::f16::from_f32(0.01 + (next() % 100) as f32 * 1e-3).to_le_bytes());
            if q8 {
                out.extend((0..32).map(|_| next() as u8));
            } else {
                out.extend(half::f16::from_f32(-0.05 * (next() % 7) as f32).to_le_bytes());
                out.extend((0..16).map(|_| next() as u8));
            }
        }
        out
    }

    #[test]
    fn fused_dots_equal_dots_of_the_decoded_columns() {
        let (n, k) = (37, 96);
        for q8 in [false, true] {
            let raw = blocks(n, k, q8, 5);
            let q = if q8 { QuantMatrix::bytes(n, k, &raw) } else { QuantMatrix::nibbles(n, k, &raw, true) }.unwrap();
            let xs: Vec<f32> = (0..3 * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
            let mut tile = vec![0f32; 3 * 20];
            fused_tile(&q, 0..3, 10..30, |r, buf| buf.copy_from_slice(&xs[r * k..(r + 1) * k]), &mut tile);
            let mut column = vec![0f32; k];
            for r in 0..3 {
                for (c, j) in (10..30).enumerate() {
                    q.decode(j, &mut column);
                    let want: f32 = xs[r * k..(r + 1) * k].iter().zip(&column).map(|(x, w)| x * w).sum();
                    let got = tile[r * 20 + c];
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "q8 {q8} row {r} col {j}: {got} vs {want}"
                    );
                }
            }
        }
        // Rows that are not whole blocks are refused.
        assert!(QuantMatrix::bytes(2, 40, &[0; 68]).is_none());
        assert!(QuantMatrix::nibbles(2, 32, &[0; 39], true).is_none());
    }
}
