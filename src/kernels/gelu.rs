//! The exact GELU, `x Φ(x)`, in one pass forward and one backward. dfdx 0.13's `accurate_gelu`
//! has a wrong derivative, which `nn::Gelu` corrects with four more ops and a second `exp`;
//! here the value and the slope `Φ(x) + x φ(x)` are computed directly.

use super::exp::exp;
use super::{cast, cast_ref, fast_cpu, record_backward, same, simd, PER_TASK};
use super::{cpu, parallel};
use crate::FloatDtype;
use dfdx::prelude::*;

/// The fused result, or the input back where the fused kernel does not apply.
type Fused<S, E, Dev, T> = Result<Tensor<S, E, Dev, T>, Tensor<S, E, Dev, T>>;

/// `x Φ(x)` elementwise, where `Φ` is the standard normal CDF. `Err(x)` where the fast CPU path
/// does not apply (another device or dtype, or a non-dense `x`); the caller then composes it.
pub(crate) fn gelu<S: Shape, E: FloatDtype, Dev: Device<E>, T: Tape<E, Dev>>(
    x: Tensor<S, E, Dev, T>,
) -> Fused<S, E, Dev, T> {
    if !fast_cpu::<E, Dev>() {
        return Err(x);
    }
    let (x, tape) = x.split_tape();
    let Some(out) = cpu_forward::<S, E>(cast_ref(&x)) else {
        return Err(x.put_tape(tape));
    };
    let mut tape = tape;
    if T::OWNS_TAPE {
        record_backward(&mut tape, &out, move |grad_out, grads| {
            let x: &Tensor<S, E, Cpu> = cast_ref(&x);
            let xs = cpu::dense(x).expect("checked in the forward pass");
            let grad_x: &mut Vec<E> = grads.get_or_alloc_mut(x)?;
            let chunks = grad_x.chunks_mut(PER_TASK).zip(grad_out.chunks(PER_TASK)).zip(xs.chunks(PER_TASK));
            parallel::for_each(chunks, |((d, g), x)| {
                simd(|| {
                    for ((d, &g), &v) in d.iter_mut().zip(g).zip(x) {
                        *d += g * slope(v);
                    }
                })
            });
            Ok(())
        });
    }
    Ok(cast::<Tensor<S, E, Cpu>, Tensor<S, E, Dev>>(out).put_tape(tape))
}

fn cpu_forward<S: Shape, E: FloatDtype>(x: &Tensor<S, E, Cpu>) -> Option<Tensor<S, E, Cpu>> {
    let xs = cpu::dense(x)?;
    let (out, _) = parallel::new_vec(xs.len(), PER_TASK, |i, y| {
        let x = &xs[i * PER_TASK..][..y.len()];
        simd(|| y.iter_mut().zip(x).for_each(|(y, &v)| *y = v * normal(v).0));
    });
    x.device().try_tensor_from_vec(out, *x.shape()).ok()
}

/// `d/dx x Φ(x) = Φ(x) + x φ(x)`.
fn slope<E: FloatDtype>(x: E) -> E {
    let (cdf, density) = normal(x);
    cdf + x * density
}

/// The standard normal CDF `Φ(x) = (1 + erf(x / √2)) / 2` and density `φ(x) = exp(-x²/2) / √(2π)`.
///
/// f64 uses libm's erf. f32 uses Abramowitz and Stegun's 7.1.26,
/// `erf(z) = 1 - (a₁t + a₂t² + a₃t³ + a₄t⁴ + a₅t⁵) exp(-z²)` with `t = 1 / (1 + p z)` for
/// `z >= 0` (absolute error below 1.5e-7, under f32's resolution of Φ near 1), which shares
/// its `exp(-z²) = exp(-x²/2)` with the density: one `exp` per element instead of libm's
/// `erff` (a third of a GPT training step's time) and an `exp`.
fn normal<E: FloatDtype>(x: E) -> (E, E) {
    let c = |v: f64| E::from(v).unwrap();
    let inv_sqrt_2pi = c(0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2);
    let z = x * c(std::f64::consts::FRAC_1_SQRT_2);
    let e = exp(-(z * z));
    let erf = if same::<E, f32>() {
        let t = (E::one() + c(0.327_591_1) * z.abs()).recip();
        let poly = t
            * (c(0.254_829_592)
                + t * (c(-0.284_496_736) + t * (c(1.421_413_741) + t * (c(-1.453_152_027) + t * c(1.061_405_429)))));
        (E::one() - poly * e).copysign(z)
    } else {
        E::from(libm::erf(z.to_f64().unwrap())).unwrap()
    };
    (c(0.5) * (E::one() + erf), e * inv_sqrt_2pi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Value against PyTorch's definition at known points, slope against central differences.
        #[test]
        fn gelu_value_and_slope(x in -8.0f64..8.0) {
            let dev = Cpu::default();
            let t: Tensor<Rank1<1>, f64, Cpu> = dev.tensor([x]);
            let grads = Gradients::leaky();
            let y = gelu(t.clone().traced(grads)).unwrap_or_else(|_| panic!("the fast path applies to f64 on the CPU"));
            let value = y.as_vec()[0];
            let g = y.sum().backward().get(&t).as_vec()[0];
            let h = 1e-5;
            let f = |x: f64| x * 0.5 * (1.0 + libm::erf(x / 2f64.sqrt()));
            prop_assert!((value - f(x)).abs() < 1e-12);
            prop_assert!((g - (f(x + h) - f(x - h)) / (2.0 * h)).abs() < 1e-6, "slope {} at {}", g, x);
        }
    }

    #[test]
    fn the_f32_normal_cdf_is_within_2e_7_of_libm() {
        for i in -1000..=1000 {
            let x = i as f32 * 0.01;
            let want = 0.5 * (1.0 + libm::erf(x as f64 / 2f64.sqrt()));
            let (got, density) = normal(x);
            assert!((got as f64 - want).abs() < 2e-7, "Phi({x}) = {got}, libm {want}");
            let phi = (-(x as f64).powi(2) / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
            assert!((density as f64 - phi).abs() < 1e-7, "phi({x})");
        }
    }

    #[test]
    fn gelu_matches_known_values_in_f32() {
        let dev = Cpu::default();
        let t: Tensor<Rank1<3>, f32, Cpu> = dev.tensor([-1.0, 0.5, 2.0]);
        let y = gelu(t).ok().unwrap().array();
        // torch.nn.functional.gelu(torch.tensor([-1.0, 0.5, 2.0]))
        for (got, want) in y.iter().zip([-0.158_655_26f32, 0.345_731_14, 1.954_499_7]) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }

    #[test]
    fn long_inputs_split_into_tasks_match_the_scalar_formulas() {
        let dev = Cpu::default();
        let n = 3 * PER_TASK + 5;
        let xs: Vec<f32> = (0..n).map(|i| (i as f32 * 0.731).sin() * 6.0).collect();
        let t = dev.tensor_from_vec(xs.clone(), (n,));
        let y = gelu(t.clone().traced(Gradients::leaky())).unwrap_or_else(|_| panic!("the fast path applies"));
        let values = y.as_vec();
        let g = y.sum().backward().get(&t).as_vec();
        for (i, &x) in xs.iter().enumerate() {
            assert_eq!(values[i], x * normal(x).0, "value at {i}");
            assert_eq!(g[i], slope(x), "slope at {i}");
        }
    }
}
