//! The matrix product `(M, K) x (K, N)` through [`cpu::gemm`](super::cpu::gemm).

use super::cpu::{self, Layout};
use super::{cast, cast_mut, cast_ref, fast_cpu};
use crate::FloatDtype;
use dfdx::prelude::*;

fn layout2(rows: usize, cols: usize, strides: [usize; 2]) -> Layout {
    Layout { rows, cols, strides }
}

/// `a x b` for `a: (M, K)` and `b: (K, N)`, with gradients for both when traced; any strides
/// (a transposed weight is read in place).
pub(crate) fn matmul<M: Dim, K: Dim, N: Dim, E: FloatDtype, Dev: Device<E>, T: Tape<E, Dev>>(
    a: Tensor<(M, K), E, Dev, T>,
    b: Tensor<(K, N), E, Dev, T>,
) -> Tensor<(M, N), E, Dev, T> {
    if !fast_cpu::<E, Dev>() {
        return a.matmul(b);
    }
    let (a, tape_a) = a.split_tape();
    let (b, tape_b) = b.split_tape();
    let a_cpu: &Tensor<(M, K), E, Cpu> = cast_ref(&a);
    let b_cpu: &Tensor<(K, N), E, Cpu> = cast_ref(&b);
    let Some(out) = cpu_matmul_forward(a_cpu, b_cpu, T::OWNS_TAPE) else {
        return a.put_tape(tape_a).matmul(b.put_tape(tape_b));
    };
    let mut tape = tape_a.merge(tape_b);
    if T::OWNS_TAPE {
        let out_id = out.ghost(); // the output's id and size, without its data
        tape.add_backward_op(move |grads| {
            let grads: &mut Gradients<E, Cpu> = cast_mut(grads);
            let a: &Tensor<(M, K), E, Cpu> = cast_ref(&a);
            let b: &Tensor<(K, N), E, Cpu> = cast_ref(&b);
            let grad_out: Vec<E> = std::mem::take(&mut **grads.get_or_alloc_mut(&out_id).map_err(cast)?);
            cpu_matmul_backward(a, b, &grad_out, grads).map_err(cast)?;
            **grads.get_or_alloc_mut(&out_id).map_err(cast)? = grad_out; // put it back
            Ok(())
        });
    }
    cast::<Tensor<(M, N), E, Cpu>, Tensor<(M, N), E, Dev>>(out).put_tape(tape)
}

fn matrix<E: Unit, R: Dim, C: Dim, T>(t: &Tensor<(R, C), E, Cpu, T>) -> Option<(&[E], Layout)> {
    let (r, c) = *t.shape();
    cpu::buffer(t).map(|(data, strides)| (data, layout2(r.size(), c.size(), strides)))
}

/// `None` where the kernel does not apply (an empty matrix; a broadcast input when its gradient
/// will be needed, since gradients are written through the input's strides).
fn cpu_matmul_forward<M: Dim, K: Dim, N: Dim, E: FloatDtype>(
    a: &Tensor<(M, K), E, Cpu>,
    b: &Tensor<(K, N), E, Cpu>,
    traced: bool,
) -> Option<Tensor<(M, N), E, Cpu>> {
    let (m, _) = *a.shape();
    let n = b.shape().1;
    let (a_data, a_layout) = matrix(a)?;
    let (b_data, b_layout) = matrix(b)?;
    if traced && !(a_layout.injective() && b_layout.injective()) {
        return None;
    }
    let mut out = vec![E::zero(); m.size() * n.size()];
    let out_layout = layout2(m.size(), n.size(), [n.size(), 1]);
    cpu::gemm(&mut out, out_layout, false, a_data, a_layout, b_data, b_layout).then_some(())?;
    a.device().try_tensor_from_vec(out, (m, n)).ok()
}

/// `grad_a += grad_out x bᵀ`, `grad_b += aᵀ x grad_out`, each written through the tensor's own
/// strides (a view's gradient lives in its source's buffer, as in dfdx).
fn cpu_matmul_backward<M: Dim, K: Dim, N: Dim, E: FloatDtype>(
    a: &Tensor<(M, K), E, Cpu>,
    b: &Tensor<(K, N), E, Cpu>,
    grad_out: &[E],
    grads: &mut Gradients<E, Cpu>,
) -> Result<(), CpuError> {
    let (a_data, a_layout) = matrix(a).expect("the forward pass checked `a`");
    let (b_data, b_layout) = matrix(b).expect("the forward pass checked `b`");
    let g_layout = layout2(a_layout.rows, b_layout.cols, [b_layout.cols, 1]);
    let grad_a: &mut Vec<E> = grads.get_or_alloc_mut(a)?;
    let ok_a = cpu::gemm(grad_a, a_layout, true, grad_out, g_layout, b_data, b_layout.t());
    let grad_b: &mut Vec<E> = grads.get_or_alloc_mut(b)?;
    let ok_b = cpu::gemm(grad_b, b_layout, true, a_data, a_layout.t(), grad_out, g_layout);
    assert!(ok_a && ok_b, "matmul backward: a gradient buffer does not match its tensor's layout");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `kernels::matmul` against dfdx's own, on a weight read transposed (as projections do):
    /// the product and the gradients of both operands.
    fn check<E>(m: usize, k: usize, n: usize, seed: u64, tol: f64)
    where
        E: FloatDtype + Into<f64>,
        Cpu: Device<E>,
        rand_distr::StandardNormal: rand_distr::Distribution<E>,
    {
        let dev = Cpu::seed_from_u64(seed);
        let a: Tensor<(usize, usize), E, Cpu> = dev.sample_normal_like(&(m, k));
        let w: Tensor<(usize, usize), E, Cpu> = dev.sample_normal_like(&(n, k));
        let run = |fast: bool| {
            let grads = Gradients::leaky();
            let x = a.clone().traced(grads);
            let wt = w.clone().retaped::<OwnedTape<E, Cpu>>().permute::<_, Axes2<1, 0>>();
            let y = if fast { matmul(x, wt) } else { x.matmul(wt) };
            let out = y.as_vec();
            let grads = (y.square().sum()).backward();
            (out, grads.get(&a).as_vec(), grads.get(&w).as_vec())
        };
        let wt = w.clone().permute::<_, Axes2<1, 0>>();
        assert!(cpu_matmul_forward(&a, &wt, true).is_some(), "the fast kernel must apply to a transposed weight");
        let (fast, slow) = (run(true), run(false));
        for (got, want) in [(fast.0, slow.0), (fast.1, slow.1), (fast.2, slow.2)] {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.into_iter().zip(want) {
                let (g, w): (f64, f64) = (g.into(), w.into());
                assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{g} vs {w} for ({m}x{k})·({k}x{n})");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn matmul_and_its_gradients_match_dfdx(m in 1usize..40, k in 1usize..40, n in 1usize..40, seed in 0u64..1000) {
            check::<f32>(m, k, n, seed, 1e-4);
            check::<f64>(m, k, n, seed, 1e-10);
        }
    }
}
