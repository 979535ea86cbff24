//! [`PackedWeights`]: faster inference on the CPU from a copy of a model's weights laid out for
//! the matrix products.

use crate::kernels::{PackedRegistry, PackedScope};
use dfdx::nn::tensor_collection::{RecursiveWalker, TensorCollection, TensorOptions, TensorVisitor, ViewTensorRef};
use dfdx::prelude::*;
use std::marker::PhantomData;
use std::sync::Arc;

/// A model's weights, read-only, with copies in the layout that the CPU's matrix products read
/// fastest: code run through [`PackedWeights::run`] computes what it computes without it (equal
/// up to rounding), faster where it multiplies up to 768 rows (tokens) at a time by the model's
/// weights, as inference does (1.1-1.25x on a d-512 encoder, whose weights do not fit in cache).
///
/// Each block of such a product starts by copying its share of the weight matrix into a
/// contiguous panel; read out of a row-major weight that share is a strided walk the CPU's
/// prefetchers do not follow. The packed copy stores each block of 64 columns contiguously, so
/// it streams in.
///
/// It holds a shared borrow of the model, so nothing can change or drop the model's weights
/// while it exists: the copies cannot go stale. A weight is copied the first time a product
/// reads it in a given layout (the first call is slower; a backward pass inside `run` reads the
/// weights transposed, which makes a second copy), and the copies are freed with the
/// `PackedWeights`: about as much memory as the weights per layout (each padded to a multiple of
/// 64 columns). It is for inference: training changes the weights every step, which the borrow
/// rules out, and outside `run` nothing changes. On other devices `run` just calls its closure.
///
/// ```
/// use typeformer::prelude::*;
///
/// type Small = Encoder<128, 4, 32, 256, 2, PostNorm, Relu, f32, Cpu>;
/// let dev = Cpu::default();
/// let encoder = dev.build_module::<Small, f32>();
/// let x: Tensor<(usize, usize, Const<128>), f32, Cpu> = dev.sample_normal_like(&(1, 64, Const));
///
/// let packed = PackedWeights::of(&encoder);
/// let fast = packed.run(|| encoder.forward(x.clone(), &MaskSpec::none()))?.as_vec();
/// let plain = encoder.forward(x, &MaskSpec::none())?.as_vec();
/// assert!(fast.iter().zip(&plain).all(|(a, b)| (a - b).abs() < 1e-5));
/// # Ok::<(), typeformer::Error>(())
/// ```
pub struct PackedWeights<'m, M> {
    registry: Arc<PackedRegistry>,
    model: PhantomData<&'m M>,
}

impl<'m, M> PackedWeights<'m, M> {
    /// Lists `model`'s tensors; the copies are made as products first read them.
    pub fn of<E: Dtype, Dev: Device<E>>(model: &'m M) -> Self
    where
        M: TensorCollection<E, Dev>,
    {
        let mut lister = ListTensors(PackedRegistry::default());
        match M::iter_tensors(&mut RecursiveWalker { m: model, f: &mut lister }) {
            Ok(_) => {}
            Err(never) => match never {},
        }
        Self { registry: Arc::new(lister.0), model: PhantomData }
    }

    /// How many buffers of the model's tensors are listed: its non-empty tensors on the CPU,
    /// tensors that share a buffer (tied weights) counted once.
    pub fn tensors(&self) -> usize {
        self.registry.len()
    }

    /// How many packed copies have been made so far: one per weight and layout that a product
    /// read inside [`run`](Self::run). Products that are not split into column blocks read the
    /// weights in place and copy nothing: on one thread (a rayon pool of one, or
    /// `RAYON_NUM_THREADS=1`), or with little work (one token's).
    pub fn copies(&self) -> usize {
        self.registry.copies()
    }

    /// Runs `f` with the packed copies in use on the calling thread: the products that `f`
    /// starts on this thread, that read one of the model's weights as their right operand and
    /// that are split into column blocks (see [`copies`](Self::copies)), read the copy instead.
    /// Put `run` inside `rayon::ThreadPool::install`, not around it (the closure of `install`
    /// runs on the pool's thread). Inside another `PackedWeights`' `run`, only this one's copies
    /// are in use until it returns.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        let _scope = PackedScope::enter(Arc::clone(&self.registry));
        f()
    }
}

impl<M> std::fmt::Debug for PackedWeights<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedWeights").field("tensors", &self.tensors()).field("copies", &self.copies()).finish()
    }
}

/// Adds every tensor it visits to the registry.
struct ListTensors(PackedRegistry);

impl<E: Dtype, Dev: Device<E>> TensorVisitor<E, Dev> for ListTensors {
    type Viewer = ViewTensorRef;
    type Err = std::convert::Infallible;
    type E2 = E;
    type D2 = Dev;

    fn visit<S: Shape>(
        &mut self,
        _: TensorOptions<S, E, Dev>,
        t: &Tensor<S, E, Dev>,
    ) -> Result<Option<Tensor<S, E, Dev>>, Self::Err> {
        self.0.add(t);
        Ok(None)
    }
}
