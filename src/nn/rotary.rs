//! Rotary position embedding (Su et al., 2021, "RoFormer"), as Llama uses it: queries and keys
//! are rotated by an angle proportional to their position, in pairs of features, so that the
//! score of a query at position m and a key at position n depends on m - n alone.

use crate::error::{Error, Result};
use crate::shape::Heads;
use crate::FloatDtype;
use dfdx::prelude::*;

/// The cos/sin tables of rotary embeddings for heads of width `HD` over `positions` positions,
/// built once, in Hugging Face's rotate-half layout: feature `i` of the first half and feature
/// `i` of the second half form a pair, rotated by `p * base^(-2i/HD)` at position `p`.
///
/// **PyTorch equivalent**: `LlamaRotaryEmbedding` with `apply_rotary_pos_emb` in Hugging
/// Face transformers (`rope_theta` is `base`).
#[derive(Debug, Clone)]
pub struct RotaryEmbedding<const HD: usize, E: Dtype, Dev: Storage<E>> {
    /// `cos(p * theta_i)` for each position `p`, the `HD / 2` angles repeated for both halves.
    cos: Tensor<(usize, Const<HD>), E, Dev>,
    /// `sin(p * theta_i)`, likewise.
    sin: Tensor<(usize, Const<HD>), E, Dev>,
    /// `x -> rotate_half(x) = [-x2, x1]` as a matrix, so that the rotation is one product.
    rotate_half: Tensor<Rank2<HD, HD>, E, Dev>,
    base: f64,
}

impl<const HD: usize, E: FloatDtype, Dev: Device<E>> RotaryEmbedding<HD, E, Dev> {
    /// The tables for `positions` positions and angle base `base` (10,000 in RoFormer and
    /// Llama 2, 100,000 in SmolLM2, 500,000 in Llama 3). An error unless `HD` is even, `base`
    /// is finite and above 1, and `positions` is at least 1.
    pub fn new(dev: &Dev, positions: usize, base: f64) -> Result<Self> {
        if !HD.is_multiple_of(2) || HD == 0 {
            return Err(Error::InvalidConfig(format!(
                "rotary embeddings rotate pairs of features: head width {HD} is odd"
            )));
        }
        if !(base.is_finite() && base > 1.0) || positions == 0 {
            return Err(Error::InvalidConfig(format!(
                "rotary embeddings need a finite base above 1 and at least one position, got base {base} and {positions} positions"
            )));
        }
        crate::memory::check_memory("rotary positions", positions, 2 * (HD * std::mem::size_of::<E>()) as u64)?;
        let half = HD / 2;
        let mut cos = Vec::with_capacity(positions * HD);
        let mut sin = Vec::with_capacity(positions * HD);
        for p in 0..positions {
            for j in 0..HD {
                let theta = base.powf(-2.0 * (j % half) as f64 / HD as f64);
                let angle = p as f64 * theta;
                cos.push(crate::scalar::<E>(angle.cos()));
                sin.push(crate::scalar::<E>(angle.sin()));
            }
        }
        let mut rotate = vec![E::zero(); HD * HD];
        for j in 0..half {
            // out[j] = -x[j + half], out[j + half] = x[j]: row = input feature, column = output.
            rotate[(j + half) * HD + j] = crate::scalar::<E>(-1.0);
            rotate[j * HD + j + half] = E::one();
        }
        Ok(Self {
            cos: dev.tensor_from_vec(cos, (positions, Const)),
            sin: dev.tensor_from_vec(sin, (positions, Const)),
            rotate_half: dev.tensor_from_vec(rotate, (Const, Const)),
            base,
        })
    }

    /// The number of positions the tables cover.
    pub fn positions(&self) -> usize {
        self.cos.shape().0
    }

    /// The angle base.
    pub fn base(&self) -> f64 {
        self.base
    }

    /// `x: (B, H, S, HD)`, queries or keys of positions `offset .. offset + S`, rotated:
    /// `x * cos + rotate_half(x) * sin`. An error when those positions pass the tables' end.
    pub fn apply<B: Dim, const H: usize, S: Dim, T: Tape<E, Dev>>(
        &self,
        x: Heads<B, H, S, HD, E, Dev, T>,
        offset: usize,
    ) -> Result<Heads<B, H, S, HD, E, Dev, T>> {
        let shape = *x.shape();
        let len = shape.2.size();
        Error::check_positions(len, offset, self.positions())?;
        let rows = |table: &Tensor<(usize, Const<HD>), E, Dev>| {
            let part = table.clone().slice((offset..offset + len, ..)); // (S, HD)
            part.reshape_like(&(shape.2, Const::<HD>)).broadcast_like(&shape)
        };
        let (b, h, s) = (shape.0.size(), H, len);
        let rotated = x
            .retaped::<T>()
            .reshape_like(&(b * h * s, Const::<HD>))
            .matmul(self.rotate_half.clone().retaped::<T>())
            .reshape_like(&shape);
        Ok(x * rows(&self.cos) + rotated * rows(&self.sin))
    }
}

/// The position scheme of Llama-style models: rotary embeddings for heads of width `HD` over a
/// context of `P` positions, with angle base `BASE` (10,000 in Llama 2, 100,000 in SmolLM2,
/// 500,000 in Llama 3). No parameters; the embeddings pass through unchanged and each block
/// rotates its queries and keys with [`Self::tables`], built once on first use.
///
/// The base is part of the type, so a checkpoint made for another base is another model (and
/// the GGUF loader compares it with the file's `rope.freq_base`).
#[derive(Debug, Clone)]
pub struct RotaryPositions<const P: usize, const HD: usize, const BASE: usize, E: Dtype, Dev: Storage<E>> {
    tables: std::sync::OnceLock<RotaryEmbedding<HD, E, Dev>>,
}

impl<const P: usize, const HD: usize, const BASE: usize, E: Dtype, Dev: Storage<E>> Default
    for RotaryPositions<P, HD, BASE, E, Dev>
{
    fn default() -> Self {
        Self { tables: std::sync::OnceLock::new() }
    }
}

impl<const P: usize, const HD: usize, const BASE: usize, E: FloatDtype, Dev: Device<E>> TensorCollection<E, Dev>
    for RotaryPositions<P, HD, BASE, E, Dev>
{
    type To<E2: Dtype, D2: Device<E2>> = RotaryPositions<P, HD, BASE, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, Dev>>(visitor: &mut V) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields((), |()| RotaryPositions { tables: Default::default() })
    }
}

impl<const P: usize, const HD: usize, const BASE: usize, E: FloatDtype, Dev: Device<E>>
    RotaryPositions<P, HD, BASE, E, Dev>
{
    /// The cos/sin tables on `dev` (the device of the block asking), built on the first call.
    pub fn tables(&self, dev: &Dev) -> Result<&RotaryEmbedding<HD, E, Dev>> {
        if let Some(tables) = self.tables.get() {
            return Ok(tables);
        }
        let built = RotaryEmbedding::new(dev, P, BASE as f64)?;
        Ok(self.tables.get_or_init(|| built))
    }
}

impl<const P: usize, const D: usize, const HD: usize, const BASE: usize, E: FloatDtype, Dev: Device<E>>
    super::PositionScheme<D, E, Dev> for RotaryPositions<P, HD, BASE, E, Dev>
{
    const CONTEXT: usize = P;
    const NUM_PARAMS: usize = 0;
    fn describe() -> String {
        format!("rotary positions({P}, head width {HD}, base {BASE})")
    }
    fn embed<B: Dim, S: Dim, T: Tape<E, Dev>>(
        &self,
        x: crate::shape::Hidden<B, S, D, E, Dev, T>,
        offset: usize,
    ) -> Result<crate::shape::Hidden<B, S, D, E, Dev, T>> {
        // The rotation itself happens in each block's attention; checked here too so that a
        // sequence too long fails before any block runs.
        Error::check_positions(x.shape().1.size(), offset, P)?;
        Ok(x)
    }
}

build_on_device!([const P: usize, const HD: usize, const BASE: usize] RotaryPositions<P, HD, BASE, E, Dev>);
