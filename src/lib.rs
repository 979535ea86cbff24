//! # typeformer
//!
//! The Transformer of "Attention Is All You Need" (Vaswani et al., 2017, arXiv 1706.03762) as a
//! compile-time, shape-checked tensor DSL on [`dfdx`].
//!
//! Model dimensions are const generics, so a mismatched projection, residual addition,
//! cross-attention memory or logits/labels pairing is a type error at `cargo check`. Batch and
//! sequence lengths stay run-time values.
//!
//! ## Axis legend
//! Shape comments in the code use these names:
//! - `B` batch, `S` sequence (`Sq` queries, `Sk` keys, `Ss` source, `St` target)
//! - `D` model width, `H` heads, `HD` head width, `F` feed-forward width
//! - `V` vocabulary (`SV` source, `TV` target), `P` positions, `L` layers
//!
//! ## Layout
//! - [`nn`] holds the building blocks, one per file;
//! - [`models`] holds whole architectures;
//! - [`train`] holds the loss, schedule, optimizer and training loop;
//! - [`generate`] holds decoding;
//! - [`data`] holds the built-in tasks;
//! - [`io`] holds checkpoints and loss curves.

/// `impl BuildOnDevice for $ty { type Built = Self; }`, so that `dev.build_module::<$ty, E>()`
/// works for a module whose type already names its dtype and device.
macro_rules! build_on_device {
    ([$($generics:tt)*] $ty:ty) => {
        impl<$($generics)*, E: $crate::FloatDtype, Dev: ::dfdx::tensor_ops::Device<E>> ::dfdx::nn::BuildOnDevice<Dev, E> for $ty {
            type Built = Self;
        }
    };
}

pub mod data;
pub mod error;
pub mod generate;
pub mod io;
pub mod models;
pub mod nn;
pub mod shape;
pub mod train;

pub use error::{Error, Result};

/// The README's code, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The element types a model can be built with: `f32` (the default) and `f64` (gradient checks).
pub trait FloatDtype: dfdx::shapes::Dtype + num_traits::Float + rand_distr::uniform::SampleUniform {}
impl<T: dfdx::shapes::Dtype + num_traits::Float + rand_distr::uniform::SampleUniform> FloatDtype for T {}

/// `x` as the element type `E` (every `FloatDtype` represents every finite `f64` approximately).
pub(crate) fn scalar<E: FloatDtype>(x: f64) -> E {
    E::from_f64(x).expect("a float dtype converts from any f64")
}

/// Everything needed to define, train and run a model.
///
/// It includes the dfdx vocabulary a user needs beside it (tensors, shapes, devices, tensor ops,
/// building and gradient traits), so one `use typeformer::prelude::*;` suffices.
pub mod prelude {
    pub use dfdx::nn::{BuildModule, BuildOnDevice, DeviceBuildExt, NumParams, ZeroGrads};
    pub use dfdx::shapes::*;
    pub use dfdx::tensor::*;
    pub use dfdx::tensor_ops::*;

    pub use crate::models::*;
    pub use crate::nn::*;
    pub use crate::shape::*;
    pub use crate::{Error, FloatDtype, Result};
}
