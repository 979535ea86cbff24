//! `a + b` of two tensors of one shape, the residual connection's addition, in one parallel
//! pass each way: dfdx's binary kernel walks every element through a strided index (2% of the
//! d-512 encoder's forward pass, as much again in a training step's backward).

use super::cpu;
use super::{cast, cast_ref, fast_cpu, parallel, record_backward, simd, PER_TASK};
use crate::FloatDtype;
use dfdx::prelude::*;
use dfdx::tensor::Merge;

/// `a + b` elementwise, with gradients for both when traced (`b` may carry no tape, as dfdx's
/// `+` allows).
pub(crate) fn add<S: Shape, E: FloatDtype, Dev: Device<E>, T: Tape<E, Dev> + Merge<R>, R: Tape<E, Dev>>(
    a: Tensor<S, E, Dev, T>,
    b: Tensor<S, E, Dev, R>,
) -> Tensor<S, E, Dev, T> {
    if !fast_cpu::<E, Dev>() || a.shape().concrete() != b.shape().concrete() {
        return a + b;
    }
    let (a, tape_a) = a.split_tape();
    let (b, tape_b) = b.split_tape();
    let Some(out) = cpu_forward::<S, E>(cast_ref(&a), cast_ref(&b)) else {
        return a.put_tape(tape_a) + b.put_tape(tape_b);
    };
    let mut tape = tape_a.merge(tape_b);
    if T::OWNS_TAPE {
        // Only ids and sizes are kept for the backward pass, not the inputs' data.
        let (a, b): (&Tensor<S, E, Cpu>, &Tensor<S, E, Cpu>) = (cast_ref(&a), cast_ref(&b));
        let (a, b) = (a.ghost(), b.ghost());
        record_backward(&mut tape, &out, move |grad_out, grads| {
            accumulate(grads.get_or_alloc_mut(&a)?, grad_out);
            accumulate(grads.get_or_alloc_mut(&b)?, grad_out);
            Ok(())
        });
    }
    cast::<Tensor<S, E, Cpu>, Tensor<S, E, Dev>>(out).put_tape(tape)
}

/// `a + b` when both are dense row-major (their gradients then are too).
fn cpu_forward<S: Shape, E: FloatDtype>(a: &Tensor<S, E, Cpu>, b: &Tensor<S, E, Cpu>) -> Option<Tensor<S, E, Cpu>> {
    let (xs, ys) = (cpu::dense(a)?, cpu::dense(b)?);
    let (out, _) = parallel::new_vec(xs.len(), PER_TASK, |i, z| {
        let (x, y) = (&xs[i * PER_TASK..][..z.len()], &ys[i * PER_TASK..][..z.len()]);
        simd(|| {
            for ((z, &x), &y) in z.iter_mut().zip(x).zip(y) {
                *z = x + y;
            }
        })
    });
    a.device().try_tensor_from_vec(out, *a.shape()).ok()
}

/// `dst += src` (in parallel tasks when long).
pub(super) fn accumulate<E: FloatDtype>(dst: &mut [E], src: &[E]) {
    parallel::for_each(dst.chunks_mut(PER_TASK).zip(src.chunks(PER_TASK)), |(d, s)| {
        simd(|| {
            for (d, &s) in d.iter_mut().zip(s) {
                *d += s;
            }
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_and_gradients_match_dfdx_on_long_inputs() {
        let dev = Cpu::seed_from_u64(5);
        let shape = (3, 700, Const::<50>); // several tasks, the last one short
        let x: Tensor<(usize, usize, Const<50>), f64, Cpu> = dev.sample_normal_like(&shape);
        let y: Tensor<(usize, usize, Const<50>), f64, Cpu> = dev.sample_normal_like(&shape);
        let probe: Tensor<(usize, usize, Const<50>), f64, Cpu> = dev.sample_normal_like(&shape);
        let run = |fast: bool| {
            let (a, b) = (x.clone().traced(Gradients::leaky()), y.retaped::<OwnedTape<f64, Cpu>>());
            let z = if fast { add(a, b) } else { a + b };
            let out = z.as_vec();
            let grads = (z * probe.clone()).sum().backward();
            [out, grads.get(&x).as_vec(), grads.get(&y).as_vec()]
        };
        assert_eq!(run(true), run(false));
        // `x + x` (which dfdx's own `+` cannot differentiate): both gradients land in one buffer.
        let z = add(x.clone().traced(Gradients::leaky()), x.retaped::<OwnedTape<f64, Cpu>>());
        assert_eq!(z.as_vec(), (x.clone() * 2.0).as_vec());
        let grads = (z * probe.clone()).sum().backward();
        assert_eq!(grads.get(&x).as_vec(), (probe.clone() * 2.0).as_vec());
    }

    #[test]
    fn views_that_are_not_dense_fall_back_to_dfdx() {
        let dev = Cpu::default();
        let x: Tensor<Rank2<2, 3>, f32, Cpu> = dev.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]);
        let t: Tensor<Rank2<3, 2>, f32, Cpu> = x.clone().permute();
        let y: Tensor<Rank2<3, 2>, f32, Cpu> = dev.ones();
        assert!(cpu_forward(&t, &y).is_none());
        assert_eq!(add(t, y).array(), [[2.0, 5.0], [3.0, 6.0], [4.0, 7.0]]);
    }
}
