//! The matrix product `(M, K) x (K, N)` through [`cpu::gemm`](super::cpu::gemm).

use super::cpu::{self, Layout, Threads};
use super::{cast, cast_mut, cast_ref, fast_cpu, split_optional, with_result_grad};
use crate::FloatDtype;
use dfdx::prelude::*;

fn layout2(rows: usize, cols: usize, strides: [usize; 2]) -> Layout {
    Layout { rows, cols, strides }
}

/// `a x b (+ bias)` for `a: (M, K)`, `b: (K, N)` (any strides: a transposed weight is read in
/// place), the bias added to every row, with gradients for all three when traced. On
/// the CPU the bias seeds the output and the product accumulates onto it, so the addition and
/// its broadcast cost nothing extra.
pub(crate) fn affine<M: Dim, K: Dim, N: Dim, E: FloatDtype, Dev: Device<E>, T: Tape<E, Dev>>(
    a: Tensor<(M, K), E, Dev, T>,
    b: Tensor<(K, N), E, Dev, T>,
    bias: Option<Tensor<(N,), E, Dev, T>>,
) -> Tensor<(M, N), E, Dev, T> {
    if !fast_cpu::<E, Dev>() {
        return composed(a, b, bias);
    }
    let (a, tape_a) = a.split_tape();
    let (b, tape_b) = b.split_tape();
    let (bias, tape_bias) = split_optional(bias);
    let inputs = (cast_ref(&a), cast_ref(&b), bias.as_ref().map(cast_ref));
    let Some(out) = cpu_forward::<M, K, N, E>(inputs, T::OWNS_TAPE) else {
        return composed(a.put_tape(tape_a), b.put_tape(tape_b), bias.map(|bias| bias.put_tape(tape_bias)));
    };
    let mut tape = tape_a.merge(tape_b).merge(tape_bias);
    if T::OWNS_TAPE {
        let out_id = out.ghost(); // the output's id and size, without its data
        tape.add_backward_op(move |grads| {
            let grads: &mut Gradients<E, Cpu> = cast_mut(grads);
            let inputs = (cast_ref(&a), cast_ref(&b), bias.as_ref().map(cast_ref));
            with_result_grad(
                grads,
                |g| g.get_or_alloc_mut(&out_id).map(|v| &mut **v),
                |grad_out, grads| cpu_backward::<M, K, N, E>(inputs, grad_out, grads),
            )
            .map_err(cast)
        });
    }
    cast::<Tensor<(M, N), E, Cpu>, Tensor<(M, N), E, Dev>>(out).put_tape(tape)
}

/// dfdx's own ops: every device and dtype.
fn composed<M: Dim, K: Dim, N: Dim, E: FloatDtype, Dev: Device<E>, T: Tape<E, Dev>>(
    a: Tensor<(M, K), E, Dev, T>,
    b: Tensor<(K, N), E, Dev, T>,
    bias: Option<Tensor<(N,), E, Dev, T>>,
) -> Tensor<(M, N), E, Dev, T> {
    let y = a.matmul(b);
    match bias {
        Some(bias) => {
            let shape = *y.shape();
            y + bias.broadcast_like(&shape)
        }
        None => y,
    }
}

fn matrix<E: Unit, R: Dim, C: Dim, T>(t: &Tensor<(R, C), E, Cpu, T>) -> Option<(&[E], Layout)> {
    let (r, c) = *t.shape();
    cpu::buffer(t).map(|(data, strides)| (data, layout2(r.size(), c.size(), strides)))
}

type Inputs<'a, M, K, N, E> =
    (&'a Tensor<(M, K), E, Cpu>, &'a Tensor<(K, N), E, Cpu>, Option<&'a Tensor<(N,), E, Cpu>>);

/// `None` where the kernel does not apply (an empty matrix; a broadcast input when its gradient
/// will be needed, since gradients are written through the input's strides).
fn cpu_forward<M: Dim, K: Dim, N: Dim, E: FloatDtype>(
    (a, b, bias): Inputs<'_, M, K, N, E>,
    traced: bool,
) -> Option<Tensor<(M, N), E, Cpu>> {
    let (m, _) = *a.shape();
    let n = b.shape().1;
    let (a_data, a_layout) = matrix(a)?;
    let (b_data, b_layout) = matrix(b)?;
    if traced && !(a_layout.injective() && b_layout.injective()) {
        return None;
    }
    let out = match bias {
        Some(bias) => cpu::dense(bias)?.repeat(m.size()),
        None => vec![E::zero(); m.size() * n.size()],
    };
    let mut out = out;
    let out_layout = layout2(m.size(), n.size(), [n.size(), 1]);
    cpu::gemm(&mut out, out_layout, bias.is_some(), a_data, a_layout, b_data, b_layout, Threads::Pool).then_some(())?;
    a.device().try_tensor_from_vec(out, (m, n)).ok()
}

/// `grad_a += grad_out x bᵀ`, `grad_b += aᵀ x grad_out`, each written through the tensor's own
/// strides (a view's gradient lives in its source's buffer, as in dfdx); `grad_bias +=` the
/// column sums of `grad_out`.
fn cpu_backward<M: Dim, K: Dim, N: Dim, E: FloatDtype>(
    (a, b, bias): Inputs<'_, M, K, N, E>,
    grad_out: &[E],
    grads: &mut Gradients<E, Cpu>,
) -> Result<(), CpuError> {
    let (a_data, a_layout) = matrix(a).expect("the forward pass checked `a`");
    let (b_data, b_layout) = matrix(b).expect("the forward pass checked `b`");
    let n = b_layout.cols;
    let g_layout = layout2(a_layout.rows, n, [n, 1]);
    let grad_a: &mut Vec<E> = grads.get_or_alloc_mut(a)?;
    let ok_a = cpu::gemm(grad_a, a_layout, true, grad_out, g_layout, b_data, b_layout.t(), Threads::Pool);
    let grad_b: &mut Vec<E> = grads.get_or_alloc_mut(b)?;
    let ok_b = cpu::gemm(grad_b, b_layout, true, a_data, a_layout.t(), grad_out, g_layout, Threads::Pool);
    assert!(ok_a && ok_b, "matmul backward: a gradient buffer does not match its tensor's layout");
    if let Some(bias) = bias {
        let grad_bias: &mut Vec<E> = grads.get_or_alloc_mut(bias)?;
        for row in grad_out.chunks_exact(n) {
            grad_bias.iter_mut().zip(row).for_each(|(d, &g)| *d += g);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `affine` against dfdx's composition, on a weight read transposed (as projections do): the
    /// output and the gradients of the input, the weight and (when given) the bias.
    fn check<E>(m: usize, k: usize, n: usize, with_bias: bool, seed: u64, tol: f64)
    where
        E: FloatDtype + Into<f64>,
        Cpu: Device<E>,
        rand_distr::StandardNormal: rand_distr::Distribution<E>,
    {
        let dev = Cpu::seed_from_u64(seed);
        let a: Tensor<(usize, usize), E, Cpu> = dev.sample_normal_like(&(m, k));
        let w: Tensor<(usize, usize), E, Cpu> = dev.sample_normal_like(&(n, k));
        let bias: Tensor<(usize,), E, Cpu> = dev.sample_normal_like(&(n,));
        let wt = w.clone().permute::<_, Axes2<1, 0>>();
        assert!(
            cpu_forward((&a, &wt, Some(&bias)), true).is_some(),
            "the fast kernel must apply to a transposed weight"
        );
        let run = |fast: bool| {
            let x = a.clone().traced(Gradients::leaky());
            let wt = w.clone().retaped::<OwnedTape<E, Cpu>>().permute::<_, Axes2<1, 0>>();
            let b = with_bias.then(|| bias.retaped::<OwnedTape<E, Cpu>>());
            let y = if fast { affine(x, wt, b) } else { composed(x, wt, b) };
            let out = y.as_vec();
            let grads = (y.square().sum()).backward();
            let grad_bias = if with_bias { grads.get(&bias).as_vec() } else { vec![] };
            [out, grads.get(&a).as_vec(), grads.get(&w).as_vec(), grad_bias]
        };
        let (fast, slow) = (run(true), run(false));
        for (got, want) in fast.into_iter().zip(slow) {
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
        fn affine_map_and_its_gradients_match_dfdx(m in 1usize..40, k in 1usize..40, n in 1usize..40, with_bias: bool, seed in 0u64..1000) {
            check::<f32>(m, k, n, with_bias, seed, 1e-4);
            check::<f64>(m, k, n, with_bias, seed, 1e-10);
        }
    }
}
