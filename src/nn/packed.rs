//! [`PackedWeights`]: faster inference on the CPU from a copy of a model's weights laid out for
//! the matrix products.

use crate::kernels::{PackedRegistry, PackedScope};
use dfdx::nn::tensor_collection::{RecursiveWalker, TensorCollection, TensorOptions, TensorVisitor, ViewTensorRef};
use dfdx::prelude::*;
use std::marker::PhantomData;
use std::sync::Arc;

/// A model's weights, read-only, with copies in the layout that the CPU's matrix products read
/// fastest: code run through [`PackedWeights::run`] computes the same results as without it,
/// faster where it multiplies few rows (up to 768 tokens at a time) by the model's weights, as
/// in inference (1.1-1.3x on the products of a d-512 encoder, whose weights do not fit in
/// cache).
///
/// A product's first step is to copy its share of the weight matrix into a contiguous panel;
/// read out of a row-major weight that share is a strided walk the CPU's prefetchers do not
/// follow. The packed copy stores each block of 64 columns contiguously, so it streams in.
///
/// It holds a shared borrow of the model, so nothing can change or drop the model's weights
/// while it exists: the copies cannot go stale. Each weight is copied the first time a product
/// reads it (the first call is slower), and the copies are freed with the `PackedWeights`; they
/// take as much memory as the weights they copy. Training needs none of this: gradients and
/// the optimizer use the model's own tensors, and outside `run` nothing changes. On other
/// devices `run` just calls its closure.
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
/// let fast = packed.run(|| encoder.forward(x.clone(), &MaskSpec::none()))?;
/// let plain = encoder.forward(x, &MaskSpec::none())?;
/// assert_eq!(fast.as_vec(), plain.as_vec());
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
        // Listing only reads the model; a visitor that returns no error cannot fail.
        let _ = M::iter_tensors(&mut RecursiveWalker { m: model, f: &mut lister });
        Self { registry: Arc::new(lister.0), model: PhantomData }
    }

    /// How many of the model's tensors are listed (its tensors on the CPU).
    pub fn tensors(&self) -> usize {
        self.registry.len()
    }

    /// How many packed copies have been made so far (one per weight and layout that a product
    /// read inside [`run`](Self::run); none for products that run on one thread, with few
    /// rows and columns, or with more than 768 rows, which read the weights in place).
    pub fn copies(&self) -> usize {
        self.registry.copies()
    }

    /// Runs `f` on this thread with the packed copies in use: every matrix product `f` computes
    /// on this thread whose right operand is one of the model's weights reads the copy instead.
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
