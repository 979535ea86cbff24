//! The two `unsafe` operations the fast CPU path needs, each behind a checked, safe function.
//!
//! - [`gemm_all`] (and [`gemm`], one product): `gemm::gemm` takes raw pointers and strides.
//!   Every call first checks that each strided matrix lies inside its slice and that each
//!   destination's strides never map two elements to one address (the product writes it from
//!   several threads); distinct destinations are distinct `&mut` borrows. A call that fails a
//!   check returns `false` and writes nothing; the caller then uses dfdx's kernel.
//! - [`buffer`]: dfdx 0.13 exposes neither a CPU tensor's buffer nor its strides, only element
//!   references through `Index`. Element `[0, .., 0]` sits at the buffer's start and the last
//!   element at the largest offset the view reaches, both bounds-checked by dfdx, so the slice
//!   between them is inside the buffer; the strides are read off element addresses.

use super::packed::{self, PackedMatrix};
use dfdx::shapes::{HasShape, Shape, Unit};
use dfdx::tensor::{Cpu, Tensor};
use std::any::TypeId;
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

/// A pointer the column blocks of one product share across rayon's threads.
#[derive(Clone, Copy)]
struct Shared<E>(*mut E);
// SAFETY: it only carries an address between threads; every access through it happens inside
// `Operands::columns`'s unsafe block, whose conditions (checked bounds, disjoint destination
// elements) hold on every thread.
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

/// How many blocks of columns to split a pool product into; rayon spreads them over its threads,
/// each block computed by gemm on one thread.
///
/// For a row-major destination gemm transposes the problem, so the right operand (projection
/// weights, a tied embedding table) becomes the left one, which it repacks in panels. With few
/// destination rows (tokens; in the backward pass also the input width of a weight's gradient,
/// `xᵀ g`) gemm's threads split the work along the rows, so every thread
/// repacks the whole weight matrix; with a transposed right operand it even repacks all of it on
/// one thread before the others start. Blocks of columns make each thread repack only its own
/// share of the weights, and narrow blocks (64 columns, one gemm panel; wider when a product has
/// more than 8 blocks per thread's worth of columns, and fewer when it has little work) let
/// rayon balance them across cores that another process slows: on the encoder's shapes (128 rows) 64-column blocks
/// ran 1.1-1.25x faster than two halves, which ran 1.05-1.15x faster than gemm's threading, in
/// alternating runs; with up to 768 rows, MiniLM's batch of 32 sentences (576 tokens) embedded
/// 1.16x faster. From 1024 rows (a GPT training batch) neither way won consistently, so those
/// products keep gemm's threading.
fn column_blocks(m: usize, k: usize, n: usize, dst: Layout) -> usize {
    const FEW_ROWS: usize = 768;
    const MIN_BLOCK_WORK: usize = 1 << 19; // multiply-adds below which a task costs more than it saves
    let threads = rayon::current_num_threads();
    if dst.strides[1] != 1 || m > FEW_ROWS || threads < 2 {
        return 1;
    }
    let work = m.saturating_mul(k).saturating_mul(n);
    n.div_ceil(packed::BLOCK_COLS).min(work / MIN_BLOCK_WORK).min(threads * 8).max(1)
}

/// The width of each of up to `parts` blocks covering `n` columns, and how many blocks that
/// makes: `ceil(n / parts)` wide blocks may need fewer than `parts` (n = 8200 in 128 parts
/// takes 127 blocks of 65), and a block must not start past the last column.
fn split_columns(n: usize, parts: usize) -> (usize, usize) {
    let block = n.div_ceil(parts.max(1)).max(1);
    (block, n.div_ceil(block))
}

/// Where [`gemm`] and [`gemm_all`] run.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Threads {
    /// Split across the rayon pool (large products).
    Pool,
    /// On the calling thread (one product per rayon task).
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
        let (l, r, d) = (self.lhs_layout, self.rhs_layout, self.dst_layout);
        supports::<E>()
            && r.rows == l.cols
            && d.rows == l.rows
            && d.cols == r.cols
            && d.fits(self.dst.len())
            && d.injective()
            && l.fits(self.lhs.len())
            && r.fits(self.rhs.len())
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

/// Raw addresses of one valid [`Product`], which its column blocks share across threads. Made
/// and used only inside [`gemm_all`], while the product's borrows are held.
#[derive(Clone, Copy)]
struct Operands<E> {
    dst: Shared<E>,
    lhs: Shared<E>,
    rhs: Shared<E>,
    dst_layout: Layout,
    lhs_layout: Layout,
    rhs_layout: Layout,
    accumulate: bool,
}

impl<E: num_traits::Float + 'static> Operands<E> {
    fn of(p: &mut Product<'_, E>) -> Self {
        Operands {
            dst: Shared(p.dst.as_mut_ptr()),
            lhs: Shared(p.lhs.as_ptr().cast_mut()),
            rhs: Shared(p.rhs.as_ptr().cast_mut()),
            dst_layout: p.dst_layout,
            lhs_layout: p.lhs_layout,
            rhs_layout: p.rhs_layout,
            accumulate: p.accumulate,
        }
    }

    /// Columns `first_col..first_col + cols` of the product.
    fn columns(self, first_col: usize, cols: usize, parallelism: gemm::Parallelism) {
        let s = |x: usize| x as isize; // checked by `Product::valid`: every stride fits in isize
        let (m, k) = (self.lhs_layout.rows, self.lhs_layout.cols);
        // SAFETY: `Product::valid` held for the product these addresses come from, which is
        // still borrowed: `E` is f32/f64, which `gemm::gemm` implements; every offset the product
        // reads or writes is below the slice lengths (a block of columns reaches no further than
        // all of them); `dst` is a unique borrow whose elements have distinct addresses, so
        // neither gemm's threads nor the column blocks (disjoint sets of elements) write one
        // address twice; `lhs`/`rhs` are only read. A packed block (`Task::Packed`) replaces
        // `rhs` by a slice that its task holds alive, checked there to fit its layout, and `dst`
        // by the block's columns of the product's (`first + width <= n`, also checked there).
        #[allow(unsafe_code)]
        unsafe {
            gemm::gemm(
                m,
                cols,
                k,
                self.dst.offset(first_col * self.dst_layout.strides[1]),
                s(self.dst_layout.strides[1]),
                s(self.dst_layout.strides[0]),
                self.accumulate,
                self.lhs.offset(0),
                s(self.lhs_layout.strides[1]),
                s(self.lhs_layout.strides[0]),
                self.rhs.offset(first_col * self.rhs_layout.strides[1]),
                s(self.rhs_layout.strides[1]),
                s(self.rhs_layout.strides[0]),
                E::one(),
                E::one(),
                false,
                false,
                false,
                parallelism,
            );
        }
    }
}

/// `dst (+)= lhs x rhs` on strided views, on the rayon pool or the calling thread: `dst` is
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

/// Several independent products (distinct destinations) as one parallel pass: the column blocks
/// of all of them are spread over the pool together, so the Q/K/V projections of one input cost
/// one hand-off to the threads instead of three. Products not split into blocks (see
/// [`column_blocks`]: many rows, little work, a column-major destination, one thread) run first,
/// one after another, on gemm's own threading. Returns `false`, touching nothing, unless every
/// product is valid (see [`gemm`]).
pub(crate) fn gemm_all<E: num_traits::Float + Send + Sync + 'static>(
    products: &mut [Product<'_, E>],
    threads: Threads,
) -> bool {
    if !products.iter().all(Product::valid) {
        return false;
    }
    let mut tasks = Vec::new(); // run together on the pool
    for p in products.iter_mut() {
        let (m, k, n) = (p.lhs_layout.rows, p.lhs_layout.cols, p.rhs_layout.cols);
        if m == 0 || n == 0 {
            continue;
        }
        if k == 0 {
            p.write_empty_sum();
            continue;
        }
        let operands = Operands::of(p);
        match threads {
            Threads::Caller => operands.columns(0, n, gemm::Parallelism::None),
            Threads::Pool => {
                let parts = column_blocks(m, k, n, p.dst_layout);
                let packed = if parts > 1 { packed::lookup(p.rhs, p.rhs_layout) } else { None };
                if let Some(packed) = packed {
                    // `parts` tasks (at most one per block) of consecutive blocks.
                    let per_task = packed.blocks().div_ceil(parts);
                    tasks.extend((0..packed.blocks()).step_by(per_task).map(|first| Task::Packed {
                        operands,
                        packed: Arc::clone(&packed),
                        blocks: first..(first + per_task).min(packed.blocks()),
                    }));
                    continue;
                }
                let (width, count) = split_columns(n, parts);
                if count == 1 {
                    operands.columns(0, n, gemm::Parallelism::Rayon(0));
                } else {
                    tasks.extend((0..count).map(|b| Task::Columns {
                        operands,
                        first: b * width,
                        cols: width.min(n - b * width),
                    }));
                }
            }
        }
    }
    if !tasks.is_empty() {
        use rayon::prelude::*;
        tasks.into_par_iter().for_each(Task::run);
    }
    true
}

/// One rayon task of [`gemm_all`].
enum Task<E> {
    /// Columns `first..first + cols` of a product.
    Columns { operands: Operands<E>, first: usize, cols: usize },
    /// The columns of `blocks` of a product whose right operand has the packed copy `packed`.
    Packed { operands: Operands<E>, packed: Arc<PackedMatrix<E>>, blocks: std::ops::Range<usize> },
}

impl<E: num_traits::Float + 'static> Task<E> {
    fn run(self) {
        match self {
            Task::Columns { operands, first, cols } => operands.columns(first, cols, gemm::Parallelism::None),
            Task::Packed { operands, packed, blocks } => {
                for b in blocks {
                    let (first, rhs, rhs_layout) = packed.block(b);
                    // The packed copy holds the same `(K, N)` matrix as the product's right
                    // operand (its view was the key), so these columns of it fit the product;
                    // `columns` relies on it, hence a check that stays in release builds.
                    assert!(
                        rhs_layout.rows == operands.rhs_layout.rows
                            && first + rhs_layout.cols <= operands.rhs_layout.cols
                            && rhs_layout.fits(rhs.len()),
                        "a packed weight does not match its product"
                    );
                    let block = Operands {
                        dst: Shared(operands.dst.offset(first * operands.dst_layout.strides[1])),
                        dst_layout: Layout { cols: rhs_layout.cols, ..operands.dst_layout },
                        rhs: Shared(rhs.as_ptr().cast_mut()),
                        rhs_layout,
                        ..operands
                    };
                    block.columns(0, rhs_layout.cols, gemm::Parallelism::None);
                }
            }
        }
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
    fn column_splits_start_every_block_inside_the_matrix() {
        for n in 1..3000 {
            for parts in 1..140 {
                let (block, count) = split_columns(n, parts);
                assert!(count <= parts && (count - 1) * block < n && count * block >= n, "n {n}, parts {parts}");
            }
        }
    }

    #[test]
    fn column_blocks_cover_every_column_once() {
        // Few rows: the product is split into column blocks (n odd, so the last block is
        // shorter), with the right operand stored transposed or row-major; the result must match
        // the naive one.
        let (m, k, n) = (9, 512, 301);
        assert!(
            column_blocks(m, k, n, Layout { rows: m, cols: n, strides: [n, 1] }) > 1
                || rayon::current_num_threads() < 2
        );
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.11).cos()).collect();
        let al = Layout { rows: m, cols: k, strides: [k, 1] };
        for bl in [Layout { rows: k, cols: n, strides: [1, k] }, Layout { rows: k, cols: n, strides: [n, 1] }] {
            let want = naive(&a, al, &b, bl);
            let dl = Layout { rows: m, cols: n, strides: [n, 1] };
            let mut dst = vec![0.5; m * n];
            assert!(gemm(&mut dst, dl, true, &a, al, &b, bl, Threads::Pool));
            for (x, y) in dst.iter().zip(&want) {
                assert!((x - 0.5 - y).abs() < 1e-9, "{x} vs {y} + 0.5 ({bl:?})");
            }
        }
    }

    #[test]
    fn products_run_together_match_each_alone_and_an_invalid_one_stops_all() {
        // Three products of one left operand (few rows, so their column blocks share one pass),
        // one with many rows (gemm's threading) and one with k = 0.
        let lhs = |m: usize, k: usize| -> Vec<f64> { (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect() };
        let rhs = |k: usize, n: usize, seed: f64| -> Vec<f64> { (0..k * n).map(|i| (i as f64 * seed).cos()).collect() };
        let shapes = [(16, 512, 300), (16, 512, 200), (16, 512, 130), (900, 40, 70), (5, 0, 3)];
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a thread pool");
        assert!(shapes[..3].iter().all(|&(m, k, n)| pool.install(|| column_blocks(
            m,
            k,
            n,
            Layout { rows: m, cols: n, strides: [n, 1] }
        )) > 1));
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
