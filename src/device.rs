//! Opening a device, and moving a model to another one.
//!
//! Every model, training loop and generation path is generic over the dfdx device; this module
//! only opens a device and copies models between devices, working around two traps of dfdx 0.13:
//!
//! - with the `cuda` feature, `open_cuda` opens a GPU and returns an error when there is none,
//!   where dfdx's `Cuda::try_build` panics inside cudarc 0.9 (which unwraps `cuInit` and
//!   `cuDeviceGet`) when the driver finds no GPU or no GPU of that ordinal;
//! - [`to_device`] copies a model with its hyperparameters, where dfdx's `ToDevice::to_device`
//!   resets every scalar (dropout, layer-norm `eps`) to its default: a model with dropout off or
//!   with BERT's `eps` of 1e-12 would compute something else on the GPU than on the CPU.

use crate::error::{Error, Result};
use dfdx::nn::tensor_collection::{
    RecursiveWalker, ScalarOptions, TensorCollection, TensorOptions, TensorVisitor, ViewTensorRef,
};
use dfdx::prelude::*;

/// Copies `model` (on `D1`) to `dev` (a `D2`), tensors and scalar hyperparameters (dropout
/// probabilities, layer-norm `eps`) alike. Use it instead of dfdx's `ToDevice::to_device`, which
/// resets the scalars to their defaults.
///
/// ```
/// use typeformer::prelude::*;
///
/// let cpu = Cpu::seed_from_u64(0);
/// let mut model: MiniLmL6 = MiniLmL6Spec::build(&cpu)?; // layer-norm eps 1e-12
/// typeformer::nn::set_dropout(&mut model, 0.0)?;
/// let other = Cpu::seed_from_u64(1); // or a `Cuda` device
/// let copy: MiniLmL6<f32, Cpu> = typeformer::device::to_device(&model, &other)?;
/// assert_eq!(copy.embed_norm.eps, 1e-12);
/// assert_eq!(copy.dropout, 0.0);
/// assert_eq!(copy.embed.weight.as_vec(), model.embed.weight.as_vec());
/// # Ok::<(), typeformer::Error>(())
/// ```
pub fn to_device<M, E, D1, D2>(model: &M, dev: &D2) -> Result<M::To<E, D2>>
where
    M: TensorCollection<E, D1>,
    E: Dtype,
    D1: Device<E>,
    D2: Device<E>,
{
    M::iter_tensors(&mut RecursiveWalker { m: model, f: &mut Converter { dev } })
        .map_err(|e| Error::Device(format!("copying a model to another device: {e:?}")))?
        .ok_or_else(|| Error::Device("copying a model to another device left a tensor behind".into()))
}

/// Copies each tensor to `dev` and keeps each scalar's value.
struct Converter<'a, D2> {
    dev: &'a D2,
}

impl<E: Dtype, D1: Device<E>, D2: Device<E>> TensorVisitor<E, D1> for Converter<'_, D2> {
    type Viewer = ViewTensorRef;
    type Err = D2::Err;
    type E2 = E;
    type D2 = D2;

    fn visit<S: Shape>(
        &mut self,
        _: TensorOptions<S, E, D1>,
        t: &Tensor<S, E, D1>,
    ) -> Result<Option<Tensor<S, E, D2>>, Self::Err> {
        Ok(Some(self.dev.try_tensor_from_vec(t.as_vec(), *t.shape())?))
    }

    fn visit_scalar<N: num_traits::NumCast>(
        &mut self,
        opts: ScalarOptions<N>,
        value: &N,
    ) -> Result<Option<N>, Self::Err> {
        Ok(Some(value.to_f64().and_then(N::from).unwrap_or(opts.default)))
    }
}

/// Opens CUDA device `ordinal` (0 is the first GPU) with its random number generator seeded by
/// `seed`, or returns [`Error::Device`] saying why it cannot (no driver, no GPU, no such ordinal,
/// out of memory). Never panics.
///
/// A panic inside cudarc is caught; while it is, the panic hook stays silent for this thread only
/// (other threads' panics are reported as usual), and devices are opened one at a time.
#[cfg(feature = "cuda")]
pub fn open_cuda(ordinal: usize, seed: u64) -> Result<dfdx::tensor::Cuda> {
    use std::panic;
    use std::sync::{Arc, Mutex};

    static OPENING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = OPENING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let opener = std::thread::current().id();
    let previous = Arc::new(panic::take_hook());
    let forward = Arc::clone(&previous);
    panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != opener {
            forward(info);
        }
    }));
    let opened = panic::catch_unwind(|| dfdx::tensor::Cuda::try_build(ordinal, seed));
    drop(panic::take_hook()); // ours, which holds `forward`
    match Arc::try_unwrap(previous) {
        Ok(hook) => panic::set_hook(hook),
        Err(shared) => panic::set_hook(Box::new(move |info| shared(info))),
    }
    let why = match opened {
        Ok(Ok(dev)) => return Ok(dev),
        Ok(Err(e)) => format!("{e:?}"),
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("the CUDA driver failed");
            message.trim_start_matches("called `Result::unwrap()` on an `Err` value: ").to_string()
        }
    };
    Err(Error::Device(format!("cannot open CUDA device {ordinal}: {why}")))
}
