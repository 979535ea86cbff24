//! Attention's `softmax(scale * scores + bias)` over the keys in one pass forward and one
//! backward, in place of dfdx's scale, broadcast-add and five-op softmax (max, subtract, exp,
//! sum, divide), each with its own buffer of `B x H x Sq x Sk`.

use super::exp::exp;
use super::{cast, cast_ref, fast_cpu, record_backward, rows_per_task, simd_run, Vectorized};
use super::{cpu, parallel, reduce};
use crate::FloatDtype;
use dfdx::prelude::*;

type Scores<B, const H: usize, Sq, Sk, E, Dev, T = NoneTape> = Tensor<(B, Const<H>, Sq, Sk), E, Dev, T>;

/// `softmax(scale * scores + bias)` over the last axis; `bias: (B, Sq, Sk)` is shared by the heads
/// and carries no gradient (it is a mask).
pub(crate) fn attention_softmax<B: Dim, const H: usize, Sq: Dim, Sk: Dim, E, Dev, T>(
    scores: Scores<B, H, Sq, Sk, E, Dev, T>,
    scale: E,
    bias: Option<&Tensor<(B, Sq, Sk), E, Dev>>,
) -> Scores<B, H, Sq, Sk, E, Dev, T>
where
    E: FloatDtype,
    Dev: Device<E>,
    T: Tape<E, Dev>,
{
    if !fast_cpu::<E, Dev>() {
        return composed(scores, scale, bias);
    }
    let (scores, tape) = scores.split_tape();
    let Some(out) = cpu_forward::<B, H, Sq, Sk, E>(cast_ref(&scores), scale, bias.map(cast_ref)) else {
        return composed(scores.put_tape(tape), scale, bias);
    };
    let out: Scores<B, H, Sq, Sk, E, Dev> = cast(out);
    let mut tape = tape;
    if T::OWNS_TAPE {
        let scores_id = cast_ref::<_, Scores<B, H, Sq, Sk, E, Cpu>>(&scores).ghost();
        let weights = out.clone();
        drop(scores); // the backward needs only the weights
        record_backward(&mut tape, cast_ref::<_, Scores<B, H, Sq, Sk, E, Cpu>>(&out), move |grad_out, grads| {
            let weights: &Scores<B, H, Sq, Sk, E, Cpu> = cast_ref(&weights);
            let y = cpu::dense(weights).expect("the forward pass wrote it densely");
            let grad_scores: &mut Vec<E> = grads.get_or_alloc_mut(&scores_id)?;
            backward_rows(y, grad_out, grad_scores, y.len() / weights.shape().3.size(), scale);
            Ok(())
        });
    }
    out.put_tape(tape)
}

/// dfdx's own ops: every device and dtype.
fn composed<B: Dim, const H: usize, Sq: Dim, Sk: Dim, E: FloatDtype, Dev: Device<E>, T: Tape<E, Dev>>(
    scores: Scores<B, H, Sq, Sk, E, Dev, T>,
    scale: E,
    bias: Option<&Tensor<(B, Sq, Sk), E, Dev>>,
) -> Scores<B, H, Sq, Sk, E, Dev, T> {
    let scores = scores * scale;
    let scores = match bias {
        Some(bias) => {
            let shape = *scores.shape();
            scores + bias.clone().broadcast_like::<_, Axis<1>>(&shape)
        }
        None => scores,
    };
    scores.softmax::<Axis<3>>()
}

fn cpu_forward<B: Dim, const H: usize, Sq: Dim, Sk: Dim, E: FloatDtype>(
    scores: &Scores<B, H, Sq, Sk, E, Cpu>,
    scale: E,
    bias: Option<&Tensor<(B, Sq, Sk), E, Cpu>>,
) -> Option<Scores<B, H, Sq, Sk, E, Cpu>> {
    let s = cpu::dense(scores)?;
    let bias = match bias {
        Some(bias) => Some(cpu::dense(bias)?),
        None => None,
    };
    let (_, _, sq, sk) = *scores.shape();
    let (sq, sk) = (sq.size(), sk.size());
    let per_task = rows_per_task(sk);
    let (out, _) = parallel::new_vec(s.len(), per_task * sk, |block, ys| {
        let xs = &s[block * per_task * sk..][..ys.len()];
        for (i, (x, y)) in xs.chunks_exact(sk).zip(ys.chunks_exact_mut(sk)).enumerate() {
            // row r is (batch, head, query) = (r / (H sq), _, r % sq); the bias skips the head
            let r = block * per_task + i;
            let mask = bias.map(|bias| {
                let (item, query) = (r / (H * sq), r % sq);
                &bias[(item * sq + query) * sk..][..sk]
            });
            simd_run(SoftmaxRow { x, mask, scale, y })
        }
    });
    scores.device().try_tensor_from_vec(out, *scores.shape()).ok()
}

/// `y = softmax(scale x + mask)` for one row.
struct SoftmaxRow<'a, E> {
    x: &'a [E],
    mask: Option<&'a [E]>,
    scale: E,
    y: &'a mut [E],
}

impl<E: FloatDtype> Vectorized for SoftmaxRow<'_, E> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Self { x, mask, scale, y } = self;
        for (k, y) in y.iter_mut().enumerate() {
            *y = x[k] * scale + mask.map_or(E::zero(), |m| m[k]);
        }
        let max = reduce::max(y);
        y.iter_mut().for_each(|y| *y = exp(*y - max)); // one SIMD loop; the sum apart
        let inv = reduce::sum(y).recip();
        y.iter_mut().for_each(|y| *y *= inv);
    }
}

/// `d += scale * y * (g - Σ g y)` for one row.
struct SoftmaxBackwardRow<'a, E> {
    y: &'a [E],
    g: &'a [E],
    scale: E,
    d: &'a mut [E],
}

impl<E: FloatDtype> Vectorized for SoftmaxBackwardRow<'_, E> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Self { y, g, scale, d } = self;
        let dot = reduce::dot(y, g);
        for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
            *d += scale * y * (g - dot);
        }
    }
}

/// `dscores += scale * y * (g - Σ g y)` for each row of `y` (the softmax weights).
fn backward_rows<E: FloatDtype>(y: &[E], g: &[E], grad_scores: &mut [E], rows: usize, scale: E) {
    let width = y.len() / rows.max(1);
    let block = rows_per_task(width) * width;
    let blocks = y.chunks(block).zip(g.chunks(block)).zip(grad_scores.chunks_mut(block));
    parallel::for_each(blocks, |((y, g), d)| {
        for ((y, g), d) in y.chunks_exact(width).zip(g.chunks_exact(width)).zip(d.chunks_exact_mut(width)) {
            simd_run(SoftmaxBackwardRow { y, g, scale, d })
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::MaskSpec;
    use proptest::prelude::*;

    fn check(b: usize, sq: usize, sk: usize, causal: bool, seed: u64) {
        const H: usize = 3;
        let dev = Cpu::seed_from_u64(seed);
        let scores: Scores<usize, H, usize, usize, f64, Cpu> = dev.sample_normal_like(&(b, Const, sq, sk));
        let probe: Scores<usize, H, usize, usize, f64, Cpu> = dev.sample_normal_like(&(b, Const, sq, sk));
        let lengths: Vec<usize> = (0..b).map(|i| sk - i % sk).collect();
        let spec = if causal { MaskSpec::causal(Some(&lengths)) } else { MaskSpec::padding(&lengths) };
        let bias = spec.bias::<_, _, _, f64, _>(&dev, (b, sq, sk));
        assert!(cpu_forward(&scores, 0.5, bias.as_ref()).is_some(), "the fused kernel must apply");
        let run = |fused: bool| {
            let s = scores.clone().traced(Gradients::leaky());
            let y = if fused { attention_softmax(s, 0.5, bias.as_ref()) } else { composed(s, 0.5, bias.as_ref()) };
            let out = y.as_vec();
            let grads = (y * probe.clone()).sum().backward();
            (out, grads.get(&scores).as_vec())
        };
        let (fused, reference) = (run(true), run(false));
        for (got, want) in [(fused.0, reference.0), (fused.1, reference.1)] {
            for (g, w) in got.into_iter().zip(want) {
                assert!((g - w).abs() <= 1e-12 * (1.0 + w.abs()), "{g} vs {w}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn fused_attention_softmax_and_its_gradient_match_dfdx(b in 1usize..4, sq in 1usize..7, sk in 1usize..7, causal: bool, seed in 0u64..1000) {
            check(b, sq, sk, causal, seed);
        }
    }

    #[test]
    fn many_rows_split_into_tasks_match_dfdx() {
        check(2, 700, 5, true, 3); // 4200 rows of 5: several parallel tasks
    }
}
