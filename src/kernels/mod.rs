//! Faster kernels for the operations a Transformer spends its time in, used in place of dfdx's
//! where they apply and dfdx's own everywhere else.
//!
//! dfdx 0.13 multiplies matrices with `gemm` 0.15, which on stable Rust has no AVX-512 path;
//! `gemm` 0.19 with `x86-v4` runs about twice as fast on CPUs that have it (and falls back to
//! AVX2/FMA at run time on those that do not). [`affine_shared`] sends CPU products of f32 and f64
//! through it, forward and backward (the backward is recorded on the tape like any dfdx op), and
//! leaves every other device and dtype to dfdx; layer norm, attention's masked softmax and the
//! exact GELU are fused into one pass each way, split across the cores (see [`parallel`]), with a vectorisable
//! `exp` ([`exp`]). The choice is made per call from the types, so the typed API does not change
//! and generic code needs no new bounds.

mod add;
mod batched;
mod cpu;
mod exp;
mod gelu;
mod layer_norm;
mod matmul;
mod packed;
mod parallel;
mod quantized;
mod reduce;
mod softmax;
mod transpose;

pub(crate) use add::add;
pub(crate) use batched::{batched_matmul, batched_matmul_heads_last};
pub(crate) use cpu::buffer as buffer_of;
pub(crate) use gelu::gelu;
pub(crate) use layer_norm::layer_norm;
pub(crate) use matmul::{affine_shared, AffineMap};
pub(crate) use packed::{Registry as PackedRegistry, Scope as PackedScope};
pub(crate) use quantized::{QuantMatrix, Registry as QuantRegistry, RowDecoder, Scope as QuantScope};
pub(crate) use softmax::attention_softmax;

use dfdx::prelude::*;
use std::any::{Any, TypeId};
use std::cell::Cell;

thread_local! {
    /// Whether the backward ops on this thread free the gradient of the result they
    /// differentiate once they have used it (see [`FreeConsumedGradients`]).
    static FREE_CONSUMED: Cell<bool> = const { Cell::new(false) };
}

/// While alive, the fused kernels' backward ops on this thread (dfdx runs a backward pass on
/// the calling thread) free the gradient of their result after using it, rather than keeping it
/// in `Gradients` until the pass ends, as dfdx does for every intermediate result: nothing reads
/// it later (the tape runs in reverse, so every consumer of a result has already added to its
/// gradient), only a caller who inspects an intermediate's gradient in a leaky `Gradients`.
/// [`crate::train::backward`] holds one; a plain `.backward()` keeps dfdx's behaviour.
pub(crate) struct FreeConsumedGradients(bool);

impl FreeConsumedGradients {
    pub(crate) fn enter() -> Self {
        Self(FREE_CONSUMED.replace(true))
    }
}

impl Drop for FreeConsumedGradients {
    fn drop(&mut self) {
        FREE_CONSUMED.set(self.0);
    }
}

/// Records on `tape` the backward op of a CPU kernel's result `out`: `body` gets the result's
/// gradient, taken out of `grads` for the call (so `body` may borrow `grads` for the inputs'
/// gradients), then put back, or freed inside [`FreeConsumedGradients`]. Only `out`'s id and
/// size are kept, not its data.
fn record_backward<S: Shape, E: Dtype, Dev: Device<E>, T: Tape<E, Dev>, Tp>(
    tape: &mut T,
    out: &Tensor<S, E, Cpu, Tp>,
    body: impl FnOnce(&[E], &mut Gradients<E, Cpu>) -> Result<(), CpuError> + 'static,
) {
    let out_id = out.ghost();
    tape.add_backward_op(move |grads| {
        let grads: &mut Gradients<E, Cpu> = cast_mut(grads);
        let grad = std::mem::take(&mut **grads.get_or_alloc_mut(&out_id).map_err(cast)?);
        body(&grad, grads).map_err(cast)?;
        if !FREE_CONSUMED.get() {
            **grads.get_or_alloc_mut(&out_id).map_err(cast)? = grad;
        }
        Ok(())
    });
}

fn same<A: 'static, B: 'static>() -> bool {
    TypeId::of::<A>() == TypeId::of::<B>()
}

/// Moves `a` into type `B`, which the caller has checked is `A` (see [`same`]).
fn cast<A: 'static, B: 'static>(a: A) -> B {
    let mut slot = Some(a);
    (&mut slot as &mut dyn Any).downcast_mut::<Option<B>>().and_then(Option::take).expect("cast between equal types")
}

fn cast_ref<A: 'static, B: 'static>(a: &A) -> &B {
    (a as &dyn Any).downcast_ref::<B>().expect("cast between equal types")
}

fn cast_mut<A: 'static, B: 'static>(a: &mut A) -> &mut B {
    (a as &mut dyn Any).downcast_mut::<B>().expect("cast between equal types")
}

/// Splits the tape off an optional operand (a bias); `T::default()` when there is none.
fn split_optional<S: Shape, E: Dtype, Dev: Device<E>, T: Tape<E, Dev>>(
    t: Option<Tensor<S, E, Dev, T>>,
) -> (Option<Tensor<S, E, Dev>>, T) {
    match t {
        Some(t) => {
            let (t, tape) = t.split_tape();
            (Some(t), tape)
        }
        None => (None, T::default()),
    }
}

/// Elements per parallel task in the element- and row-wise kernels (tens of microseconds of work):
/// enough that waking the other thread costs little beside it, so the small tensors of a small
/// model stay on the calling thread.
const PER_TASK: usize = 1 << 16;

/// Rows of `width` elements per parallel task (at least one).
fn rows_per_task(width: usize) -> usize {
    (PER_TASK / width.max(1)).max(1)
}

/// Runs `f` compiled for the widest SIMD instruction set this CPU has (AVX-512, else AVX2 with
/// FMA, on x86-64; detected at run time), rather than the baseline SSE2 the crate is built for:
/// the loops of the fused kernels are inlined into it and vectorise (16 f32 lanes with AVX-512). Call it
/// around a loop, not per element. The compiler may leave a large closure out of line (then
/// compiled for the baseline): large bodies implement [`Vectorized`] and go through [`simd_run`].
#[inline(always)]
fn simd<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// A loop body for [`simd_run`]; implementations mark `run` `#[inline(always)]`, which makes it
/// part of the code compiled for the chosen instruction set whatever its size.
trait Vectorized {
    type Output;
    fn run(self) -> Self::Output;
}

struct Dispatch<K>(K);

impl<K: Vectorized> pulp::WithSimd for Dispatch<K> {
    type Output = K::Output;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> K::Output {
        self.0.run()
    }
}

/// [`simd`] for a body that must be inlined into the dispatched code.
#[inline(always)]
fn simd_run<K: Vectorized>(body: K) -> K::Output {
    pulp::Arch::new().dispatch(Dispatch(body))
}

/// Whether the fast CPU kernels run for this dtype and device.
fn fast_cpu<E: 'static, Dev: 'static>() -> bool {
    same::<Dev, Cpu>() && cpu::supports::<E>()
}
