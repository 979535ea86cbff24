//! The `unsafe` operations the fast CPU path needs, each behind a checked, safe function.
//!
//! - [`gemm_all`] (and [`gemm`], one product): gemm's kernels take raw pointers and strides.
//!   Every call first checks that each strided matrix lies inside its slice and that each
//!   destination's strides never map two elements to one address (the product writes it from
//!   several threads); distinct destinations are distinct `&mut` borrows. A call that fails a
//!   check returns `false` and writes nothing; the caller then uses dfdx's kernel. Its blocks
//!   share the products' addresses across threads, and name a slice of `E` as `f32` when `E` is
//!   `f32` (the same `TypeId`) for the AVX-512 copy of a transposed operand.
//! - [`buffer`]: dfdx 0.13 exposes neither a CPU tensor's buffer nor its strides, only element
//!   references through `Index`. Element `[0, .., 0]` sits at the buffer's start and the last
//!   element at the largest offset the view reaches, both bounds-checked by dfdx, so the slice
//!   between them is inside the buffer; the strides are read off element addresses.

use super::packed::{self, PackedMatrix};
use super::quantized::{self, QuantMatrix};
use super::{parallel, transpose};
use dfdx::shapes::{HasShape, Shape, Unit};
use dfdx::tensor::{Cpu, Tensor};
use gemm_common::Parallelism;
use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;

/// A CPU tensor's buffer, without copying, and its strides (in elements).
///
/// The slice covers every element the view reaches; `None` for an empty tensor.
pub(crate) fn buffer<S: Shape, E: Unit, T>(t: &Tensor<S, E, Cpu, T>) -> Option<(&[E], S::Concrete)> {
    let dims = t.shape().concrete();
    if dims.as_ref().contains(&0) {
        return None;
    }
    let origin = S::Concrete::default();
    let start: *const E = &t[origin];
    let address =
        |index: S::Concrete| (&t[index] as *const E as usize - start as usize) / std::mem::size_of::<E>().max(1);
    let mut strides = S::Concrete::default();
    let mut last = S::Concrete::default();
    for d in 0..S::NUM_DIMS {
        last[d] = dims[d] - 1;
        if dims[d] > 1 {
            let mut unit = origin;
            unit[d] = 1;
            strides[d] = address(unit);
        }
    }
    // `t[last]` was bounds-checked by dfdx's `Index`.
    let len = address(last) + 1;
    // SAFETY: `start` is element 0 of the tensor's `Vec` (dfdx's index of all-zeros is offset
    // 0), and `t[last]`, at offset `len - 1` of the same `Vec`, was bounds-checked, so
    // `start..start + len` is initialised memory of that `Vec`. It is only read, for as long as
    // `t` is borrowed; dfdx clones a shared buffer before writing to it (`Arc::make_mut`).
    #[allow(unsafe_code)]
    let slice = unsafe { std::slice::from_raw_parts(start, len) };
    Some((slice, strides))
}

/// A CPU tensor's elements in row-major order, without copying; `None` unless its layout is
/// dense row-major (a permuted or broadcast view) or it is empty.
pub(crate) fn dense<S: Shape, E: Unit, T>(t: &Tensor<S, E, Cpu, T>) -> Option<&[E]> {
    let (data, strides) = buffer(t)?;
    row_major(t.shape().concrete().as_ref(), strides.as_ref()).then_some(data)
}

/// Whether `strides` are the dense row-major strides of `dims` (ignoring axes of size 1, whose
/// stride is never used).
pub(crate) fn row_major(dims: &[usize], strides: &[usize]) -> bool {
    let mut expected = 1;
    for (&d, &s) in dims.iter().zip(strides).rev() {
        if d > 1 && s != expected {
            return false;
        }
        expected *= d;
    }
    true
}

/// A strided matrix view: `rows x cols`, element `(i, j)` at `i * strides[0] + j * strides[1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub rows: usize,
    pub cols: usize,
    pub strides: [usize; 2],
}

impl Layout {
    /// The transpose of the same memory.
    pub fn t(self) -> Self {
        Self { rows: self.cols, cols: self.rows, strides: [self.strides[1], self.strides[0]] }
    }

    /// Whether each row's elements are contiguous (row-major, padded or not), so that the view
    /// splits into blocks of columns.
    fn rows_contiguous(self) -> bool {
        self.strides[1] == 1 || self.cols == 1
    }

    /// One past the largest offset the view touches (0 for an empty view).
    pub fn extent(self) -> Option<usize> {
        if self.rows == 0 || self.cols == 0 {
            return Some(0);
        }
        let last =
            (self.rows - 1).checked_mul(self.strides[0])?.checked_add((self.cols - 1).checked_mul(self.strides[1])?)?;
        last.checked_add(1)
    }

    /// Whether distinct elements have distinct addresses: true for row- and column-major
    /// layouts (padded or not), false for broadcasts (a zero stride) and overlapping views.
    pub fn injective(self) -> bool {
        let [r, c] = self.strides;
        if self.rows <= 1 && self.cols <= 1 {
            return true;
        }
        if self.rows <= 1 {
            return c >= 1;
        }
        if self.cols <= 1 {
            return r >= 1;
        }
        (c >= 1 && r >= self.cols.saturating_mul(c)) || (r >= 1 && c >= self.rows.saturating_mul(r))
    }

    fn fits(self, len: usize) -> bool {
        self.extent().is_some_and(|end| end <= len) && self.strides.iter().all(|&s| s <= isize::MAX as usize)
    }
}

/// Whether [`gemm`] computes in `E` (f32 and f64); other dtypes use dfdx's kernels.
pub(crate) fn supports<E: 'static>() -> bool {
    TypeId::of::<E>() == TypeId::of::<f32>() || TypeId::of::<E>() == TypeId::of::<f64>()
}

/// A pointer the blocks of one product share across threads.
#[derive(Clone, Copy)]
struct Shared<E>(*mut E);
// SAFETY: it only carries an address between threads; every access through it happens in
// `Operands`' unsafe blocks (`block`, `rhs`), whose conditions (checked bounds, disjoint
// destination elements, read-only operands) hold on every thread.
#[allow(unsafe_code)]
unsafe impl<E> Send for Shared<E> {}
#[allow(unsafe_code)]
unsafe impl<E> Sync for Shared<E> {}

impl<E> Shared<E> {
    /// The address `offset` elements on (a method, so closures capture the whole `Shared`).
    fn offset(self, offset: usize) -> *mut E {
        self.0.wrapping_add(offset)
    }
}

/// How a pool product is split into tasks: blocks of up to `rows` destination rows by up to
/// `cols` columns, each computed by gemm on one thread, the blocks spread over the threads by
/// [`parallel::for_each`] (the calling thread among them).
///
/// For a row-major destination gemm transposes the problem, so the right operand (projection
/// weights, a tied embedding table) becomes the left one, which it repacks in panels. With few
/// destination rows (tokens; in the backward pass also the input width of a weight's gradient,
/// `xᵀ g`) gemm's own threads split the work along the rows, so every thread repacked the whole
/// weight matrix. Blocks of columns make each thread repack only its own share of the weights,
/// and narrow blocks (64 columns, one gemm panel; wider when a product has more than 8 blocks
/// per thread's worth of columns, and fewer when it has little work) let the threads balance
/// when another process slows a core: on the encoder's shapes (128 rows) 64-column blocks ran
/// 1.1-1.25x faster than two halves, which ran 1.05-1.15x faster than gemm's threading, in
/// alternating runs; with up to 768 rows, MiniLM's batch of 32 sentences (576 tokens) embedded
/// 1.16x faster. Products with more rows (a GPT training batch of 1024 tokens) are also split
/// into blocks of up to 512 rows: in a scratch program on the GPT's shapes, 512 x 64 and
/// 512 x 128 blocks ran within noise of gemm's own threading (180-199 GFLOP/s), which would
/// leave the calling thread idle. A narrow product (few column blocks for the threads, as a
/// small vocabulary's logits or a narrow weight's gradient `xᵀ g`) is split along its rows too,
/// down to blocks of 16 rows, so that every thread gets a share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Split {
    rows: usize,
    cols: usize,
}

impl Split {
    fn of(m: usize, k: usize, n: usize, threads: usize) -> Self {
        const FEW_ROWS: usize = 768;
        const ROW_BLOCK: usize = 512;
        const MIN_ROWS: usize = 16;
        const MIN_BLOCK_WORK: usize = 1 << 19; // multiply-adds below which a task costs more than it saves
        if threads < 2 {
            return Split { rows: m, cols: n };
        }
        let tasks = (m.saturating_mul(k).saturating_mul(n) / MIN_BLOCK_WORK).max(1); // at most
        let mut row_blocks = if m > FEW_ROWS { m.div_ceil(ROW_BLOCK) } else { 1 };
        let col_blocks = n.div_ceil(packed::BLOCK_COLS).min(tasks / row_blocks).min(threads * 8).max(1);
        let wanted = (2 * threads).min(tasks);
        if row_blocks * col_blocks < wanted {
            row_blocks = row_blocks.max(wanted.div_ceil(col_blocks).min(m.div_ceil(MIN_ROWS)));
        }
        Split { rows: m.div_ceil(row_blocks), cols: n.div_ceil(col_blocks) }
    }

    /// The blocks' row and column ranges, column block after column block.
    fn blocks(self, m: usize, n: usize) -> impl Iterator<Item = (Range<usize>, Range<usize>)> {
        (0..n)
            .step_by(self.cols)
            .flat_map(move |c| self.row_blocks(m).map(move |rows| (rows, c..(c + self.cols).min(n))))
    }

    /// The row ranges of the blocks of an `m`-row product.
    fn row_blocks(self, m: usize) -> impl Iterator<Item = Range<usize>> {
        (0..m).step_by(self.rows).map(move |r| r..(r + self.rows).min(m))
    }
}

/// Where [`gemm`] and [`gemm_all`] run.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Threads {
    /// Split across the threads (large products).
    Pool,
    /// On the calling thread (one product per task of an outer parallel loop).
    Caller,
}

/// One product `dst (+)= lhs x rhs` on strided views: `dst` is overwritten, or added to when
/// `accumulate`.
pub(crate) struct Product<'a, E> {
    pub dst: &'a mut [E],
    pub dst_layout: Layout,
    pub accumulate: bool,
    pub lhs: &'a [E],
    pub lhs_layout: Layout,
    pub rhs: &'a [E],
    pub rhs_layout: Layout,
}

impl<E: num_traits::Float + 'static> Product<'_, E> {
    /// Whether gemm may run it: a supported dtype, shapes that agree, views inside their
    /// slices, and a destination whose elements have distinct addresses.
    fn valid(&self) -> bool {
        let d = self.dst_layout;
        operands_valid::<E>(self.lhs, self.lhs_layout, self.rhs, self.rhs_layout)
            && d.rows == self.lhs_layout.rows
            && d.cols == self.rhs_layout.cols
            && d.fits(self.dst.len())
            && d.injective()
    }

    /// Rewrites a product with a column-major destination as the same product transposed,
    /// `dstᵀ = rhsᵀ lhsᵀ`, whose destination is row-major (a tied embedding table's gradient is
    /// written through the transposed view the forward pass read), so that it splits into
    /// column blocks like any other.
    fn orient(&mut self) {
        let d = self.dst_layout;
        if !d.rows_contiguous() && d.t().rows_contiguous() {
            self.dst_layout = d.t();
            std::mem::swap(&mut self.lhs, &mut self.rhs);
            (self.lhs_layout, self.rhs_layout) = (self.rhs_layout.t(), self.lhs_layout.t());
        }
    }

    /// `k == 0`: the product is zero, so only an overwritten destination changes.
    fn write_empty_sum(&mut self) {
        if !self.accumulate {
            let [rs, cs] = self.dst_layout.strides;
            for i in 0..self.dst_layout.rows {
                for j in 0..self.dst_layout.cols {
                    self.dst[i * rs + j * cs] = E::zero();
                }
            }
        }
    }
}

/// Whether gemm may read `lhs x rhs`: a supported dtype, shapes that agree, views inside their
/// slices.
fn operands_valid<E: 'static>(lhs: &[E], lhs_layout: Layout, rhs: &[E], rhs_layout: Layout) -> bool {
    supports::<E>() && rhs_layout.rows == lhs_layout.cols && lhs_layout.fits(lhs.len()) && rhs_layout.fits(rhs.len())
}

/// One product into a new buffer, `lhs x rhs` with `bias` (one element per column) added to
/// every row when given: see [`gemm_new`].
pub(crate) struct NewProduct<'a, E> {
    pub lhs: &'a [E],
    pub lhs_layout: Layout,
    pub rhs: &'a [E],
    pub rhs_layout: Layout,
    pub bias: Option<&'a [E]>,
}

/// What a block does with the destination before adding its product.
#[derive(Clone, Copy)]
enum Init<E> {
    /// Adds to what it holds.
    Accumulate,
    /// Overwrites it.
    Overwrite,
    /// It is fresh memory, dense and row-major: the block first writes the bias (`n` elements)
    /// into each of its rows, or zeros, then adds the product.
    Fresh(Option<Shared<E>>),
}

/// Raw addresses of one valid product, which its blocks share across threads. Made and used
/// only inside [`gemm_all`] and [`gemm_new`], while the product's borrows are held (and, for a
/// new buffer, its allocation).
#[derive(Clone, Copy)]
struct Operands<E> {
    dst: Shared<E>,
    lhs: Shared<E>,
    rhs: Shared<E>,
    rhs_len: usize,
    dst_layout: Layout,
    lhs_layout: Layout,
    rhs_layout: Layout,
    init: Init<E>,
}

impl<E: num_traits::Float + 'static> Operands<E> {
    fn of(p: &mut Product<'_, E>) -> Self {
        Operands {
            dst: Shared(p.dst.as_mut_ptr()),
            lhs: Shared(p.lhs.as_ptr().cast_mut()),
            rhs: Shared(p.rhs.as_ptr().cast_mut()),
            rhs_len: p.rhs.len(),
            dst_layout: p.dst_layout,
            lhs_layout: p.lhs_layout,
            rhs_layout: p.rhs_layout,
            init: if p.accumulate { Init::Accumulate } else { Init::Overwrite },
        }
    }

    /// The product's right operand, read-only.
    fn rhs(&self) -> &[E] {
        // SAFETY: `rhs` and `rhs_len` are the address and length of the product's `rhs` slice,
        // still borrowed (see `Operands`), which nothing writes while the product runs (its
        // destination is a distinct `&mut` borrow or a new buffer).
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(self.rhs.0, self.rhs_len)
        }
    }

    /// Row `r` of the left operand, as f32, into `out` (`k` elements).
    fn lhs_row(&self, r: usize, out: &mut [f32]) {
        let l = self.lhs_layout;
        assert!(r < l.rows && out.len() == l.cols, "a row inside the left operand");
        for (c, o) in out.iter_mut().enumerate() {
            // SAFETY: `r` and `c` are inside the left operand's layout (checked above), which
            // `operands_valid` checked fits its slice, still borrowed and only read.
            #[allow(unsafe_code)]
            let v = unsafe { *self.lhs.offset(r * l.strides[0] + c * l.strides[1]) };
            *o = v.to_f32().unwrap_or(f32::NAN);
        }
    }

    /// Rows `rows` by columns `cols` of the destination set to `tile` (row-major, `rows.len()`
    /// by `cols.len()`), added to what they hold when accumulating, to the bias of a fresh one.
    fn write_tile(&self, rows: Range<usize>, cols: Range<usize>, tile: &[f32]) {
        let d = self.dst_layout;
        assert!(
            rows.end <= d.rows && cols.end <= d.cols && tile.len() == rows.len() * cols.len(),
            "a tile inside the destination"
        );
        for (i, r) in rows.enumerate() {
            for (c, col) in cols.clone().enumerate() {
                // (`lookup` finds matrices for f32 products only: this conversion is a copy.)
                let v = E::from(tile[i * cols.len() + c]).unwrap_or(E::nan());
                let at = self.dst.offset(r * d.strides[0] + col * d.strides[1]);
                // SAFETY: `r` and `col` are inside the destination (checked above): a unique
                // borrow whose layout `Product::valid` checked, or a fresh dense row-major buffer
                // of `d.rows * d.cols` elements (`gemm_new`); the tasks of one product write
                // disjoint elements, so no other thread writes `at`. A fresh element is written
                // before it is ever read; a bias holds `d.cols` elements and is only read.
                #[allow(unsafe_code)]
                unsafe {
                    match self.init {
                        Init::Accumulate => *at = *at + v,
                        Init::Overwrite => *at = v,
                        Init::Fresh(Some(bias)) => at.write(*bias.offset(col) + v),
                        Init::Fresh(None) => at.write(v),
                    }
                }
            }
        }
    }

    /// Whether the right operand is stored transposed (its columns contiguous) with enough
    /// rows for a full tile: [`Task::Transposed`] copies it into row-major blocks first.
    fn transposed_rhs(&self) -> bool {
        let r = self.rhs_layout;
        r.strides[0] == 1 && r.strides[1] > 1 && r.cols > 1 && r.rows >= 16
    }

    /// Rows `rows` by columns `cols` of the product, by gemm on this thread (or on gemm's own
    /// threads, with `parallelism`). `block`, when given, holds the right operand's columns
    /// `cols` (all its rows) in place of the right operand itself.
    fn block(self, rows: Range<usize>, cols: Range<usize>, block: Option<(&[E], Layout)>, parallelism: Parallelism) {
        let s = |x: usize| x as isize; // checked by `operands_valid`: every stride fits in isize
        let (d, l) = (self.dst_layout, self.lhs_layout);
        let (rhs, r) = match block {
            Some((data, layout)) => {
                // A block made from this product's right operand: the same rows, these columns.
                assert!(
                    layout.rows == self.rhs_layout.rows
                        && layout.cols == cols.len()
                        && cols.end <= self.rhs_layout.cols
                        && layout.fits(data.len()),
                    "a block of the right operand does not match its product"
                );
                (data.as_ptr(), layout)
            }
            None => (self.rhs.offset(cols.start * self.rhs_layout.strides[1]).cast_const(), self.rhs_layout),
        };
        assert!(rows.end <= d.rows && cols.end <= d.cols && !rows.is_empty() && !cols.is_empty());
        let read_dst = match self.init {
            Init::Accumulate => true,
            Init::Overwrite => false,
            Init::Fresh(bias) => {
                for row in rows.clone() {
                    let at = self.dst.offset(row * d.strides[0] + cols.start);
                    // SAFETY: a fresh destination is a dense row-major allocation of
                    // `d.rows * d.cols` elements (`gemm_new`), so `cols` of `row` lie inside it,
                    // and only this block writes them; a bias holds `d.cols` elements (checked
                    // there) and is only read. Writing (not reading) uninitialised memory is
                    // allowed, and after this every element of the block is initialised.
                    #[allow(unsafe_code)]
                    unsafe {
                        match bias {
                            Some(bias) => std::ptr::copy_nonoverlapping(bias.offset(cols.start), at, cols.len()),
                            None => std::ptr::write_bytes(at, 0, cols.len()),
                        }
                    }
                }
                true
            }
        };
        if l.cols == 0 {
            return; // an empty sum: a new buffer holds its bias or zeros, nothing else changes
        }
        // SAFETY: the product these addresses come from passed `operands_valid` (and, when it
        // writes into a borrowed slice, `Product::valid`) and is still borrowed: `E` is f32/f64,
        // which `real_gemm` implements; the rows and columns are inside the product (checked
        // above), so every offset the block reads or writes is inside its slice or buffer; the
        // destination is a unique borrow whose elements have distinct addresses, or a new dense
        // buffer, and the blocks of one product cover disjoint sets of its elements, so no two
        // threads write one address; a new buffer's block was initialised above before gemm
        // reads it; `lhs` and `rhs` are only read. A `block` replacing the right operand is a
        // live slice that fits its layout (checked above).
        #[allow(unsafe_code)]
        unsafe {
            real_gemm(
                rows.len(),
                cols.len(),
                l.cols,
                self.dst.offset(rows.start * d.strides[0] + cols.start * d.strides[1]),
                s(d.strides[1]),
                s(d.strides[0]),
                read_dst,
                self.lhs.offset(rows.start * l.strides[0]),
                s(l.strides[1]),
                s(l.strides[0]),
                rhs,
                s(r.strides[1]),
                s(r.strides[0]),
                parallelism,
            );
        }
    }
}

/// `dst (+)= lhs x rhs` on strided views, on the threads or the calling thread: `dst` is
/// overwritten, or added to when `accumulate`. Returns `false`, touching nothing, when the dtype is not
/// supported, the shapes disagree, a view reaches outside its slice or `dst` overlaps itself.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<E: num_traits::Float + Send + Sync + 'static>(
    dst: &mut [E],
    dst_layout: Layout,
    accumulate: bool,
    lhs: &[E],
    lhs_layout: Layout,
    rhs: &[E],
    rhs_layout: Layout,
    threads: Threads,
) -> bool {
    gemm_all(&mut [Product { dst, dst_layout, accumulate, lhs, lhs_layout, rhs, rhs_layout }], threads)
}

/// Several independent products (distinct destinations) as one parallel pass: the blocks of all
/// of them are spread over the threads together, so the Q/K/V projections of one input cost one
/// hand-off to the threads instead of three. Returns `false`, touching nothing, unless every
/// product is valid (see [`gemm`]).
pub(crate) fn gemm_all<E: num_traits::Float + Send + Sync + 'static>(
    products: &mut [Product<'_, E>],
    threads: Threads,
) -> bool {
    if !products.iter().all(Product::valid) {
        return false;
    }
    let threads = count(threads);
    let mut tasks = Vec::new();
    for p in products.iter_mut() {
        p.orient();
        let (m, k, n) = (p.lhs_layout.rows, p.lhs_layout.cols, p.rhs_layout.cols);
        if m == 0 || n == 0 {
            continue;
        }
        if k == 0 {
            p.write_empty_sum();
            continue;
        }
        plan(Operands::of(p), threads, &mut tasks);
    }
    run(tasks, threads);
    true
}

/// The products `lhs x rhs (+ bias)`, each into a new dense row-major `(m, n)` buffer, as one
/// parallel pass like [`gemm_all`]: each block writes its bias (or zeros) into its part of the
/// buffer just before its product adds to it, on its own thread while the part is in cache, so
/// a new buffer is neither zeroed nor seeded with the bias by the calling thread beforehand.
/// `None`, computing nothing, unless every product is valid (see [`gemm`]) and every bias has
/// `n` elements.
pub(crate) fn gemm_new<E: num_traits::Float + Send + Sync + 'static>(
    products: &[NewProduct<'_, E>],
    threads: Threads,
) -> Option<Vec<Vec<E>>> {
    let valid = |p: &NewProduct<'_, E>| {
        operands_valid::<E>(p.lhs, p.lhs_layout, p.rhs, p.rhs_layout)
            && p.bias.is_none_or(|bias| bias.len() == p.rhs_layout.cols)
            && p.lhs_layout.rows.checked_mul(p.rhs_layout.cols).is_some_and(|len| len <= isize::MAX as usize)
    };
    if !products.iter().all(valid) {
        return None;
    }
    let threads = count(threads);
    let mut outs: Vec<Vec<E>> =
        products.iter().map(|p| Vec::with_capacity(p.lhs_layout.rows * p.rhs_layout.cols)).collect();
    let mut tasks = Vec::new();
    for (p, out) in products.iter().zip(&mut outs) {
        let (m, n) = (p.lhs_layout.rows, p.rhs_layout.cols);
        if m == 0 || n == 0 {
            continue;
        }
        let operands = Operands {
            dst: Shared(out.as_mut_ptr()),
            lhs: Shared(p.lhs.as_ptr().cast_mut()),
            rhs: Shared(p.rhs.as_ptr().cast_mut()),
            rhs_len: p.rhs.len(),
            dst_layout: Layout { rows: m, cols: n, strides: [n, 1] },
            lhs_layout: p.lhs_layout,
            rhs_layout: p.rhs_layout,
            init: Init::Fresh(p.bias.map(|bias| Shared(bias.as_ptr().cast_mut()))),
        };
        plan(operands, threads, &mut tasks);
    }
    run(tasks, threads);
    for (p, out) in products.iter().zip(&mut outs) {
        // SAFETY: the capacity is `m * n`, and the blocks planned for the product cover every
        // element of its `(m, n)` buffer (each block initialises its part before the product
        // adds to it), all finished now: `run` returns after every task (or unwinds, and the
        // buffer is dropped empty).
        #[allow(unsafe_code)]
        unsafe {
            out.set_len(p.lhs_layout.rows * p.rhs_layout.cols);
        }
    }
    Some(outs)
}

/// The number of threads a product of `threads` runs on.
fn count(threads: Threads) -> usize {
    match threads {
        Threads::Pool => parallel::threads(),
        Threads::Caller => 1,
    }
}

/// Adds the blocks of one product, split for `threads` threads (see [`Split`]), to `tasks`; a
/// product whose destination does not split into blocks runs at once.
fn plan<E: num_traits::Float + Send + Sync + 'static>(operands: Operands<E>, threads: usize, tasks: &mut Vec<Task<E>>) {
    let (m, k, n) = (operands.lhs_layout.rows, operands.lhs_layout.cols, operands.rhs_layout.cols);
    if !operands.dst_layout.rows_contiguous() {
        // Neither row- nor column-major (a strided view): the whole product now, on gemm's own
        // threads (a fresh buffer is always row-major, so this only writes a borrowed one).
        let parallelism = if threads > 1 { Parallelism::Rayon(0) } else { Parallelism::None };
        operands.block(0..m, 0..n, None, parallelism);
        return;
    }
    // Few rows (generation) read the quantized blocks; more rows (a prompt) are bound by
    // arithmetic, not by reading the weights, and gemm on the f32 copy does them fastest.
    let quantized = if m <= FUSED_ROWS { quantized::lookup(operands.rhs(), operands.rhs_layout) } else { None };
    if let Some(q) = quantized {
        // Columns split over the threads, several tasks each; every task takes all the rows.
        let width = n.div_ceil(threads * 4).max(16);
        for first in (0..n).step_by(width) {
            tasks.push(Task::Quantized {
                operands,
                q: Arc::clone(&q),
                rows: 0..m,
                cols: first..(first + width).min(n),
            });
        }
        return;
    }
    let split = Split::of(m, k, n, threads);
    let packed = if split.cols < n && k > 0 { packed::lookup(operands.rhs(), operands.rhs_layout) } else { None };
    if let Some(packed) = packed {
        // As many tasks of consecutive packed blocks per row block as `split` has columns.
        let per_task = packed.blocks().div_ceil(n.div_ceil(split.cols));
        for first in (0..packed.blocks()).step_by(per_task) {
            let blocks = first..(first + per_task).min(packed.blocks());
            tasks.extend(split.row_blocks(m).map(|rows| Task::Packed {
                operands,
                packed: Arc::clone(&packed),
                rows,
                blocks: blocks.clone(),
            }));
        }
        return;
    }
    let transposed = operands.transposed_rhs();
    tasks.extend(split.blocks(m, n).map(|(rows, cols)| match transposed {
        true => Task::Transposed { operands, rows, cols },
        false => Task::InPlace { operands, rows, cols },
    }));
}

/// Runs the tasks on `threads` threads (the calling thread among them).
fn run<E: num_traits::Float + Send + Sync + 'static>(tasks: Vec<Task<E>>, threads: usize) {
    if threads > 1 {
        parallel::for_each(tasks.into_iter(), Task::run);
    } else {
        tasks.into_iter().for_each(Task::run);
    }
}

/// One task of [`gemm_all`] or [`gemm_new`]: a block of one product.
enum Task<E> {
    /// Rows `rows` by columns `cols`, the right operand read in place.
    InPlace { operands: Operands<E>, rows: Range<usize>, cols: Range<usize> },
    /// Rows `rows` by columns `cols` of a product whose right operand is stored transposed:
    /// 64 columns at a time are copied into a row-major block first (see [`super::transpose`]).
    Transposed { operands: Operands<E>, rows: Range<usize>, cols: Range<usize> },
    /// Rows `rows` by the columns of `blocks` of a product whose right operand has the packed
    /// copy `packed`.
    Packed { operands: Operands<E>, packed: Arc<PackedMatrix<E>>, rows: Range<usize>, blocks: Range<usize> },
    /// Rows `rows` (at most [`FUSED_ROWS`]) by columns `cols` of a product whose right operand
    /// is the quantized `q`: fused dot products.
    Quantized { operands: Operands<E>, q: Arc<QuantMatrix>, rows: Range<usize>, cols: Range<usize> },
}

/// Up to this many rows (tokens) a product reads a weight's quantized blocks, decoding each
/// block once per row; more rows multiply by the f32 copy.
const FUSED_ROWS: usize = 4;

impl<E: num_traits::Float + 'static> Task<E> {
    fn run(self) {
        match self {
            Task::InPlace { operands, rows, cols } => operands.block(rows, cols, None, Parallelism::None),
            Task::Transposed { operands, rows, cols } => {
                let (k, width) = (operands.rhs_layout.rows, packed::BLOCK_COLS);
                with_scratch::<E, _>(k * width, |scratch| {
                    for first in cols.clone().step_by(width) {
                        let cols = first..(first + width).min(cols.end);
                        pack_columns(operands.rhs(), operands.rhs_layout, cols.clone(), scratch, width);
                        let layout = Layout { rows: k, cols: cols.len(), strides: [width, 1] };
                        operands.block(rows.clone(), cols, Some((scratch, layout)), Parallelism::None);
                    }
                });
            }
            Task::Quantized { operands, q, rows, cols } => {
                let mut tile = vec![0f32; rows.len() * cols.len()];
                quantized::fused_tile(&q, rows.clone(), cols.clone(), |r, buf| operands.lhs_row(r, buf), &mut tile);
                operands.write_tile(rows, cols, &tile);
            }
            Task::Packed { operands, packed, rows, blocks } => {
                for b in blocks {
                    let (first, data, layout) = packed.block(b);
                    let cols = first..first + layout.cols;
                    operands.block(rows.clone(), cols, Some((data, layout)), Parallelism::None);
                }
            }
        }
    }
}

/// Columns `cols` of the view `layout` of `src`, all rows, into `dst` with row stride `stride`
/// (through AVX-512 registers for f32).
fn pack_columns<E: Copy + 'static>(src: &[E], layout: Layout, cols: Range<usize>, dst: &mut [E], stride: usize) {
    match as_f32(src) {
        Some(src) => {
            let dst = as_f32_mut(dst).expect("`dst` has the element type of `src`");
            transpose::pack_columns_f32(src, layout, cols.start, cols.len(), dst, stride);
        }
        None => transpose::pack_columns(src, layout, cols.start, cols.len(), dst, stride),
    }
}

thread_local! {
    /// Each thread's block for [`Task::Transposed`], kept from product to product.
    static SCRATCH_F32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static SCRATCH_F64: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// Calls `f` with `len` elements of this thread's scratch buffer for `E` (whatever they hold),
/// or of a fresh buffer where there is none: another dtype, a product run from a thread-local's
/// destructor after these are gone, or (never in this crate) a nested use.
fn with_scratch<E: num_traits::Zero + Copy + 'static, R>(len: usize, f: impl FnOnce(&mut [E]) -> R) -> R {
    /// `f` on the buffer in `key` when it holds `E`s and is available, else `f` back.
    fn on<V: 'static, E: num_traits::Zero + Copy + 'static, R, F: FnOnce(&mut [E]) -> R>(
        key: &'static std::thread::LocalKey<RefCell<V>>,
        len: usize,
        f: F,
    ) -> Result<R, F> {
        let mut f = Some(f);
        let ran = key.try_with(|cell| {
            let mut v = cell.try_borrow_mut().ok()?;
            let v = (&mut *v as &mut dyn Any).downcast_mut::<Vec<E>>()?;
            if v.len() < len {
                v.resize(len, E::zero());
            }
            Some(f.take().expect("`f` runs once")(&mut v[..len]))
        });
        ran.ok().flatten().ok_or_else(|| f.take().expect("`f` did not run"))
    }
    on(&SCRATCH_F32, len, f).or_else(|f| on(&SCRATCH_F64, len, f)).unwrap_or_else(|f| f(&mut vec![E::zero(); len]))
}

/// `data` as `f32`s, when `E` is `f32`.
fn as_f32<E: 'static>(data: &[E]) -> Option<&[f32]> {
    // SAFETY: `E` is `f32` (the same `TypeId`), so this is the same slice with its type named.
    #[allow(unsafe_code)]
    super::same::<E, f32>().then(|| unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<f32>(), data.len()) })
}

/// `data` as `f32`s, when `E` is `f32`.
fn as_f32_mut<E: 'static>(data: &mut [E]) -> Option<&mut [f32]> {
    // SAFETY: as in `as_f32`; the new slice takes over the unique borrow of `data`.
    #[allow(unsafe_code)]
    super::same::<E, f32>()
        .then(|| unsafe { std::slice::from_raw_parts_mut(data.as_mut_ptr().cast::<f32>(), data.len()) })
}

/// `dst := dst (when `read_dst`) + lhs x rhs` for `E` f32 or f64, on the kernels of gemm-f32 and
/// gemm-f64: the two element types the products use. (The `gemm` crate dispatches the same way
/// but also compiles complex and f16 kernels that nothing here calls, about 18 s of a fresh
/// build on 2 cores.) Strides are in elements, columns first as gemm takes them. As `gemm::gemm`
/// does, a destination whose columns lie closer together than its rows is computed as the
/// transposed product, the orientation gemm's microkernels prefer.
///
/// # Safety
/// As for `gemm::gemm`: `dst` (an `m x n` matrix) and `lhs` (`m x k`) and `rhs` (`k x n`) with
/// these strides lie inside live allocations, `dst` is written by no one else meanwhile and
/// never maps two elements to one address, and when `read_dst` its elements are initialised.
/// Strides are non-negative. Panics if `E` is neither f32 nor f64.
#[allow(unsafe_code, clippy::too_many_arguments)]
unsafe fn real_gemm<E: 'static>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut E,
    dst_cs: isize,
    dst_rs: isize,
    read_dst: bool,
    lhs: *const E,
    lhs_cs: isize,
    lhs_rs: isize,
    rhs: *const E,
    rhs_cs: isize,
    rhs_rs: isize,
    parallelism: Parallelism,
) {
    debug_assert!([dst_cs, dst_rs, lhs_cs, lhs_rs, rhs_cs, rhs_rs].iter().all(|&s| s >= 0));
    // (A B)ᵀ = Bᵀ Aᵀ: swapping the operands and every matrix's strides transposes the product.
    let (m, n, dst_cs, dst_rs, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs) = if dst_cs < dst_rs {
        (n, m, dst_rs, dst_cs, rhs, rhs_rs, rhs_cs, lhs, lhs_rs, lhs_cs)
    } else {
        (m, n, dst_cs, dst_rs, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs)
    };
    // alpha scales the destination's old value, beta the product; both 1 (an accumulation).
    if TypeId::of::<E>() == TypeId::of::<f32>() {
        gemm_f32::gemm::f32::get_gemm_fn()(
            m,
            n,
            k,
            dst.cast(),
            dst_cs,
            dst_rs,
            read_dst,
            lhs.cast(),
            lhs_cs,
            lhs_rs,
            rhs.cast(),
            rhs_cs,
            rhs_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    } else if TypeId::of::<E>() == TypeId::of::<f64>() {
        gemm_f64::gemm::f64::get_gemm_fn()(
            m,
            n,
            k,
            dst.cast(),
            dst_cs,
            dst_rs,
            read_dst,
            lhs.cast(),
            lhs_cs,
            lhs_rs,
            rhs.cast(),
            rhs_cs,
            rhs_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    } else {
        panic!("the CPU products take f32 or f64, not {}", std::any::type_name::<E>());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f64], al: Layout, b: &[f64], bl: Layout) -> Vec<f64> {
        let mut out = vec![0.0; al.rows * bl.cols];
        for i in 0..al.rows {
            for j in 0..bl.cols {
                out[i * bl.cols + j] = (0..al.cols)
                    .map(|p| a[i * al.strides[0] + p * al.strides[1]] * b[p * bl.strides[0] + j * bl.strides[1]])
                    .sum();
            }
        }
        out
    }

    #[test]
    fn matches_naive_product_on_strided_views_and_accumulates() {
        let (m, k, n) = (7, 5, 3);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.11).cos()).collect();
        let al = Layout { rows: m, cols: k, strides: [k, 1] };
        // b stored transposed (n, k), viewed as (k, n).
        let bl = Layout { rows: k, cols: n, strides: [1, k] };
        let want = naive(&a, al, &b, bl);
        let dl = Layout { rows: m, cols: n, strides: [n, 1] };
        let mut dst = vec![1.0; m * n];
        assert!(gemm(&mut dst, dl, false, &a, al, &b, bl, Threads::Pool));
        for (x, y) in dst.iter().zip(&want) {
            assert!((x - y).abs() < 1e-12);
        }
        assert!(gemm(&mut dst, dl, true, &a, al, &b, bl, Threads::Pool));
        for (x, y) in dst.iter().zip(&want) {
            assert!((x - 2.0 * y).abs() < 1e-12);
        }
    }

    #[test]
    fn splits_cover_every_element_once() {
        for threads in [1, 2, 3, 16] {
            for (m, k, n) in
                [(1, 1, 1), (128, 512, 512), (9, 512, 301), (1024, 128, 128), (2000, 64, 3000), (769, 7, 65)]
            {
                let split = Split::of(m, k, n, threads);
                let mut hits = vec![0u8; m * n];
                for (rows, cols) in split.blocks(m, n) {
                    assert!(!rows.is_empty() && !cols.is_empty() && rows.end <= m && cols.end <= n);
                    for i in rows {
                        for j in cols.clone() {
                            hits[i * n + j] += 1;
                        }
                    }
                }
                assert!(hits.iter().all(|&h| h == 1), "{m}x{k}x{n} on {threads} threads: {split:?}");
                if threads == 1 {
                    assert_eq!(split, Split { rows: m, cols: n });
                }
            }
        }
        assert!(Split::of(1024, 128, 128, 2).rows < 1024, "many rows split into row blocks");
        let narrow = Split::of(128, 512, 64, 2);
        assert!(narrow.rows < 128 && narrow.cols == 64, "one column block: rows split for the threads ({narrow:?})");
        assert_eq!(Split::of(8, 8, 8, 2), Split { rows: 8, cols: 8 }, "too little work to share");
        assert_eq!(Split::of(128, 512, 512, 2).cols, 64, "few rows: blocks of 64 columns");
    }

    #[test]
    fn every_kind_of_block_matches_the_naive_product() {
        // Few and many rows; right operands stored row-major (read in place) and transposed
        // (copied into row-major blocks, with a short last block and rows that end mid-tile);
        // a destination stored column-major (the product is transposed to split it), and one
        // neither row- nor column-major (gemm's own threads, in one piece).
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a thread pool");
        for (m, k, n) in [(9, 512, 301), (900, 40, 70), (33, 16, 17), (5, 3, 200)] {
            let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
            let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.11).cos()).collect();
            let al = Layout { rows: m, cols: k, strides: [k, 1] };
            for bl in [Layout { rows: k, cols: n, strides: [1, k] }, Layout { rows: k, cols: n, strides: [n, 1] }] {
                let want = naive(&a, al, &b, bl);
                let strided = Layout { rows: m, cols: n, strides: [2 * n, 2] }; // every other column
                for dl in [
                    Layout { rows: m, cols: n, strides: [n, 1] },
                    Layout { rows: m, cols: n, strides: [1, m] },
                    strided,
                ] {
                    let mut dst = vec![0.5; 2 * m * n];
                    assert!(pool.install(|| gemm(&mut dst, dl, true, &a, al, &b, bl, Threads::Pool)));
                    for i in 0..m {
                        for j in 0..n {
                            let (x, y) = (dst[i * dl.strides[0] + j * dl.strides[1]], want[i * n + j]);
                            assert!((x - 0.5 - y).abs() < 1e-9, "{x} vs {y} + 0.5 ({m}x{k}x{n}, {bl:?}, {dl:?})");
                        }
                    }
                }
            }
            // f32 takes the AVX-512 copy of a transposed operand where the CPU has it.
            let (a32, b32): (Vec<f32>, Vec<f32>) =
                (a.iter().map(|&x| x as f32).collect(), b.iter().map(|&x| x as f32).collect());
            let bl = Layout { rows: k, cols: n, strides: [1, k] };
            let want = naive(&a, al, &b, bl);
            let dl = Layout { rows: m, cols: n, strides: [n, 1] };
            let mut dst = vec![0.0f32; m * n];
            assert!(pool.install(|| gemm(&mut dst, dl, false, &a32, al, &b32, bl, Threads::Pool)));
            for (x, y) in dst.iter().zip(&want) {
                assert!((f64::from(*x) - y).abs() < 1e-4 * (1.0 + y.abs()), "{x} vs {y} ({m}x{k}x{n}, f32)");
            }
        }
    }

    #[test]
    fn new_buffers_hold_the_product_and_its_bias_in_every_block() {
        // Products into new buffers, with and without a bias, split into column and row blocks
        // (many rows), reading a transposed right operand or one in place, and with k = 0 (the
        // packed copies' path is tested through `PackedWeights`, tests/packed_weights.rs).
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a thread pool");
        for (m, k, n) in [(9, 512, 301), (900, 40, 70), (33, 16, 17), (1, 1, 1), (7, 0, 5)] {
            let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
            let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.11).cos()).collect();
            let bias: Vec<f64> = (0..n).map(|j| j as f64 - 2.5).collect();
            let al = Layout { rows: m, cols: k, strides: [k, 1] };
            for bl in [Layout { rows: k, cols: n, strides: [1, k] }, Layout { rows: k, cols: n, strides: [n, 1] }] {
                let want = naive(&a, al, &b, bl);
                for with_bias in [false, true] {
                    let products = [NewProduct {
                        lhs: &a,
                        lhs_layout: al,
                        rhs: &b,
                        rhs_layout: bl,
                        bias: with_bias.then_some(&bias[..]),
                    }];
                    let outs = pool.install(|| gemm_new(&products, Threads::Pool)).expect("a valid product");
                    assert_eq!(outs[0].len(), m * n);
                    for (i, (x, y)) in outs[0].iter().zip(&want).enumerate() {
                        let y = y + if with_bias { bias[i % n] } else { 0.0 };
                        assert!((x - y).abs() < 1e-9, "{x} vs {y} ({m}x{k}x{n}, {bl:?}, bias {with_bias})");
                    }
                }
            }
        }
        let short_bias = [1.0f64; 2];
        let (a, b) = (vec![1.0f64; 6], vec![1.0f64; 6]);
        let l = Layout { rows: 2, cols: 3, strides: [3, 1] };
        let r = Layout { rows: 3, cols: 2, strides: [2, 1] };
        let product = |bias| NewProduct { lhs: &a, lhs_layout: l, rhs: &b, rhs_layout: r, bias };
        assert!(gemm_new(&[product(Some(&short_bias[..1]))], Threads::Pool).is_none(), "a bias of the wrong length");
        assert_eq!(gemm_new(&[product(Some(&short_bias[..]))], Threads::Pool), Some(vec![vec![4.0; 4]]));
    }

    #[test]
    fn products_run_together_match_each_alone_and_an_invalid_one_stops_all() {
        // Three products of one left operand (few rows, so their column blocks share one pass),
        // one with many rows (row blocks) and one with k = 0.
        let lhs = |m: usize, k: usize| -> Vec<f64> { (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect() };
        let rhs = |k: usize, n: usize, seed: f64| -> Vec<f64> { (0..k * n).map(|i| (i as f64 * seed).cos()).collect() };
        let shapes = [(16, 512, 300), (16, 512, 200), (16, 512, 130), (900, 40, 70), (5, 0, 3)];
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a thread pool");
        assert!(shapes[..3].iter().all(|&(m, k, n)| Split::of(m, k, n, 2).cols < n));
        let a: Vec<Vec<f64>> = shapes.iter().map(|&(m, k, _)| lhs(m, k)).collect();
        let b: Vec<Vec<f64>> =
            shapes.iter().enumerate().map(|(i, &(_, k, n))| rhs(k, n, 0.1 + i as f64 * 0.01)).collect();
        let layouts: Vec<[Layout; 3]> = shapes
            .iter()
            .map(|&(m, k, n)| {
                let row_major = |r: usize, c: usize| Layout { rows: r, cols: c, strides: [c, 1] };
                [row_major(m, n), row_major(m, k), row_major(k, n)]
            })
            .collect();
        let mut dsts: Vec<Vec<f64>> = shapes.iter().map(|&(m, _, n)| vec![0.25; m * n]).collect();
        let mut products: Vec<Product<'_, f64>> = dsts
            .iter_mut()
            .zip(&a)
            .zip(&b)
            .zip(&layouts)
            .map(|(((dst, a), b), l)| Product {
                dst,
                dst_layout: l[0],
                accumulate: false,
                lhs: a,
                lhs_layout: l[1],
                rhs: b,
                rhs_layout: l[2],
            })
            .collect();
        assert!(pool.install(|| gemm_all(&mut products, Threads::Pool)));
        for (i, dst) in dsts.iter().enumerate() {
            let want = naive(&a[i], layouts[i][1], &b[i], layouts[i][2]);
            for (x, y) in dst.iter().zip(&want) {
                assert!((x - y).abs() < 1e-9, "product {i}: {x} vs {y}");
            }
        }

        let mut fresh = vec![0.5; 16 * 300];
        let mut short = vec![0.5; 3];
        let mut products = [
            Product {
                dst: &mut fresh,
                dst_layout: layouts[0][0],
                accumulate: false,
                lhs: &a[0],
                lhs_layout: layouts[0][1],
                rhs: &b[0],
                rhs_layout: layouts[0][2],
            },
            Product {
                dst: &mut short,
                dst_layout: Layout { rows: 2, cols: 2, strides: [2, 1] },
                accumulate: false,
                lhs: &a[0],
                lhs_layout: Layout { rows: 2, cols: 2, strides: [2, 1] },
                rhs: &b[0],
                rhs_layout: Layout { rows: 2, cols: 2, strides: [2, 1] },
            },
        ];
        assert!(!gemm_all(&mut products, Threads::Pool), "the second destination is too short");
        assert!(fresh.iter().chain(&short).all(|&x| x == 0.5), "a refused pass writes nothing");
    }

    #[test]
    fn refuses_views_outside_the_slice_or_overlapping_destinations() {
        let a = vec![1.0f32; 6];
        let mut dst = vec![0.0f32; 4];
        let l = Layout { rows: 2, cols: 3, strides: [3, 1] };
        let r = Layout { rows: 3, cols: 2, strides: [2, 1] };
        let d = Layout { rows: 2, cols: 2, strides: [2, 1] };
        assert!(gemm(&mut dst, d, false, &a, l, &a, r, Threads::Pool));
        assert!(!gemm(&mut dst, d, false, &a, l, &a[..5], r, Threads::Pool), "rhs view reaches past its slice");
        let broadcast = Layout { rows: 2, cols: 2, strides: [0, 1] };
        assert!(!gemm(&mut dst, broadcast, false, &a, l, &a, r, Threads::Pool), "two rows share addresses");
        assert!(
            !gemm(&mut dst, d, false, &a, l, &a, Layout { rows: 2, cols: 2, strides: [2, 1] }, Threads::Pool),
            "k disagrees"
        );
    }
}
