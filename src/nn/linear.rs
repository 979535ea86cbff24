//! The position-wise affine map every projection uses, as one matrix product over all positions.
//!
//! Projection weights are stored `(in, out)`, the transpose of PyTorch's `nn.Linear.weight`:
//! `x W` then reads the weight in place, where a weight stored `(out, in)` must be repacked by
//! the matrix product on every call (a third of the d-512 encoder's forward pass on the CPU).
//! The importers transpose PyTorch checkpoints on the way in.

use super::BiasKind;
use crate::kernels::AffineMap;
use crate::shape::Hidden;
use crate::FloatDtype;
use dfdx::prelude::*;

/// `x W (+ b)` for `x: (B, S, K)` and a weight `W: (K, N)`, computed as one `(B*S, K) x (K, N)`
/// product: dfdx would otherwise multiply each of the `B` sequences separately, which is several
/// times slower for short sequences. The bias is added only when `Bias::ON`.
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
    weight: Tensor<(K, N), E, Dev, T>,
    bias: Option<Tensor<(N,), E, Dev, T>>,
) -> Tensor<(B, S, N), E, Dev, T> {
    let [y] = project_shared::<Bias, 1, _, _, _, _, _, _, _>(x, [(weight, bias)]);
    y
}

/// `(B, S, N)` at every position: a projection's output.
type Positions<B, S, N, E, Dev, T> = Tensor<(B, S, N), E, Dev, T>;

/// [`project`] of one input through several weights (the query, key and value projections of
/// self-attention) as one parallel pass over their products; `x`'s tape goes with the first
/// output.
pub(crate) fn project_shared<
    Bias: BiasKind,
    const P: usize,
    B: Dim,
    S: Dim,
    K: Dim,
    N: Dim,
    E: FloatDtype,
    Dev: Device<E>,
    T: Tape<E, Dev>,
>(
    x: Tensor<(B, S, K), E, Dev, T>,
    maps: [AffineMap<K, N, E, Dev, T>; P],
) -> [Positions<B, S, N, E, Dev, T>; P] {
    let (b, s, k) = *x.shape();
    let flat = x.reshape_like(&(b.size() * s.size(), k)); // free when x is contiguous
    let maps = maps.map(|(weight, bias)| (weight, bias.filter(|_| Bias::ON)));
    crate::kernels::affine_shared(flat, maps).map(|y| {
        let n = y.shape().1;
        y.reshape_like(&(b, s, n)) // (B*S, N) -> (B, S, N)
    })
}

/// An affine map `x W + b` from width `I` to width `O`, applied at every position.
///
/// **PyTorch equivalent**: `torch.nn.Linear(I, O)`, whose `weight` is the transpose of ours.
/// The owning block visits the tensors (so that its [`BiasKind`] decides whether `bias` is a
/// parameter).
#[derive(Debug, Clone)]
pub struct Linear<const I: usize, const O: usize, E: Dtype, Dev: Storage<E>> {
    /// `(I, O)`: PyTorch's `[O, I]` weight, transposed.
    pub weight: Tensor<Rank2<I, O>, E, Dev>,
    /// `(O,)`.
    pub bias: Tensor<Rank1<O>, E, Dev>,
}

impl<const I: usize, const O: usize, E: FloatDtype, Dev: Device<E>> Linear<I, O, E, Dev> {
    /// `(B, S, I) -> (B, S, O)`, adding the bias when `Bias::ON`.
    pub fn forward<Bias: BiasKind, B: Dim, S: Dim, T: Tape<E, Dev>>(
        &self,
        x: Hidden<B, S, I, E, Dev, T>,
    ) -> Hidden<B, S, O, E, Dev, T> {
        project::<Bias, _, _, _, _, _, _, _>(x, self.weight.retaped::<T>(), Some(self.bias.retaped::<T>()))
    }
}
