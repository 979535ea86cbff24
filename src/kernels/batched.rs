//! Attention's per-head products, `(B, H, M, K) x (B, H, K, N)`, through
//! [`cpu::gemm`](super::cpu::gemm), one head per parallel task. The operands are usually views
//! (heads split out of a projection, keys transposed), read in place through their strides.

use super::cpu::{self, Layout, Threads};
use super::{cast, cast_ref, fast_cpu, parallel, record_backward};
use crate::FloatDtype;
use dfdx::prelude::*;

type Batch<B, H, R, C, E, Dev, T = NoneTape> = Tensor<(B, H, R, C), E, Dev, T>;

/// `a x b` for every batch item and head, with gradients for both when traced.
pub(crate) fn batched_matmul<B: Dim, H: Dim, M: Dim, K: Dim, N: Dim, E: FloatDtype, Dev: Device<E>, T: Tape<E, Dev>>(
    a: Batch<B, H, M, K, E, Dev, T>,
    b: Batch<B, H, K, N, E, Dev, T>,
) -> Batch<B, H, M, N, E, Dev, T> {
    if !fast_cpu::<E, Dev>() {
        return a.matmul(b);
    }
    match fast(a, b, Order::Heads) {
        Ok((out, tape)) => out.put_tape(tape),
        Err((a, b)) => a.matmul(b),
    }
}

/// `a x b` for every batch item and head, as [`batched_matmul`], returned as a `(B, M, H, N)`
/// tensor: on the CPU its buffer holds each row's heads side by side, so the output projection
/// reads it as `(B, M, H * N)` without copying the heads together (dfdx's reshape of the
/// `(B, H, M, N)` product is a copy forward and another backward).
pub(crate) fn batched_matmul_heads_last<B, H, M, K, N, E, Dev, T>(
    a: Batch<B, H, M, K, E, Dev, T>,
    b: Batch<B, H, K, N, E, Dev, T>,
) -> Tensor<(B, M, H, N), E, Dev, T>
where
    B: Dim,
    H: Dim,
    M: Dim,
    K: Dim,
    N: Dim,
    E: FloatDtype,
    Dev: Device<E>,
    T: Tape<E, Dev>,
{
    if !fast_cpu::<E, Dev>() {
        return a.matmul(b).permute::<_, Axes4<0, 2, 1, 3>>();
    }
    match fast(a, b, Order::Rows) {
        Ok((out, tape)) => {
            let (bs, h, m, n) = *out.shape();
            // The buffer is (B, M, H, N) in row-major order; the tensor's own strides say so once
            // its shape does (a contiguous reshape keeps the id the backward op is recorded under).
            out.reshape_like(&(bs, m, h, n)).put_tape(tape)
        }
        Err((a, b)) => a.matmul(b).permute::<_, Axes4<0, 2, 1, 3>>(),
    }
}

/// Where each head's result lies in the product's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// `(B, H, M, N)`: each head's matrix contiguous.
    Heads,
    /// `(B, M, H, N)`: the heads of each row side by side.
    Rows,
}

/// The offset and layout of matrix `i` (batch item `i / h`, head `i % h`) of an `h`-head,
/// `m x n` product stored in `order`.
fn placed(order: Order, i: usize, h: usize, m: usize, n: usize) -> (usize, Layout) {
    match order {
        Order::Heads => (i * m * n, Layout { rows: m, cols: n, strides: [n, 1] }),
        Order::Rows => ((i / h) * m * h * n + (i % h) * n, Layout { rows: m, cols: n, strides: [h * n, 1] }),
    }
}

type Untaped<B, H, M, N, E, Dev> = Batch<B, H, M, N, E, Dev>;

/// The product on the CPU kernels, its buffer in `order`, typed `(B, H, M, N)` with that
/// shape's dense strides: for [`Order::Rows`] those misdescribe the buffer, and the caller must
/// reshape it to `(B, M, H, N)` before anything reads it. Or the inputs back, tapes restored,
/// where the kernel does not apply.
#[allow(clippy::type_complexity)]
fn fast<B: Dim, H: Dim, M: Dim, K: Dim, N: Dim, E: FloatDtype, Dev: Device<E>, T: Tape<E, Dev>>(
    a: Batch<B, H, M, K, E, Dev, T>,
    b: Batch<B, H, K, N, E, Dev, T>,
    order: Order,
) -> Result<(Untaped<B, H, M, N, E, Dev>, T), (Batch<B, H, M, K, E, Dev, T>, Batch<B, H, K, N, E, Dev, T>)> {
    let (a, tape_a) = a.split_tape();
    let (b, tape_b) = b.split_tape();
    let Some(out) = cpu_forward::<B, H, M, K, N, E>(cast_ref(&a), cast_ref(&b), T::OWNS_TAPE, order) else {
        return Err((a.put_tape(tape_a), b.put_tape(tape_b)));
    };
    let mut tape = tape_a.merge(tape_b);
    if T::OWNS_TAPE {
        record_backward(&mut tape, &out, move |grad_out, grads| {
            cpu_backward::<B, H, M, K, N, E>(cast_ref(&a), cast_ref(&b), grad_out, order, grads)
        });
    }
    Ok((cast::<Batch<B, H, M, N, E, Cpu>, Batch<B, H, M, N, E, Dev>>(out), tape))
}

/// A 4-d tensor as `B x H` matrices: the buffer, each matrix's offset, and the matrix layout.
struct Matrices<'a, E> {
    data: &'a [E],
    offsets: Vec<usize>,
    layout: Layout,
}

impl<'a, E> Matrices<'a, E> {
    /// The matrix at `i`, as a slice starting at its first element.
    fn get(&self, i: usize) -> &'a [E] {
        &self.data[self.offsets[i]..]
    }
}

fn matrices<B: Dim, H: Dim, R: Dim, C: Dim, E: FloatDtype>(t: &Batch<B, H, R, C, E, Cpu>) -> Option<Matrices<'_, E>> {
    let (data, strides) = cpu::buffer(t)?;
    let (b, h, r, c) = *t.shape();
    let offsets = (0..b.size()).flat_map(|i| (0..h.size()).map(move |j| i * strides[0] + j * strides[1])).collect();
    Some(Matrices {
        data,
        offsets,
        layout: Layout { rows: r.size(), cols: c.size(), strides: [strides[2], strides[3]] },
    })
}

/// Whether no two elements of the 4-d view share an address (its gradient is written through it).
fn injective<B: Dim, H: Dim, R: Dim, C: Dim, E: FloatDtype>(t: &Batch<B, H, R, C, E, Cpu>) -> bool {
    let (Some((_, strides)), (b, h, r, c)) = (cpu::buffer(t), *t.shape()) else { return true };
    injective_view([b.size(), h.size(), r.size(), c.size()], strides)
}

/// [`injective`] for the view's sizes and strides; not generic, so compiled once here rather
/// than for every shape in every crate that runs a model.
fn injective_view(sizes: [usize; 4], strides: [usize; 4]) -> bool {
    let mut axes: Vec<(usize, usize)> = sizes.into_iter().zip(strides).filter(|&(n, _)| n > 1).collect();
    axes.sort_by_key(|&(_, s)| s);
    let mut span = 1; // each axis's stride must step past everything the smaller axes reach
    for (n, s) in axes {
        if s < span {
            return false;
        }
        span += s * (n - 1);
    }
    true
}

/// The product in `order`'s buffer layout (see [`fast`]).
fn cpu_forward<B: Dim, H: Dim, M: Dim, K: Dim, N: Dim, E: FloatDtype>(
    a: &Batch<B, H, M, K, E, Cpu>,
    b: &Batch<B, H, K, N, E, Cpu>,
    traced: bool,
    order: Order,
) -> Option<Batch<B, H, M, N, E, Cpu>> {
    let (a_items, a_heads, ..) = *a.shape();
    let (b_items, b_heads, ..) = *b.shape();
    // dfdx's own product reports a mismatch of the run-time batch or head counts.
    if a_items.size() != b_items.size() || a_heads.size() != b_heads.size() {
        return None;
    }
    if traced && !(injective(a) && injective(b)) {
        return None;
    }
    let (am, bm) = (matrices(a)?, matrices(b)?);
    let (bs, h, m, _) = *a.shape();
    let n = b.shape().3;
    let (items, heads, rows, cols) = (bs.size(), h.size(), m.size(), n.size());
    let len = items * heads * rows * cols;
    let (out, ok) = match order {
        Order::Heads => {
            let (out, oks) = parallel::new_vec(len, rows * cols, |i, dst| {
                let (_, layout) = placed(order, i, heads, rows, cols);
                cpu::gemm(dst, layout, false, am.get(i), am.layout, bm.get(i), bm.layout, Threads::Caller)
            });
            (out, oks.into_iter().all(|ok| ok))
        }
        Order::Rows => {
            let mut out = vec![E::zero(); len];
            // The heads of a row interleave, so tasks take blocks of rows of one batch item (a
            // contiguous part of the buffer), with every head: a few blocks per thread.
            let blocks_per_item = (4 * parallel::threads()).div_ceil(items);
            let block = rows.div_ceil(blocks_per_item).max(1);
            let width = heads * cols;
            let tasks = out.chunks_mut(rows * width).enumerate().flat_map(|(item, x)| {
                x.chunks_mut(block * width).enumerate().map(move |(j, dst)| (item, j * block, dst))
            });
            let ok = all(tasks, |(item, first, dst)| {
                let lhs_rows = Layout { rows: dst.len() / width, ..am.layout };
                let dst_layout = Layout { rows: lhs_rows.rows, cols, strides: [width, 1] };
                (0..heads).all(|head| {
                    let i = item * heads + head;
                    let lhs = &am.get(i)[first * am.layout.strides[0]..];
                    let dst = &mut dst[head * cols..];
                    cpu::gemm(dst, dst_layout, false, lhs, lhs_rows, bm.get(i), bm.layout, Threads::Caller)
                })
            });
            (out, ok)
        }
    };
    ok.then_some(())?;
    a.device().try_tensor_from_vec(out, (bs, h, m, n)).ok()
}

/// `grad_a += g bᵀ`, `grad_b += aᵀ g` per matrix: computed densely in parallel, then added
/// through each input's strides (its gradient shares its source's layout).
fn cpu_backward<B: Dim, H: Dim, M: Dim, K: Dim, N: Dim, E: FloatDtype>(
    a: &Batch<B, H, M, K, E, Cpu>,
    b: &Batch<B, H, K, N, E, Cpu>,
    grad_out: &[E],
    order: Order,
    grads: &mut Gradients<E, Cpu>,
) -> Result<(), CpuError> {
    let (am, bm) = (matrices(a).expect("checked forward"), matrices(b).expect("checked forward"));
    let (m, n) = (am.layout.rows, bm.layout.cols);
    let heads = a.shape().1.size();
    let (_, g_layout) = placed(order, 0, heads, m, n);
    let g = |i: usize| &grad_out[placed(order, i, heads, m, n).0..];
    let items = a.shape().0.size();
    let ok_a = add_products(grads.get_or_alloc_mut(a)?, &am, items, |i, dst, layout, accumulate| {
        cpu::gemm(dst, layout, accumulate, g(i), g_layout, bm.get(i), bm.layout.t(), Threads::Caller)
    });
    let ok_b = add_products(grads.get_or_alloc_mut(b)?, &bm, items, |i, dst, layout, accumulate| {
        cpu::gemm(dst, layout, accumulate, am.get(i), am.layout.t(), g(i), g_layout, Threads::Caller)
    });
    assert!(ok_a && ok_b, "batched matmul backward: layouts checked in the forward pass");
    Ok(())
}

/// `grad += product(i)` for every matrix `i` of a view of `items` batch items, into the view's
/// gradient (laid out as the view). `product(i, dst, layout, accumulate)` computes matrix `i` into
/// `dst` through `layout`, adding to it when `accumulate`. With an item per thread or more, and
/// each item's matrices inside its own block of the buffer (heads split out of a projection, or
/// a dense product), each task adds one item's products in place; otherwise they go to dense
/// buffers, one matrix per task, and are added through the strides afterwards.
fn add_products<E: FloatDtype>(
    grad: &mut [E],
    view: &Matrices<'_, E>,
    items: usize,
    product: impl Fn(usize, &mut [E], Layout, bool) -> bool + Sync,
) -> bool {
    let heads = view.offsets.len() / items.max(1);
    let layout = view.layout;
    // The gradient covers every element the view reaches, so every item has its block.
    if items >= parallel::threads() && grad.len() >= view.data.len() {
        if let Some(stride) = item_blocks(view, items, heads) {
            return all(grad.chunks_mut(stride).take(items).enumerate(), |(item, block)| {
                let first = item * heads;
                (first..first + heads)
                    .all(|i| product(i, &mut block[view.offsets[i] - view.offsets[first]..], layout, true))
            });
        }
    }
    let (rows, cols) = (layout.rows, layout.cols);
    let dense = Layout { rows, cols, strides: [cols, 1] };
    let mut products = vec![E::zero(); view.offsets.len() * rows * cols];
    let ok = all(products.chunks_mut((rows * cols).max(1)).enumerate(), |(i, dst)| product(i, dst, dense, false));
    if ok {
        scatter_add(grad, &view.offsets, layout, &products);
    }
    ok
}

/// Whether `f` holds for every item, the items run in parallel (all of them, even after a `false`).
fn all<I>(items: I, f: impl Fn(I::Item) -> bool + Sync) -> bool
where
    I: Iterator + Send,
    I::Item: Send,
{
    parallel::map(items, f).into_iter().all(|ok| ok)
}

/// The distance from one batch item's matrices to the next's, when every item's matrices lie
/// within that distance of its first (so items are disjoint blocks of the buffer); `None` for a
/// single item or interleaved items.
fn item_blocks<E>(view: &Matrices<'_, E>, items: usize, heads: usize) -> Option<usize> {
    if items < 2 || heads == 0 || view.offsets[0] != 0 {
        return None;
    }
    let stride = view.offsets[heads];
    let extent = view.layout.extent()?;
    let reach = view.offsets[..heads].iter().map(|&o| o + extent).max()?;
    let regular = view.offsets.iter().enumerate().all(|(i, &o)| o == (i / heads) * stride + view.offsets[i % heads]);
    (stride > 0 && reach <= stride && regular).then_some(stride)
}

/// Adds dense matrices `src` into `dst` at `offsets`, through `layout`'s strides.
fn scatter_add<E: FloatDtype>(dst: &mut [E], offsets: &[usize], layout: Layout, src: &[E]) {
    let (rows, cols) = (layout.rows, layout.cols);
    for (&offset, matrix) in offsets.iter().zip(src.chunks_exact((rows * cols).max(1))) {
        for r in 0..rows {
            for c in 0..cols {
                dst[offset + r * layout.strides[0] + c * layout.strides[1]] += matrix[r * cols + c];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The kernel's outputs and gradients against dfdx's, element by element.
    fn assert_close(fast: [Vec<f64>; 3], reference: [Vec<f64>; 3]) {
        for (got, want) in fast.into_iter().zip(reference) {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.into_iter().zip(want) {
                assert!((g - w).abs() <= 1e-10 * (1.0 + w.abs()), "{g} vs {w}");
            }
        }
    }

    /// As attention uses it: queries and keys split out of a `(B, S, H*HD)` projection (views),
    /// keys transposed; product and both gradients against dfdx's batched matmul.
    fn check(b: usize, s: usize, seed: u64) {
        in_two_threads(|| check_products(b, s, seed));
    }

    /// Runs `f` in a pool of two threads, so the paths chosen by thread count (gradients added
    /// in place with a batch item per thread, blocks of rows) are the same on every machine.
    fn in_two_threads(f: impl FnOnce() + Send) {
        rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a thread pool").install(f);
    }

    fn check_products(b: usize, s: usize, seed: u64) {
        const H: usize = 3;
        const HD: usize = 5;
        let dev = Cpu::seed_from_u64(seed);
        let qp: Tensor<(usize, usize, Const<H>, Const<HD>), f64, Cpu> = dev.sample_normal_like(&(b, s, Const, Const));
        let kp: Tensor<(usize, usize, Const<H>, Const<HD>), f64, Cpu> = dev.sample_normal_like(&(b, s, Const, Const));
        let probe: Tensor<(usize, Const<H>, usize, usize), f64, Cpu> = dev.sample_normal_like(&(b, Const, s, s));
        let q0 = qp.clone().permute::<_, Axes4<0, 2, 1, 3>>();
        let k0 = kp.clone().permute::<_, Axes4<0, 2, 3, 1>>();
        assert!(cpu_forward(&q0, &k0, true, Order::Heads).is_some(), "the kernel must apply to head views");
        let run = |fast: bool| {
            let q = qp.clone().traced(Gradients::leaky()).permute::<_, Axes4<0, 2, 1, 3>>();
            let k = kp.retaped::<OwnedTape<f64, Cpu>>().permute::<_, Axes4<0, 2, 3, 1>>();
            let y = if fast { batched_matmul(q, k) } else { q.matmul(k) };
            let out = y.as_vec();
            let grads = (y * probe.clone()).sum().backward();
            [out, grads.get(&qp).as_vec(), grads.get(&kp).as_vec()]
        };
        assert_close(run(true), run(false));
    }

    /// Attention's second product stored heads-last: values, gradients and a `(B, S, H, HD)`
    /// buffer the head merge reads without a copy.
    fn check_heads_last(b: usize, s: usize, seed: u64) {
        in_two_threads(|| check_heads_last_products(b, s, seed));
    }

    fn check_heads_last_products(b: usize, s: usize, seed: u64) {
        const H: usize = 3;
        const HD: usize = 5;
        let dev = Cpu::seed_from_u64(seed);
        let w: Tensor<(usize, Const<H>, usize, usize), f64, Cpu> = dev.sample_normal_like(&(b, Const, s, s));
        let vp: Tensor<(usize, usize, Const<H>, Const<HD>), f64, Cpu> = dev.sample_normal_like(&(b, s, Const, Const));
        let probe: Tensor<(usize, usize, Const<H>, Const<HD>), f64, Cpu> =
            dev.sample_normal_like(&(b, s, Const, Const));
        let stored = batched_matmul_heads_last(w.clone(), vp.clone().permute::<_, Axes4<0, 2, 1, 3>>());
        let (_, strides) = cpu::buffer(&stored).expect("not empty");
        assert!(cpu::row_major(&[b, s, H, HD], &strides), "heads-last output must be dense (B, S, H, HD)");
        let run = |fast: bool| {
            let wt = w.clone().traced(Gradients::leaky());
            let v = vp.retaped::<OwnedTape<f64, Cpu>>().permute::<_, Axes4<0, 2, 1, 3>>();
            let y: Tensor<(usize, usize, Const<H>, Const<HD>), f64, Cpu, _> =
                if fast { batched_matmul_heads_last(wt, v) } else { wt.matmul(v).permute::<_, Axes4<0, 2, 1, 3>>() };
            let out = y.as_vec();
            let grads = (y * probe.clone()).sum().backward();
            [out, grads.get(&w).as_vec(), grads.get(&vp).as_vec()]
        };
        assert_close(run(true), run(false));
    }

    #[test]
    fn long_sequences_split_into_row_blocks_match_dfdx() {
        check_heads_last(1, 37, 3); // one item: several blocks of rows, the last one short
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn heads_last_product_and_its_gradients_match_dfdx(b in 1usize..4, s in 1usize..9, seed in 0u64..1000) {
            check_heads_last(b, s, seed);
        }

        #[test]
        fn batched_matmul_and_its_gradients_match_dfdx(b in 1usize..4, s in 1usize..9, seed in 0u64..1000) {
            check(b, s, seed);
        }
    }

    #[test]
    fn items_are_blocks_for_head_views_but_not_when_interleaved() {
        let dev = Cpu::default();
        // Heads split out of a (B, S, H*HD) projection: each item's heads inside its own block.
        let proj: Tensor<(usize, usize, Const<3>, Const<5>), f32, Cpu> = dev.zeros_like(&(4, 7, Const, Const));
        let heads = proj.permute::<_, Axes4<0, 2, 1, 3>>();
        assert_eq!(item_blocks(&matrices(&heads).unwrap(), 4, 3), Some(7 * 3 * 5));
        // Items interleaved inside every head: (H, B, R, C) viewed as (B, H, R, C).
        let t: Tensor<(Const<3>, usize, usize, usize), f32, Cpu> = dev.zeros_like(&(Const, 4, 2, 2));
        let interleaved = t.permute::<_, Axes4<1, 0, 2, 3>>();
        assert_eq!(item_blocks(&matrices(&interleaved).unwrap(), 4, 3), None);
        // One item: nothing to split.
        let one: Tensor<(usize, Const<3>, usize, usize), f32, Cpu> = dev.zeros_like(&(1, Const, 2, 2));
        assert_eq!(item_blocks(&matrices(&one).unwrap(), 1, 3), None);
    }

    #[test]
    fn mismatched_batch_or_head_counts_are_left_to_dfdx() {
        let dev = Cpu::default();
        let a: Tensor<(usize, usize, usize, usize), f32, Cpu> = dev.zeros_like(&(2, 3, 4, 5));
        let b: Tensor<(usize, usize, usize, usize), f32, Cpu> = dev.zeros_like(&(3, 3, 5, 6));
        let c: Tensor<(usize, usize, usize, usize), f32, Cpu> = dev.zeros_like(&(2, 2, 5, 6));
        assert!(cpu_forward(&a, &b, false, Order::Rows).is_none(), "batch 2 against batch 3");
        assert!(cpu_forward(&a, &c, false, Order::Heads).is_none(), "3 heads against 2");
    }

    #[test]
    fn broadcast_views_are_not_injective() {
        let dev = Cpu::default();
        let t: Tensor<(usize, Const<2>, usize, usize), f32, Cpu> = dev.zeros_like(&(1, Const, 3, 4));
        assert!(injective(&t));
        let row: Tensor<(usize, usize), f32, Cpu> = dev.zeros_like(&(3, 4));
        let broadcast: Tensor<(usize, Const<2>, usize, usize), f32, Cpu> =
            row.broadcast_like::<_, Axes2<0, 1>>(&(2, Const, 3, 4));
        assert!(!injective(&broadcast));
    }
}
