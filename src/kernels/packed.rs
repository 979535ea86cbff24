//! Read-only model weights copied into column blocks, for the few-row products of inference.
//!
//! A product with few rows (tokens) runs as blocks of 64 columns (see `cpu::column_blocks`),
//! and gemm's first step for each block is to copy the block's share of the right operand, the
//! weight matrix, into a contiguous panel. In a row-major `(K, N)` weight that share is 256
//! bytes out of every row, `4N` bytes apart: a strided walk over memory that the CPU's
//! prefetchers do not follow, so when the weights are not in cache (a model's weights outgrow
//! the L2 cache; the d-512 encoder's 75 MB outgrow L3) the copy waits on memory for a quarter of
//! the product's time. Stored block after block, each block contiguous, the same weights stream
//! in at full bandwidth: 1.1-1.3x faster products in alternating runs of the encoder's shapes
//! (128 rows, 12 distinct weights in turn).
//!
//! Such a copy is only right while the weights do not change, so it is made only for the
//! tensors of a model that a [`Registry`] lists, and used only while a
//! [`crate::nn::PackedWeights`] holds a shared borrow of that model (no code can write to or
//! free the model's buffers meanwhile) and has installed its registry on the calling thread
//! ([`Scope`]). The copies are made on first use, one per weight and layout, and dropped with
//! the registry.

use super::cpu::{self, Layout};
use dfdx::shapes::{Shape, Unit};
use dfdx::tensor::{Cpu, Tensor};
use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Columns per block: one gemm panel (4 AVX-512 vectors of f32), as `cpu::column_blocks` uses.
pub(crate) const BLOCK_COLS: usize = 64;

/// A `(K, N)` matrix stored as `ceil(N / 64)` blocks of 64 columns, block `b` holding columns
/// `64b..64b + 64` as a contiguous row-major `(K, 64)` matrix (the last block zero-padded).
pub(crate) struct PackedMatrix<E> {
    data: Vec<E>,
    rows: usize,
    cols: usize,
}

impl<E: Copy + num_traits::Zero> PackedMatrix<E> {
    /// Copies the view `layout` of `src` (which the caller has checked lies inside `src`).
    fn pack(src: &[E], layout: Layout) -> Self {
        let (rows, cols) = (layout.rows, layout.cols);
        let blocks = cols.div_ceil(BLOCK_COLS);
        let mut data = vec![E::zero(); blocks * rows * BLOCK_COLS];
        let [rs, cs] = layout.strides;
        for (b, block) in data.chunks_exact_mut(rows * BLOCK_COLS).enumerate() {
            let first = b * BLOCK_COLS;
            let width = BLOCK_COLS.min(cols - first);
            for (i, row) in block.chunks_exact_mut(BLOCK_COLS).enumerate() {
                for (j, x) in row[..width].iter_mut().enumerate() {
                    *x = src[i * rs + (first + j) * cs];
                }
            }
        }
        Self { data, rows, cols }
    }
}

impl<E> PackedMatrix<E> {
    /// The columns of block `b` (`b < ceil(cols / 64)`): its first column, its elements and their
    /// layout `(K, width)`.
    pub(crate) fn block(&self, b: usize) -> (usize, &[E], Layout) {
        let first = b * BLOCK_COLS;
        let len = self.rows * BLOCK_COLS;
        let layout = Layout { rows: self.rows, cols: BLOCK_COLS.min(self.cols - first), strides: [BLOCK_COLS, 1] };
        (first, &self.data[b * len..(b + 1) * len], layout)
    }

    /// How many blocks the matrix has.
    pub(crate) fn blocks(&self) -> usize {
        self.cols.div_ceil(BLOCK_COLS)
    }
}

/// A view of a listed buffer: its start address and `[rows, cols, row stride, col stride]`.
type ViewKey = (usize, [usize; 4]);

/// The buffers of one model's tensors, and the packed copies made of them so far.
#[derive(Default)]
pub(crate) struct Registry {
    /// Start address of each CPU tensor's buffer → (dtype, elements from there on).
    sources: HashMap<usize, (TypeId, usize)>,
    /// Each view packed so far → its `Arc<PackedMatrix<E>>`.
    packed: Mutex<HashMap<ViewKey, Arc<dyn Any + Send + Sync>>>,
}

impl Registry {
    /// Lists a tensor of the model (tensors on other devices are skipped).
    pub(crate) fn add<S: Shape, E: Unit, D: dfdx::tensor::Storage<E> + 'static>(&mut self, t: &Tensor<S, E, D>) {
        let Some(t) = (t as &dyn Any).downcast_ref::<Tensor<S, E, Cpu>>() else {
            return;
        };
        if let Some((data, _)) = cpu::buffer(t) {
            let entry = self.sources.entry(data.as_ptr() as usize).or_insert((TypeId::of::<E>(), 0));
            if entry.0 == TypeId::of::<E>() {
                entry.1 = entry.1.max(data.len());
            }
        }
    }

    /// How many buffers are listed (tensors that share one count once).
    pub(crate) fn len(&self) -> usize {
        self.sources.len()
    }

    /// How many packed copies have been made.
    pub(crate) fn copies(&self) -> usize {
        self.packed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len()
    }

    /// The packed copy of the view `layout` of `data`, made now if it is the first use; `None`
    /// unless `data` starts at a listed tensor's buffer and the view stays inside it.
    fn packed<E: Copy + num_traits::Zero + Send + Sync + 'static>(
        &self,
        data: &[E],
        layout: Layout,
    ) -> Option<Arc<PackedMatrix<E>>> {
        let start = data.as_ptr() as usize;
        let &(dtype, len) = self.sources.get(&start)?;
        let inside = layout.extent().is_some_and(|end| end <= len.min(data.len()));
        if dtype != TypeId::of::<E>() || !inside {
            return None;
        }
        let key = (start, [layout.rows, layout.cols, layout.strides[0], layout.strides[1]]);
        let mut packed = self.packed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = packed.entry(key).or_insert_with(|| Arc::new(PackedMatrix::pack(data, layout)));
        Arc::clone(entry).downcast::<PackedMatrix<E>>().ok()
    }
}

thread_local! {
    /// The registry of the [`Scope`] open on this thread, if any.
    static ACTIVE: RefCell<Option<Arc<Registry>>> = const { RefCell::new(None) };
}

/// While alive, products on this thread read the listed weights from `registry`'s packed copies
/// (only this registry's: an inner scope hides the outer one until it ends).
pub(crate) struct Scope(Option<Arc<Registry>>);

impl Scope {
    pub(crate) fn enter(registry: Arc<Registry>) -> Self {
        Self(ACTIVE.with(|active| active.replace(Some(registry))))
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        // `try_with`: a thread's locals may be gone when it drops a scope from a destructor.
        let _ = ACTIVE.try_with(|active| *active.borrow_mut() = self.0.take());
    }
}

/// The packed copy of a product's right operand, when a [`Scope`] is open on this thread and
/// the operand is one of its model's tensors.
pub(crate) fn lookup<E: Copy + num_traits::Zero + Send + Sync + 'static>(
    data: &[E],
    layout: Layout,
) -> Option<Arc<PackedMatrix<E>>> {
    // `try_with`: products may run in another thread-local's destructor, after this one is gone.
    let registry = ACTIVE.try_with(|active| active.borrow().clone()).ok().flatten()?;
    registry.packed(data, layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_hold_the_columns_of_any_layout() {
        let (k, n) = (3, 70);
        let src: Vec<f32> = (0..k * n).map(|i| i as f32).collect();
        for layout in [Layout { rows: k, cols: n, strides: [n, 1] }, Layout { rows: k, cols: n, strides: [1, k] }] {
            let packed = PackedMatrix::pack(&src, layout);
            assert_eq!(packed.blocks(), 2);
            for b in 0..packed.blocks() {
                let (first, data, l) = packed.block(b);
                assert_eq!(l.cols, if b == 0 { 64 } else { 6 });
                for i in 0..k {
                    for j in 0..l.cols {
                        let want = src[i * layout.strides[0] + (first + j) * layout.strides[1]];
                        assert_eq!(data[i * l.strides[0] + j * l.strides[1]], want);
                    }
                }
            }
        }
    }

    #[test]
    fn only_listed_tensors_are_packed_and_only_inside_a_scope() {
        use dfdx::prelude::*;
        let dev = Cpu::default();
        let w: Tensor<Rank2<4, 8>, f32, Cpu> = dev.sample_normal();
        let other: Tensor<Rank2<4, 8>, f32, Cpu> = dev.sample_normal();
        let mut registry = Registry::default();
        registry.add(&w);
        let registry = Arc::new(registry);
        let (w_data, _) = cpu::buffer(&w).unwrap();
        let (other_data, _) = cpu::buffer(&other).unwrap();
        let layout = Layout { rows: 4, cols: 8, strides: [8, 1] };
        assert!(lookup(w_data, layout).is_none(), "no scope is open");
        {
            let _scope = Scope::enter(Arc::clone(&registry));
            assert!(lookup(w_data, layout).is_some());
            assert!(lookup(other_data, layout).is_none(), "not the model's tensor");
            let too_far = Layout { rows: 5, cols: 8, strides: [8, 1] };
            assert!(lookup(w_data, too_far).is_none(), "a view past the tensor's buffer");
            let first = lookup(w_data, layout).unwrap();
            assert!(Arc::ptr_eq(&first, &lookup(w_data, layout).unwrap()), "packed once");
        }
        assert!(lookup(w_data, layout).is_none(), "the scope closed");
    }

    #[test]
    fn an_inner_scope_hides_the_outer_one_until_it_ends_even_by_a_panic() {
        use dfdx::prelude::*;
        let dev = Cpu::default();
        let (a, b): (Tensor<Rank2<4, 8>, f32, Cpu>, Tensor<Rank2<4, 8>, f32, Cpu>) =
            (dev.sample_normal(), dev.sample_normal());
        let registry = |t: &Tensor<Rank2<4, 8>, f32, Cpu>| {
            let mut r = Registry::default();
            r.add(t);
            Arc::new(r)
        };
        let (outer, inner) = (registry(&a), registry(&b));
        let layout = Layout { rows: 4, cols: 8, strides: [8, 1] };
        let (a_data, b_data) = (cpu::buffer(&a).unwrap().0, cpu::buffer(&b).unwrap().0);
        let _outer = Scope::enter(outer);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _inner = Scope::enter(Arc::clone(&inner));
            assert!(lookup(b_data, layout).is_some() && lookup(a_data, layout).is_none());
            panic!("inside the inner scope");
        }));
        assert!(panicked.is_err());
        assert!(lookup(a_data, layout).is_some() && lookup(b_data, layout).is_none(), "the outer scope is back");
    }
}
