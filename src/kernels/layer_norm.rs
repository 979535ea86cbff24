//! Layer norm over the last axis in one pass forward and one backward, in place of the ten
//! elementwise ops (mean, centre, square, mean, add, sqrt, divide, scale, shift and their
//! broadcasts) dfdx composes it from, each with its own buffer.

use super::add::accumulate;
use super::{cast, cast_ref, fast_cpu, record_backward, rows_per_task, simd_run, split_optional, Vectorized};
use super::{cpu, parallel, reduce};
use crate::FloatDtype;
use dfdx::prelude::*;

type Rows<B, S, const D: usize, E, Dev, T = NoneTape> = Tensor<(B, S, Const<D>), E, Dev, T>;
type Vector<const D: usize, E, Dev, T = NoneTape> = Tensor<(Const<D>,), E, Dev, T>;

/// `(x - mean) / sqrt(var + eps) * weight (+ bias)` over the last axis of `x: (B, S, D)`, with
/// the biased variance, as `torch.nn.LayerNorm`.
pub(crate) fn layer_norm<B: Dim, S: Dim, const D: usize, E: FloatDtype, Dev: Device<E>, T: Tape<E, Dev>>(
    x: Rows<B, S, D, E, Dev, T>,
    weight: Vector<D, E, Dev, T>,
    bias: Option<Vector<D, E, Dev, T>>,
    eps: f64,
) -> Rows<B, S, D, E, Dev, T> {
    if !fast_cpu::<E, Dev>() {
        return composed(x, weight, bias, eps);
    }
    let (x, tape_x) = x.split_tape();
    let (w, tape_w) = weight.split_tape();
    let (b, tape_b) = split_optional(bias);
    let Some(forward) = cpu_forward::<B, S, D, E>(cast_ref(&x), cast_ref(&w), b.as_ref().map(cast_ref), eps) else {
        return composed(x.put_tape(tape_x), w.put_tape(tape_w), b.map(|b| b.put_tape(tape_b)), eps);
    };
    let mut tape = tape_x.merge(tape_w).merge(tape_b);
    let Forward { out, mean, rstd } = forward;
    if T::OWNS_TAPE {
        record_backward(&mut tape, &out, move |grad_out, grads| {
            let inputs = (cast_ref(&x), cast_ref(&w), b.as_ref().map(cast_ref));
            cpu_backward::<B, S, D, E>(inputs, &mean, &rstd, grad_out, grads)
        });
    }
    cast::<Rows<B, S, D, E, Cpu>, Rows<B, S, D, E, Dev>>(out).put_tape(tape)
}

/// dfdx's own ops: every device and dtype.
fn composed<B: Dim, S: Dim, const D: usize, E: FloatDtype, Dev: Device<E>, T: Tape<E, Dev>>(
    x: Rows<B, S, D, E, Dev, T>,
    weight: Vector<D, E, Dev, T>,
    bias: Option<Vector<D, E, Dev, T>>,
    eps: f64,
) -> Rows<B, S, D, E, Dev, T> {
    let shape = *x.shape();
    let y = x.normalize::<Axis<2>>(eps) * weight.broadcast_like(&shape);
    match bias {
        Some(bias) => y + bias.broadcast_like(&shape),
        None => y,
    }
}

struct Forward<B: Dim, S: Dim, const D: usize, E: FloatDtype> {
    out: Rows<B, S, D, E, Cpu>,
    mean: Vec<E>,
    rstd: Vec<E>,
}

fn cpu_forward<B: Dim, S: Dim, const D: usize, E: FloatDtype>(
    x: &Rows<B, S, D, E, Cpu>,
    w: &Vector<D, E, Cpu>,
    b: Option<&Vector<D, E, Cpu>>,
    eps: f64,
) -> Option<Forward<B, S, D, E>> {
    let xs = cpu::dense(x)?;
    let ws = cpu::dense(w)?;
    let bs = match b {
        Some(b) => Some(cpu::dense(b)?),
        None => None,
    };
    let eps = E::from(eps)?;
    let rows = xs.len() / D;
    let per_task = rows_per_task(D);
    // Each block of rows returns its rows' means and reciprocal deviations.
    let (out, stats) = parallel::new_vec(rows * D, per_task * D, |block, ys| {
        let xs = &xs[block * per_task * D..][..ys.len()];
        let rows = xs.chunks_exact(D).zip(ys.chunks_exact_mut(D));
        rows.map(|(row, y)| simd_run(NormalizeRow { row, ws, bs, eps, y })).collect::<Vec<_>>()
    });
    let (mean, rstd): (Vec<E>, Vec<E>) = stats.into_iter().flatten().unzip();
    let out = x.device().try_tensor_from_vec(out, *x.shape()).ok()?;
    Some(Forward { out, mean, rstd })
}

/// Normalises one row into `y`; returns its mean and `1 / sqrt(var + eps)`.
struct NormalizeRow<'a, E> {
    row: &'a [E],
    ws: &'a [E],
    bs: Option<&'a [E]>,
    eps: E,
    y: &'a mut [E],
}

impl<E: FloatDtype> Vectorized for NormalizeRow<'_, E> {
    type Output = (E, E);

    #[inline(always)]
    fn run(self) -> (E, E) {
        let Self { row, ws, bs, eps, y } = self;
        let n = E::from(row.len()).expect("a width is a float");
        let mu = reduce::sum(row) / n;
        let var = reduce::sum_squared_deviations(row, mu) / n;
        let r = (var + eps).sqrt().recip();
        for (i, (y, &v)) in y.iter_mut().zip(row).enumerate() {
            *y = (v - mu) * r * ws[i] + bs.map_or(E::zero(), |bs| bs[i]);
        }
        (mu, r)
    }
}

/// The backward pass over a block of rows: adds each row's input gradient into `dx`; returns
/// the block's weight and bias gradients.
struct BackwardBlock<'a, const D: usize, E> {
    xs: &'a [E],
    g: &'a [E],
    dx: &'a mut [E],
    mean: &'a [E],
    rstd: &'a [E],
    ws: &'a [E],
}

impl<const D: usize, E: FloatDtype> Vectorized for BackwardBlock<'_, D, E> {
    type Output = (Vec<E>, Vec<E>);

    #[inline(always)]
    fn run(self) -> (Vec<E>, Vec<E>) {
        let Self { xs, g, dx, mean, rstd, ws } = self;
        let n = E::from(D).expect("a width is a float");
        let zeros = || vec![E::zero(); D];
        let (mut dw, mut db, mut xhat, mut gw) = (zeros(), zeros(), zeros(), zeros());
        for (r, ((row, g), dx)) in xs.chunks_exact(D).zip(g.chunks_exact(D)).zip(dx.chunks_exact_mut(D)).enumerate() {
            let (mean, rstd) = (mean[r], rstd[r]);
            for i in 0..D {
                xhat[i] = (row[i] - mean) * rstd;
                gw[i] = g[i] * ws[i];
                dw[i] += g[i] * xhat[i];
                db[i] += g[i];
            }
            let (mean_g, mean_gx) = (reduce::sum(&gw) / n, reduce::dot(&gw, &xhat) / n);
            for i in 0..D {
                dx[i] += rstd * (gw[i] - mean_g - xhat[i] * mean_gx);
            }
        }
        (dw, db)
    }
}

type Inputs<'a, B, S, const D: usize, E> =
    (&'a Rows<B, S, D, E, Cpu>, &'a Vector<D, E, Cpu>, Option<&'a Vector<D, E, Cpu>>);

/// With `x̂ = (x - mean) rstd` and `ĝ = g weight`:
/// `dx = rstd (ĝ - mean(ĝ) - x̂ mean(ĝ x̂))`, `dweight = Σ g x̂`, `dbias = Σ g`.
fn cpu_backward<B: Dim, S: Dim, const D: usize, E: FloatDtype>(
    (x, w, b): Inputs<'_, B, S, D, E>,
    mean: &[E],
    rstd: &[E],
    grad_out: &[E],
    grads: &mut Gradients<E, Cpu>,
) -> Result<(), CpuError> {
    let xs = cpu::dense(x).expect("checked in the forward pass");
    let ws = cpu::dense(w).expect("checked in the forward pass");
    let grad_x: &mut Vec<E> = grads.get_or_alloc_mut(x)?;
    // Fixed blocks of rows, each summing its own weight and bias gradients, added in block
    // order afterwards: the result does not depend on which thread runs which block.
    let block = rows_per_task(D) * D;
    let blocks = xs.chunks(block).zip(grad_out.chunks(block)).zip(grad_x.chunks_mut(block)).enumerate();
    let partials: Vec<(Vec<E>, Vec<E>)> = parallel::map(blocks, |(b, ((xs, g), dx))| {
        let first = b * block / D;
        simd_run(BackwardBlock::<D, E> { xs, g, dx, mean: &mean[first..], rstd: &rstd[first..], ws })
    });
    let (mut dw, mut db) = (vec![E::zero(); D], vec![E::zero(); D]);
    for (pw, pb) in &partials {
        accumulate(&mut dw, pw);
        accumulate(&mut db, pb);
    }
    accumulate(grads.get_or_alloc_mut(w)?, &dw);
    if let Some(b) = b {
        accumulate(grads.get_or_alloc_mut(b)?, &db);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The fused kernel against dfdx's composition: output and the gradients of x, weight, bias.
    fn check(b: usize, s: usize, with_bias: bool, seed: u64) {
        const D: usize = 24;
        let dev = Cpu::seed_from_u64(seed);
        let x: Tensor<(usize, usize, Const<D>), f64, Cpu> = dev.sample_normal_like(&(b, s, Const));
        let w: Tensor<Rank1<D>, f64, Cpu> = dev.sample_normal();
        let bias: Tensor<Rank1<D>, f64, Cpu> = dev.sample_normal();
        let probe: Tensor<(usize, usize, Const<D>), f64, Cpu> = dev.sample_normal_like(&(b, s, Const));
        assert!(cpu_forward::<_, _, D, _>(&x, &w, Some(&bias), 1e-5).is_some(), "the fused kernel must apply");
        let run = |fused: bool| {
            let xt = x.clone().traced(Gradients::leaky());
            let wt = w.retaped::<OwnedTape<f64, Cpu>>();
            let bt = with_bias.then(|| bias.retaped::<OwnedTape<f64, Cpu>>());
            let y = if fused { layer_norm(xt, wt, bt, 1e-5) } else { composed(xt, wt, bt, 1e-5) };
            let out = y.as_vec();
            let grads = (y * probe.clone()).sum().backward();
            let db = if with_bias { grads.get(&bias).as_vec() } else { vec![] };
            (out, grads.get(&x).as_vec(), grads.get(&w).as_vec(), db)
        };
        let (fused, reference) = (run(true), run(false));
        for (got, want) in
            [(fused.0, reference.0), (fused.1, reference.1), (fused.2, reference.2), (fused.3, reference.3)]
        {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.into_iter().zip(want) {
                assert!((g - w).abs() <= 1e-9 * (1.0 + w.abs()), "{g} vs {w}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn fused_layer_norm_and_its_gradients_match_dfdx(b in 1usize..4, s in 1usize..6, with_bias: bool, seed in 0u64..1000) {
            check(b, s, with_bias, seed);
        }
    }

    #[test]
    fn many_rows_split_into_blocks_match_dfdx() {
        check(3, 500, true, 7); // 1500 rows of 24: several blocks, the last one short
    }
}
