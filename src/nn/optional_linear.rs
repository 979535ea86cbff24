//! A projection a model type may leave out: an untied output head (absent when tied to the
//! embedding), BERT's pooler (absent in `BertForMaskedLM`). Whether it exists, and whether it
//! has a bias, is part of the type, so parameter counts and checkpoints follow from the type.

use super::init::uniform_fan_in;
use super::Linear;
use crate::FloatDtype;
use dfdx::prelude::*;
use std::marker::PhantomData;

/// Whether an [`OptionalLinear`] exists, and with a bias.
pub trait Presence: 'static + Copy + Default + std::fmt::Debug + Send + Sync {
    /// The projection exists.
    const PRESENT: bool;
    /// It has a trained bias (otherwise a fixed zero that is never trained, saved or counted).
    const BIAS: bool;
}

/// A [`Linear<I, O>`](Linear) (weight `(I, O)`, as every projection of the crate) when
/// `P::PRESENT`, nothing otherwise.
#[derive(Debug, Clone)]
pub struct OptionalLinear<const I: usize, const O: usize, P, E: Dtype, Dev: Storage<E>> {
    /// The projection, `None` when the type has none.
    pub linear: Option<Linear<I, O, E, Dev>>,
    presence: PhantomData<P>,
}

const PRESENT: &str = "the type says the projection exists";

impl<const I: usize, const O: usize, P: Presence, E: FloatDtype, Dev: Device<E>> TensorCollection<E, Dev>
    for OptionalLinear<I, O, P, E, Dev>
{
    type To<E2: Dtype, D2: Device<E2>> = OptionalLinear<I, O, P, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, Dev>>(visitor: &mut V) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        if !P::PRESENT {
            return visitor.visit_fields((), |()| OptionalLinear { linear: None, presence: PhantomData });
        }
        // Visited in place: the tensors are `<field>.weight` and `<field>.bias`, as a Linear's.
        visitor.visit_fields(
            (
                Self::tensor(
                    "weight",
                    |s| &s.linear.as_ref().expect(PRESENT).weight,
                    |s| &mut s.linear.as_mut().expect(PRESENT).weight,
                    uniform_fan_in::<_, _, _, I>(),
                ),
                Self::tensor(
                    "bias",
                    |s| &s.linear.as_ref().expect(PRESENT).bias,
                    |s| &mut s.linear.as_mut().expect(PRESENT).bias,
                    if P::BIAS {
                        uniform_fan_in::<_, _, _, I>()
                    } else {
                        TensorOptions::detached(|t| t.try_fill_with_zeros())
                    },
                ),
            ),
            |(weight, bias)| OptionalLinear { linear: Some(Linear { weight, bias }), presence: PhantomData },
        )
    }
}

impl<const I: usize, const O: usize, P: Presence, E: FloatDtype, Dev: Device<E>> OptionalLinear<I, O, P, E, Dev> {
    /// Trainable parameters, from the type alone.
    pub const NUM_PARAMS: usize = if P::PRESENT { I * O + if P::BIAS { O } else { 0 } } else { 0 };

    /// Logits `(B, S, O)`: through the projection when it exists, else through `tied`, the
    /// token embedding it is tied to.
    pub fn logits<B: Dim, S: Dim, T: Tape<E, Dev>>(
        &self,
        h: Tensor<(B, S, Const<I>), E, Dev, T>,
        tied: &super::TokenEmbedding<O, I, E, Dev>,
    ) -> Tensor<(B, S, Const<O>), E, Dev, T> {
        match &self.linear {
            Some(_) => self.try_forward(h).expect("the projection exists"),
            None => tied.logits(h),
        }
    }

    /// `x W + b` over the last axis when the projection exists; `None` otherwise.
    pub fn try_forward<B: Dim, S: Dim, T: Tape<E, Dev>>(
        &self,
        x: crate::shape::Hidden<B, S, I, E, Dev, T>,
    ) -> Option<crate::shape::Hidden<B, S, O, E, Dev, T>> {
        let linear = self.linear.as_ref()?;
        Some(if P::BIAS {
            linear.forward::<super::WithBias, _, _, _>(x)
        } else {
            linear.forward::<super::NoBias, _, _, _>(x)
        })
    }
}
build_on_device!([const I: usize, const O: usize, P: Presence] OptionalLinear<I, O, P, E, Dev>);
