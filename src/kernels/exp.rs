//! `exp` for the fused kernels' inner loops. libm's `expf` is a call per element that the
//! compiler cannot vectorise (it was 12% of a GPT training step, beside its `errno` path); this
//! one is branch-free arithmetic, so a loop of it compiles to SIMD.

use super::same;
use crate::FloatDtype;

/// `e^x`: for f32 the vectorisable [`exp_f32`], for every other dtype its own `exp`.
#[inline(always)]
pub(crate) fn exp<E: FloatDtype>(x: E) -> E {
    if same::<E, f32>() {
        // Both conversions are the identity for f32 and vanish once monomorphised.
        E::from(exp_f32(x.to_f32().unwrap_or(f32::NAN))).unwrap_or_else(E::nan)
    } else {
        x.exp()
    }
}

/// `e^x` in f32 within 2 ulp of the exact value for normal results (3 above `x = 88`), 0 below `-87.33` (where
/// the exact value is subnormal or 0; no subnormals), `inf` above `88.72`, NaN for NaN.
///
/// The usual reduction: `x = n ln2 + r` with `n = round(x / ln2)` and `|r| <= ln2 / 2`, `ln2`
/// split in two so `r` keeps its low bits; `e^r` from Cephes' degree-7 minimax polynomial;
/// `2^n` built from its exponent bits.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const MIN_NORMAL_ARG: f32 = -87.336_55; // ln(f32::MIN_POSITIVE)
    const MAX_ARG: f32 = 88.722_84; // ln(f32::MAX)
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let clamped = x.clamp(MIN_NORMAL_ARG, MAX_ARG);
    // n <= 127 keeps 2^n finite; at the top of the range that leaves |r| < 0.7, where the
    // polynomial is still within a few ulp.
    let shifted = (clamped * std::f32::consts::LOG2_E + ROUND).min(ROUND + 127.0);
    let n = shifted - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_2e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    let exponent = (shifted.to_bits() as i32 - ROUND.to_bits() as i32 + 127) as u32;
    let y = e_r * f32::from_bits(exponent << 23);
    if x < MIN_NORMAL_ARG {
        0.0
    } else if x > MAX_ARG {
        f32::INFINITY
    } else {
        y // NaN stays NaN through the arithmetic
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(got: f32, want: f64) -> f64 {
        let ulp = (want as f32).abs() * f32::EPSILON;
        (got as f64 - want).abs() / ulp as f64
    }

    #[test]
    fn within_a_few_ulp_of_the_exact_value_over_the_normal_range() {
        // ulps() counts in units of eps * |e^x|, up to twice the true ulp: a conservative bound.
        for (lo, hi, bound) in [(-87.33f32, 88.0f32, 2.0), (88.0, 88.72, 3.0)] {
            let mut worst: (f64, f32) = (0.0, 0.0);
            let steps = 2_000_000;
            for i in 0..=steps {
                let x = lo + (hi - lo) * (i as f32 / steps as f32);
                let err = ulps(exp_f32(x), (x as f64).exp());
                if err > worst.0 {
                    worst = (err, x);
                }
            }
            assert!(worst.0 <= bound, "{} ulp at x = {}", worst.0, worst.1);
        }
    }

    #[test]
    fn edges() {
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-1000.0), 0.0);
        assert_eq!(exp_f32(-87.4), 0.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(exp_f32(88.72).is_finite());
        assert!(ulps(exp_f32(1.0), 1f64.exp()) <= 1.0);
        assert_eq!(exp(0.5f64), 0.5f64.exp(), "other dtypes use their own exp");
    }
}
