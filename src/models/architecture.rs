//! What the [`transformer!`](crate::transformer) macro declares about a model besides its type:
//! its dimensions, its parameter count and how to build it with its hyperparameters.

use super::{Layer, Summary};
use crate::error::Result;
use crate::nn::{set_dropout, set_layer_norm_eps};
use crate::FloatDtype;
use dfdx::nn::tensor_collection::TensorCollection;
use dfdx::nn::BuildOnDevice;
use dfdx::prelude::{Cpu, Device};

/// A declared architecture: the model type on any dtype and device, and its hyperparameters.
///
/// The [`transformer!`](crate::transformer) macro implements it for the `…Spec` type it emits
/// beside each model type.
pub trait Architecture {
    /// The model, with dtype `E` on device `Dev`.
    type Model<E: FloatDtype, Dev: Device<E>>: TensorCollection<E, Dev>
        + BuildOnDevice<Dev, E, Built = Self::Model<E, Dev>>
        + Clone;
    /// The model's name, as declared.
    const NAME: &'static str;
    /// `EncoderDecoder`, `EncoderOnly` or `DecoderOnly`.
    const KIND: &'static str;
    /// Model width.
    const D_MODEL: usize;
    /// Attention heads.
    const HEADS: usize;
    /// Width of each head.
    const HEAD_DIM: usize;
    /// Feed-forward width.
    const D_FF: usize;
    /// Longest sequence (positions).
    const MAX_LEN: usize;
    /// Trainable parameters.
    const NUM_PARAMS: usize;
    /// Dropout probability everywhere, applied by [`Architecture::build`].
    const DROPOUT: f64;
    /// Layer-norm epsilon, applied by [`Architecture::build`].
    const LAYER_NORM_EPS: f64;

    /// Builds the model on `dev` (random initialisation) with the declared dropout and layer-norm
    /// epsilon.
    fn build<E: FloatDtype, Dev: Device<E>>(dev: &Dev) -> Result<Self::Model<E, Dev>> {
        let mut model = crate::try_build::<Self::Model<E, Dev>, E, Dev>(dev)?;
        set_dropout(&mut model, Self::DROPOUT)?;
        set_layer_norm_eps(&mut model, Self::LAYER_NORM_EPS)?;
        Ok(model)
    }

    /// The layers in forward order, with their output shapes.
    fn layers() -> Vec<Layer>;

    /// The model's layers and parameters, from the type alone (nothing is allocated).
    fn summary() -> Summary {
        Summary::of::<Self::Model<f32, Cpu>, f32, Cpu>().with_layers(Self::layers())
    }
}
