//! Positional encodings (section 3.5): the paper's sinusoids, or a learned table.

use crate::error::{Error, Result};
use crate::shape::Hidden;
use crate::FloatDtype;
use dfdx::prelude::*;
use rand_distr::Uniform;
use std::marker::PhantomData;

/// How a [`PositionalEncoding`] gets its table.
pub trait PositionKind: 'static + Copy + Default + std::fmt::Debug + Send + Sync {
    /// Whether the table is a trained parameter.
    const LEARNED: bool;
    /// Short name, for summaries.
    const NAME: &'static str;
}

/// The fixed encoding of section 3.5:
/// `PE(pos, 2i) = sin(pos / 10000^(2i/D))`, `PE(pos, 2i+1) = cos(pos / 10000^(2i/D))`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sinusoidal;

/// A learned table of position vectors (as in BERT and GPT-2), initialised from U(-0.02, 0.02).
#[derive(Debug, Default, Clone, Copy)]
pub struct Learned;

impl PositionKind for Sinusoidal {
    const LEARNED: bool = false;
    const NAME: &'static str = "sinusoidal";
}
impl PositionKind for Learned {
    const LEARNED: bool = true;
    const NAME: &'static str = "learned";
}

/// The value of the sinusoidal encoding at `pos`, column `col`, for width `d`.
pub fn sinusoid(pos: usize, col: usize, d: usize) -> f64 {
    let i2 = (col - col % 2) as f64; // the "2i" of the formula
    let angle = pos as f64 / 10000f64.powf(i2 / d as f64);
    if col.is_multiple_of(2) {
        angle.sin()
    } else {
        angle.cos()
    }
}

/// Adds a position vector to every position of a `(B, S, D)` input: `x + PE[offset..offset+S]`.
///
/// # Generics
/// - `P`: the number of positions in the table (the longest sequence accepted).
/// - `D`: model width.
/// - `K`: [`Sinusoidal`] (a fixed table, not trained and not saved) or [`Learned`].
#[derive(Debug, Clone)]
pub struct PositionalEncoding<const P: usize, const D: usize, K, E: Dtype, Dev: Storage<E>> {
    /// `(P, D)`.
    pub table: Tensor<Rank2<P, D>, E, Dev>,
    kind: PhantomData<K>,
}

impl<const P: usize, const D: usize, K: PositionKind, E: FloatDtype, Dev: Device<E>> TensorCollection<E, Dev>
    for PositionalEncoding<P, D, K, E, Dev>
{
    type To<E2: Dtype, D2: Device<E2>> = PositionalEncoding<P, D, K, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, Dev>>(visitor: &mut V) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        let options = if K::LEARNED {
            TensorOptions::reset_with(|t| {
                let a = E::from_f64(0.02).unwrap();
                t.try_fill_with_distr(Uniform::new(-a, a))
            })
        } else {
            // A buffer: rebuilt from the formula, never updated by an optimizer.
            TensorOptions::detached(|t| {
                let table: Vec<E> = (0..P * D).map(|i| E::from_f64(sinusoid(i / D, i % D, D)).unwrap()).collect();
                t.copy_from(&table);
                Ok(())
            })
        };
        visitor.visit_fields(Self::tensor("weight", |s| &s.table, |s| &mut s.table, options), |table| {
            PositionalEncoding { table, kind: PhantomData }
        })
    }
}

impl<const P: usize, const D: usize, K: PositionKind, E: FloatDtype, Dev: Device<E>>
    PositionalEncoding<P, D, K, E, Dev>
{
    /// `x + PE[offset..offset + S]`. An error if `offset + S > P`.
    pub fn forward<B: Dim, S: Dim, T: Tape<E, Dev>>(
        &self,
        x: Hidden<B, S, D, E, Dev, T>,
        offset: usize,
    ) -> Result<Hidden<B, S, D, E, Dev, T>> {
        let (b, s, _) = *x.shape();
        let len = s.size();
        Error::check_positions(len, offset, P)?;
        let rows = self.table.retaped::<T>().slice((offset..offset + len, ..)); // (S, D)
        let rows = rows.reshape_like(&(s, Const::<D>)).broadcast_like(&(b, s, Const::<D>));
        Ok(x + rows)
    }
}

build_on_device!([const P: usize, const D: usize, K: PositionKind] PositionalEncoding<P, D, K, E, Dev>);
