//! The matrix product `(M, K) x (K, N)` (+ bias) through [`cpu::gemm_all`](super::cpu::gemm_all).

use super::cpu::{self, Layout, Threads};
use super::{cast, cast_ref, fast_cpu, record_backward, split_optional};
use crate::FloatDtype;
use dfdx::prelude::*;

/// A weight `(K, N)` and its optional bias `(N,)`: one affine map of [`affine_shared`].
pub(crate) type AffineMap<K, N, E, Dev, T> = (Tensor<(K, N), E, Dev, T>, Option<Tensor<(N,), E, Dev, T>>);

/// A CPU matrix `(R, C)`.
type CpuMatrix<R, C, E> = Tensor<(R, C), E, Cpu>;

/// An [`AffineMap`] on the CPU, borrowed.
type CpuMap<'a, K, N, E> = (&'a CpuMatrix<K, N, E>, Option<&'a Tensor<(N,), E, Cpu>>);

fn layout2(rows: usize, cols: usize, strides: [usize; 2]) -> Layout {
    Layout { rows, cols, strides }
}

/// `a x b_i (+ bias_i)` for `a: (M, K)` and each `b_i: (K, N)` (any strides: a transposed
/// weight is read in place), each bias added to every row, with gradients for all inputs when
/// traced. Several maps share the left operand as the query, key and value projections of one
/// input do: on the CPU their products run as one parallel pass (their column blocks spread
/// over the threads together), then each output keeps its own backward op, as separate calls
/// would. `a`'s tape (the ops that made it) goes with the first output, so a caller must use the
/// first output wherever it uses the others (attention combines all three). On the CPU each bias
/// seeds its output and the product accumulates onto it, so the addition and its broadcast cost
/// nothing extra.
pub(crate) fn affine_shared<const P: usize, M: Dim, K: Dim, N: Dim, E: FloatDtype, Dev: Device<E>, T: Tape<E, Dev>>(
    a: Tensor<(M, K), E, Dev, T>,
    maps: [AffineMap<K, N, E, Dev, T>; P],
) -> [Tensor<(M, N), E, Dev, T>; P] {
    const { assert!(P > 0, "affine_shared needs at least one map") };
    let (a, tape_a) = a.split_tape();
    let maps = maps.map(|(b, bias)| {
        let (b, tape_b) = b.split_tape();
        let (bias, tape_bias) = split_optional(bias);
        (b, bias, tape_b.merge(tape_bias))
    });
    let fast = fast_cpu::<E, Dev>()
        .then(|| {
            cpu_forward::<P, M, K, N, E>(
                cast_ref(&a),
                maps.each_ref().map(|(b, bias, _)| (cast_ref(b), bias.as_ref().map(cast_ref))),
                T::OWNS_TAPE,
            )
        })
        .flatten();
    let mut tape_a = Some(tape_a);
    let Some(outs) = fast else {
        let a = a.put_tape(tape_a.take().unwrap_or_default());
        return composed_each(
            a,
            maps.map(|(b, bias, tape)| (b.put_tape(tape), bias.map(|bias| bias.put_tape(T::default())))),
        );
    };
    let mut outs = outs.into_iter();
    maps.map(|(b, bias, tape)| {
        let out = outs.next().expect("one output per map");
        let mut tape = tape.merge(tape_a.take().unwrap_or_default());
        if T::OWNS_TAPE {
            let a = a.clone();
            record_backward(&mut tape, &out, move |grad_out, grads| {
                let inputs = (cast_ref(&a), cast_ref(&b), bias.as_ref().map(cast_ref));
                cpu_backward::<M, K, N, E>(inputs, grad_out, grads)
            });
        }
        cast::<Tensor<(M, N), E, Cpu>, Tensor<(M, N), E, Dev>>(out).put_tape(tape)
    })
}

/// Each map of [`affine_shared`] by dfdx's own ops, `a`'s tape going with the first output: its
/// fallback, and the reference its tests compare with.
fn composed_each<const P: usize, M: Dim, K: Dim, N: Dim, E: FloatDtype, Dev: Device<E>, T: Tape<E, Dev>>(
    a: Tensor<(M, K), E, Dev, T>,
    maps: [AffineMap<K, N, E, Dev, T>; P],
) -> [Tensor<(M, N), E, Dev, T>; P] {
    let (a, tape) = a.split_tape();
    let mut tape = Some(tape);
    maps.map(|(b, bias)| composed(a.clone().put_tape(tape.take().unwrap_or_default()), b, bias))
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

/// The outputs `a x b_i (+ bias_i)`, computed in one [`cpu::gemm_new`] pass; `None` where the
/// kernel does not apply (an empty matrix; a broadcast input when its gradient will be needed,
/// since gradients are written through the input's strides).
fn cpu_forward<const P: usize, M: Dim, K: Dim, N: Dim, E: FloatDtype>(
    a: &Tensor<(M, K), E, Cpu>,
    maps: [CpuMap<'_, K, N, E>; P],
    traced: bool,
) -> Option<Vec<CpuMatrix<M, N, E>>> {
    let m = a.shape().0;
    let (a_data, a_layout) = matrix(a)?;
    if traced && !a_layout.injective() {
        return None;
    }
    let mut products = Vec::with_capacity(P);
    let mut widths = Vec::with_capacity(P);
    for (b, bias) in maps {
        let (b_data, b_layout) = matrix(b)?;
        if traced && !b_layout.injective() {
            return None;
        }
        let bias = match bias {
            Some(bias) => Some(cpu::dense(bias)?),
            None => None,
        };
        products.push(cpu::NewProduct { lhs: a_data, lhs_layout: a_layout, rhs: b_data, rhs_layout: b_layout, bias });
        widths.push(b.shape().1);
    }
    let outs = cpu::gemm_new(&products, Threads::Pool)?;
    outs.into_iter().zip(widths).map(|(out, n)| a.device().try_tensor_from_vec(out, (m, n)).ok()).collect()
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

    /// `affine_shared` of one map against dfdx's composition, on a weight read transposed (as
    /// projections do): the output and the gradients of the input, the weight and (when given)
    /// the bias.
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
            cpu_forward(&a, [(&wt, Some(&bias))], true).is_some(),
            "the fast kernel must apply to a transposed weight"
        );
        let run = |fast: bool| {
            let x = a.clone().traced(Gradients::leaky());
            let wt = w.clone().retaped::<OwnedTape<E, Cpu>>().permute::<_, Axes2<1, 0>>();
            let b = with_bias.then(|| bias.retaped::<OwnedTape<E, Cpu>>());
            let y = if fast {
                let [y] = affine_shared(x, [(wt, b)]);
                y
            } else {
                composed(x, wt, b)
            };
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

    /// `affine_shared` with three maps of one input against three separate compositions: the
    /// outputs and the gradients of the input, the weights and the biases (the loss mixes the
    /// three outputs, so each gradient of the input is a sum over the maps).
    fn check_shared(m: usize, k: usize, n: usize, seed: u64) {
        let dev = Cpu::seed_from_u64(seed);
        let a: Tensor<(usize, usize), f64, Cpu> = dev.sample_normal_like(&(m, k));
        let ws: [Tensor<(usize, usize), f64, Cpu>; 3] = std::array::from_fn(|_| dev.sample_normal_like(&(k, n)));
        let biases: [Tensor<(usize,), f64, Cpu>; 3] = std::array::from_fn(|_| dev.sample_normal_like(&(n,)));
        let run = |fast: bool| {
            let x = a.clone().traced(Gradients::leaky());
            let maps: [_; 3] = std::array::from_fn(|i| {
                (ws[i].retaped::<OwnedTape<f64, Cpu>>(), (i != 1).then(|| biases[i].retaped::<OwnedTape<f64, Cpu>>()))
            });
            let [p, q, r] = if fast { affine_shared(x, maps) } else { composed_each(x, maps) };
            let outs = [p.as_vec(), q.as_vec(), r.as_vec()].concat();
            let grads = (p.square() * q + r.sin()).sum().backward();
            let mut got = vec![outs, grads.get(&a).as_vec()];
            got.extend(ws.iter().map(|w| grads.get(w).as_vec()));
            got.extend([0, 2].map(|i| grads.get(&biases[i]).as_vec()));
            got
        };
        for (got, want) in run(true).into_iter().zip(run(false)) {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.into_iter().zip(want) {
                assert!((g - w).abs() <= 1e-9 * (1.0 + w.abs()), "{g} vs {w} for ({m}x{k})·({k}x{n}) x3");
            }
        }
    }

    #[test]
    fn shared_input_maps_fall_back_together_to_dfdx() {
        // A traced weight broadcast from one row has no gradient layout the kernel can write, so
        // both maps take dfdx's ops: the outputs and every gradient (the input's tape with the
        // first output) must still match separate compositions.
        let dev = Cpu::seed_from_u64(3);
        let (m, k, n) = (5, 4, 6);
        let a: Tensor<(usize, usize), f64, Cpu> = dev.sample_normal_like(&(m, k));
        let row: Tensor<(usize,), f64, Cpu> = dev.sample_normal_like(&(n,));
        let w: Tensor<(usize, usize), f64, Cpu> = dev.sample_normal_like(&(k, n));
        let broadcast = || row.retaped::<OwnedTape<f64, Cpu>>().broadcast_like::<_, Axis<0>>(&(k, n));
        assert!(cpu_forward(&a, [(&row.clone().broadcast_like::<_, Axis<0>>(&(k, n)), None)], true).is_none());
        let run = |fast: bool| {
            let x = a.clone().traced(Gradients::leaky());
            let maps = [(broadcast(), None), (w.retaped::<OwnedTape<f64, Cpu>>(), None)];
            let [p, q] = if fast { affine_shared(x, maps) } else { composed_each(x, maps) };
            let outs = [p.as_vec(), q.as_vec()].concat();
            let grads = (p * q).sum().backward();
            [outs, grads.get(&a).as_vec(), grads.get(&row).as_vec(), grads.get(&w).as_vec()]
        };
        assert_eq!(run(true), run(false));
    }

    #[test]
    fn shared_input_maps_run_together_on_few_rows() {
        // Few rows and enough work per map: the three products' column blocks share one pass.
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("a thread pool")
            .install(|| check_shared(12, 256, 400, 7));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn affine_map_and_its_gradients_match_dfdx(m in 1usize..40, k in 1usize..40, n in 1usize..40, with_bias: bool, seed in 0u64..1000) {
            check::<f32>(m, k, n, with_bias, seed, 1e-4);
            check::<f64>(m, k, n, with_bias, seed, 1e-10);
        }

        #[test]
        fn shared_input_maps_and_their_gradients_match_separate_ones(
            m in 1usize..30,
            k in 1usize..30,
            n in 1usize..30,
            seed in 0u64..1000,
        ) {
            check_shared(m, k, n, seed);
        }
    }
}
