//! The position-wise affine map every projection uses, as one matrix product over all positions.

use super::BiasKind;
use crate::FloatDtype;
use dfdx::prelude::*;

/// `x W^T (+ b)` for `x: (B, S, K)` and a weight `W: (N, K)` (PyTorch's layout), computed as one
/// `(B*S, K) x (K, N)` product: dfdx would otherwise multiply each of the `B` sequences
/// separately, which is several times slower for short sequences. The bias is added only when
/// `Bias::ON`.
pub(crate) fn project<
    Bias: BiasKind,
    B: Dim,
    S: Dim,
    K: Dim,
    N: Dim,
    E: FloatDtype,
    Dev: Device<E>,
    T: Tape<E, Dev>,
>(
    x: Tensor<(B, S, K), E, Dev, T>,
    weight: Tensor<(N, K), E, Dev, T>,
    bias: Option<Tensor<(N,), E, Dev, T>>,
) -> Tensor<(B, S, N), E, Dev, T> {
    let (b, s, k) = *x.shape();
    let n = weight.shape().0;
    let flat = x.reshape_like(&(b.size() * s.size(), k)); // free when x is contiguous
    let bias = bias.filter(|_| Bias::ON);
    crate::kernels::affine(flat, weight.permute::<_, Axes2<1, 0>>(), bias) // (B*S, N)
        .reshape_like(&(b, s, n))
}
