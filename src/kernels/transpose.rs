//! Copies of a block of a matrix's columns into a contiguous row-major block, for products
//! whose right operand is stored transposed.
//!
//! Every linear layer's backward pass multiplies by its weight transposed (`dx = dy Wᵀ`), and a
//! tied output projection multiplies by the embedding table transposed. gemm reads such an
//! operand, column after column, one element out of each row at a time: on the d-512 encoder's
//! shapes those products ran at 100-110 GFLOP/s on two cores, against 165-185 for the same
//! products with the operand laid out row-major. Copied first, 64 columns at a time, through
//! 16x16 tiles transposed in AVX-512 registers, the copy costs a few percent of the product and
//! the products run at 150-180 GFLOP/s (a scratch program on the encoder's 36 weights in turn;
//! a scalar copy in the same tile order reached 145-160).

use super::cpu::Layout;

/// Side of the square tiles the copies go through.
const TILE: usize = 16;

/// Writes columns `first..first + width` of the view `src_layout` of `src` into `dst` as a
/// row-major `(rows, width)` block with row stride `stride`:
/// `dst[p * stride + j] = view[p, first + j]`. The caller has checked that the view lies in `src`
/// and that `dst` holds `rows * stride` elements, `width <= stride`.
pub(crate) fn pack_columns<E: Copy>(
    src: &[E],
    src_layout: Layout,
    first: usize,
    width: usize,
    dst: &mut [E],
    stride: usize,
) {
    let [rs, cs] = src_layout.strides;
    // Tile by tile: within a tile the reads walk down a column of the view (contiguous when
    // it is stored transposed) and the writes touch 16 rows of `dst`, which stay in L1.
    for j0 in (0..width).step_by(TILE) {
        for p0 in (0..src_layout.rows).step_by(TILE) {
            for j in j0..(j0 + TILE).min(width) {
                let col = (first + j) * cs;
                for p in p0..(p0 + TILE).min(src_layout.rows) {
                    dst[p * stride + j] = src[p * rs + col];
                }
            }
        }
    }
}

/// [`pack_columns`] for f32, whose full 16x16 tiles of a view stored transposed (row stride 1)
/// go through AVX-512 registers on CPUs that have it.
pub(crate) fn pack_columns_f32(
    src: &[f32],
    src_layout: Layout,
    first: usize,
    width: usize,
    dst: &mut [f32],
    stride: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if src_layout.strides[0] == 1 {
        if let Some(simd) = pulp::x86::V4::try_new() {
            let full_cols = width / TILE * TILE;
            let full_rows = src_layout.rows / TILE * TILE;
            simd.vectorize(Tiles { simd, src, ld: src_layout.strides[1], first, full_cols, full_rows, dst, stride });
            // The edges that do not fill a tile, by the scalar copy: the last columns (all rows),
            // then the last rows of the tiled columns (a view starting `full_rows` rows down).
            let rest = &mut dst[full_cols..];
            pack_columns(src, src_layout, first + full_cols, width - full_cols, rest, stride);
            let below = Layout { rows: src_layout.rows - full_rows, ..src_layout };
            pack_columns(&src[full_rows..], below, first, full_cols, &mut dst[full_rows * stride..], stride);
            return;
        }
    }
    pack_columns(src, src_layout, first, width, dst, stride);
}

/// The full tiles of [`pack_columns_f32`].
#[cfg(target_arch = "x86_64")]
struct Tiles<'a> {
    simd: pulp::x86::V4,
    src: &'a [f32],
    /// Distance between the view's columns in `src` (its rows are contiguous).
    ld: usize,
    first: usize,
    full_cols: usize,
    full_rows: usize,
    dst: &'a mut [f32],
    stride: usize,
}

#[cfg(target_arch = "x86_64")]
impl pulp::NullaryFnOnce for Tiles<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        use core::arch::x86_64::__m512;
        let Self { simd, src, ld, first, full_cols, full_rows, dst, stride } = self;
        for j0 in (0..full_cols).step_by(TILE) {
            for p0 in (0..full_rows).step_by(TILE) {
                // Row r of the tile is column first + j0 + r of the view, elements p0..p0 + 16.
                let rows: [__m512; TILE] = std::array::from_fn(|r| {
                    let at = (first + j0 + r) * ld + p0;
                    let row: [f32; TILE] = src[at..at + TILE].try_into().expect("a tile row");
                    pulp::cast(row)
                });
                for (q, column) in transpose16(simd, rows).into_iter().enumerate() {
                    let at = (p0 + q) * stride + j0;
                    dst[at..at + TILE].copy_from_slice(&pulp::cast::<__m512, [f32; TILE]>(column));
                }
            }
        }
    }
}

/// The transpose of a 16x16 matrix held as 16 rows: element `[q][r]` of the result is `[r][q]`
/// of the input. Three rounds of shuffles: 32-bit pairs, 64-bit pairs, then 128-bit lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn transpose16(simd: pulp::x86::V4, r: [core::arch::x86_64::__m512; TILE]) -> [core::arch::x86_64::__m512; TILE] {
    use core::arch::x86_64::__m512d;
    let avx = simd.avx512f;
    let pd = |x| pulp::cast::<_, __m512d>(x);
    let ps = |x| pulp::cast::<__m512d, _>(x);
    // t[2i], t[2i+1]: rows 2i and 2i+1 interleaved element by element.
    let t: [_; TILE] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            avx._mm512_unpacklo_ps(a, b)
        } else {
            avx._mm512_unpackhi_ps(a, b)
        }
    });
    // u[4i + j]: rows 4i..4i+4, element j of each 128-bit lane (lane l holds columns 4l + j).
    let u: [_; TILE] = std::array::from_fn(|x| {
        let (i, j) = (x / 4, x % 4);
        let (a, b) = (t[4 * i + j / 2], t[4 * i + 2 + j / 2]);
        if j % 2 == 0 {
            ps(avx._mm512_unpacklo_pd(pd(a), pd(b)))
        } else {
            ps(avx._mm512_unpackhi_pd(pd(a), pd(b)))
        }
    });
    // Column 4l + j gathers lane l of u[j], u[4 + j], u[8 + j], u[12 + j].
    let mut out = r;
    for j in 0..4 {
        let (a, b, c, d) = (u[j], u[4 + j], u[8 + j], u[12 + j]);
        let ab_even = avx._mm512_shuffle_f32x4::<0x88>(a, b); // lanes a0 a2 b0 b2
        let ab_odd = avx._mm512_shuffle_f32x4::<0xdd>(a, b); // lanes a1 a3 b1 b3
        let cd_even = avx._mm512_shuffle_f32x4::<0x88>(c, d);
        let cd_odd = avx._mm512_shuffle_f32x4::<0xdd>(c, d);
        out[j] = avx._mm512_shuffle_f32x4::<0x88>(ab_even, cd_even); // lane 0 of each
        out[8 + j] = avx._mm512_shuffle_f32x4::<0xdd>(ab_even, cd_even); // lane 2
        out[4 + j] = avx._mm512_shuffle_f32x4::<0x88>(ab_odd, cd_odd); // lane 1
        out[12 + j] = avx._mm512_shuffle_f32x4::<0xdd>(ab_odd, cd_odd); // lane 3
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(src: &[f32], l: Layout, first: usize, width: usize, stride: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; l.rows * stride];
        for p in 0..l.rows {
            for j in 0..width {
                out[p * stride + j] = src[p * l.strides[0] + (first + j) * l.strides[1]];
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn packed_columns_hold_the_views_elements(
            rows in 1usize..70,
            cols in 1usize..90,
            first_frac in 0.0f64..1.0,
            transposed: bool,
            padding in 0usize..3,
        ) {
            // A (rows, cols) view, stored transposed (row stride 1, padded columns) or row-major.
            let ld = if transposed { rows + padding } else { cols + padding };
            let layout = if transposed {
                Layout { rows, cols, strides: [1, ld] }
            } else {
                Layout { rows, cols, strides: [ld, 1] }
            };
            let src: Vec<f32> = (0..layout.extent().unwrap()).map(|i| i as f32 * 0.5 - 3.0).collect();
            let first = ((cols - 1) as f64 * first_frac) as usize;
            let width = (cols - first).min(64);
            let stride = 64;
            let want = naive(&src, layout, first, width, stride);
            for simd in [true, false] {
                let mut got = vec![f32::NAN; rows * stride];
                if simd {
                    pack_columns_f32(&src, layout, first, width, &mut got, stride);
                } else {
                    pack_columns(&src, layout, first, width, &mut got, stride);
                }
                for p in 0..rows {
                    for j in 0..width {
                        let (g, w) = (got[p * stride + j], want[p * stride + j]);
                        prop_assert!(g == w, "({p}, {j}): {g} vs {w} (simd {simd}, {layout:?}, first {first})");
                    }
                }
            }
        }
    }

    #[test]
    fn a_16x16_tile_transposes() {
        // Values that name their position, so any misplaced element is visible.
        let src: Vec<f32> = (0..256).map(|x| x as f32).collect();
        let layout = Layout { rows: 16, cols: 16, strides: [1, 16] };
        let mut dst = vec![0.0; 256];
        pack_columns_f32(&src, layout, 0, 16, &mut dst, 16);
        for p in 0..16 {
            for j in 0..16 {
                assert_eq!(dst[p * 16 + j], src[j * 16 + p]);
            }
        }
    }
}
