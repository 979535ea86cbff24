//! Output: a declaration's `Config` as a type alias over typeformer's building blocks, and a
//! `NameSpec` type with a constant for every dimension and `Architecture`.

use super::parse::Declaration;
use super::schema::Kind::{DecoderOnly as DO, EncoderDecoder as ED, EncoderOnly as EO};
use super::validate::Config;
use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};

/// The items of one declaration. Also called for a wrong declaration (with stand-in values, see
/// `validate`), so that uses of its names still resolve while its error is reported.
pub fn declaration(declaration: &Declaration, c: &Config) -> TokenStream {
    let Declaration { attrs, vis, name, .. } = declaration;
    let tf = quote!(::typeformer);
    let spec = format_ident!("{}Spec", name);
    let (sv, tv, d, h, hd, f, p, tt) =
        (c.src_vocab, c.tgt_vocab, c.d_model, c.heads, c.head_dim, c.d_ff, c.max_len, c.token_types);
    let (final_norm, bias) = (c.final_norm, c.bias);
    let norm = if c.pre_norm {
        quote!(#tf::nn::PreNorm<#final_norm, #bias>)
    } else {
        quote!(#tf::nn::PostNorm<#final_norm, #bias>)
    };
    let activation = match c.activation.as_str() {
        "relu" => quote!(#tf::nn::Relu),
        "gelu" => quote!(#tf::nn::Gelu),
        _ => quote!(#tf::nn::GeluTanh),
    };
    let positions = if c.sinusoidal { quote!(#tf::nn::Sinusoidal) } else { quote!(#tf::nn::Learned) };
    let (le, ld) = c.layers;
    let ty = match c.kind {
        ED => {
            let layout = match (c.tie, sv == tv) {
                (true, true) => quote!(#tf::models::SharedTied),
                (true, false) => quote!(#tf::models::SeparateTied),
                (false, _) => quote!(#tf::models::Separate),
            };
            quote!(#tf::models::EncoderDecoder<#sv, #tv, #d, #h, #hd, #f, #le, #ld, #p, #norm, #activation, #positions, #layout, E, Dev>)
        }
        EO => {
            quote!(#tf::models::Bert<#sv, #d, #h, #hd, #f, #le, #p, #tt, #norm, #activation, #positions, E, Dev, Pool>)
        }
        DO => {
            let output = match (c.tie, c.output_bias) {
                (true, _) => quote!(#tf::models::TiedOutput),
                (false, true) => quote!(#tf::models::UntiedOutput),
                (false, false) => quote!(#tf::models::UntiedOutputNoBias),
            };
            if c.llama {
                let (kvh, base) = (c.kv_heads, c.rope_base);
                let output =
                    if c.tie { quote!(#tf::models::TiedOutput) } else { quote!(#tf::models::UntiedOutputNoBias) };
                quote!(#tf::models::Llama<#sv, #d, #h, #kvh, #hd, #f, #le, #p, #base, #output, E, Dev>)
            } else {
                quote!(#tf::models::DecoderOnly<#sv, #d, #h, #hd, #f, #le, #p, #norm, #activation, #positions, #output, E, Dev>)
            }
        }
    };
    let layers_text = match c.kind {
        ED => format!("{le} + {ld} layers"),
        _ => format!("{le} layers"),
    };
    let vocab_text = if sv == tv { format!("vocabulary {sv}") } else { format!("vocabularies {sv} / {tv}") };
    let description = if c.llama {
        format!(
            "Llama-style DecoderOnly: vocabulary {sv}, d_model {d}, {h} query heads and {} key/value heads of {hd}, \
             SwiGLU {f}, {le} layers, {p} rotary positions of base {}, RMSNorm eps {:e}, {}.",
            c.kv_heads,
            c.rope_base,
            c.eps,
            if c.tie { "tied output projection" } else { "untied output projection without a bias" }
        )
    } else {
        format!(
            "{}: {vocab_text}, d_model {d}, {h} heads of {hd}, d_ff {f}, {layers_text}, {p} positions, {} positions, \
         {}-norm{}, {}, dropout {}, layer-norm eps {:e}{}{}.",
            c.kind.name(),
            if c.sinusoidal { "sinusoidal" } else { "learned" },
            if c.pre_norm { "pre" } else { "post" },
            if c.final_norm { " with a final norm" } else { "" },
            c.activation,
            c.dropout,
            c.eps,
            if c.bias { "" } else { ", no biases" },
            match c.kind {
                EO if c.pooler => String::new(),
                EO => ", no pooler".into(),
                _ if c.tie => ", tied output projection".into(),
                _ if c.output_bias => ", untied output projection".into(),
                _ => ", untied output projection without a bias".into(),
            }
        )
    };
    let spec_doc =
        format!("Hyperparameters of [`{name}`]: its dimensions, parameter count and build (`Architecture`).");
    let kind_name = c.kind.name();
    let name_text = name.to_string();
    let (dropout, eps) = (c.dropout, c.eps);
    let layer_consts = match c.kind {
        ED => quote! {
            /// Encoder layers.
            pub const ENCODER_LAYERS: usize = #le;
            /// Decoder layers.
            pub const DECODER_LAYERS: usize = #ld;
            /// Source vocabulary.
            pub const SRC_VOCAB: usize = #sv;
            /// Target vocabulary.
            pub const TGT_VOCAB: usize = #tv;
        },
        EO => quote! {
            /// Layers.
            pub const LAYERS: usize = #le;
            /// Vocabulary.
            pub const VOCAB: usize = #sv;
            /// Token types (segments).
            pub const TOKEN_TYPES: usize = #tt;
        },
        DO => quote! {
            /// Layers.
            pub const LAYERS: usize = #le;
            /// Vocabulary.
            pub const VOCAB: usize = #sv;
        },
    };
    // A BERT's pooler can be chosen per use (`MiniLmL6<f32, Cpu, NoPooler>`), defaulting to
    // what the declaration says.
    let extra_params = match c.kind {
        EO if c.pooler => quote!(, Pool = #tf::models::WithPooler),
        EO => quote!(, Pool = #tf::models::NoPooler),
        _ => quote!(),
    };
    // Lints the user allows on the model (`non_camel_case_types` for `SmolLm2_135M`) hold for
    // its spec type too.
    let allows = attrs.iter().filter(|a| a.path().is_ident("allow"));
    let span = name.span();
    quote_spanned! {span=>
        #(#attrs)*
        #[doc = ""]
        #[doc = #description]
        #vis type #name<E = f32, Dev = #tf::dfdx::prelude::Cpu #extra_params> = #ty;

        #[doc = #spec_doc]
        #(#allows)*
        #[derive(Debug, Clone, Copy, Default)]
        #vis struct #spec;

        impl #spec {
            /// Model width.
            pub const D_MODEL: usize = #d;
            /// Attention heads.
            pub const HEADS: usize = #h;
            /// Width of each head.
            pub const HEAD_DIM: usize = #hd;
            /// Feed-forward width.
            pub const D_FF: usize = #f;
            /// Positions.
            pub const MAX_LEN: usize = #p;
            #layer_consts
            /// Dropout probability.
            pub const DROPOUT: f64 = #dropout;
            /// Layer-norm epsilon.
            pub const LAYER_NORM_EPS: f64 = #eps;
            /// Trainable parameters.
            pub const NUM_PARAMS: usize = #name::<f32, #tf::dfdx::prelude::Cpu>::NUM_PARAMS;
        }

        // (rustc refuses `#[automatically_derived]` on the inherent impl above: trait impls only.)
        #[automatically_derived]
        impl #tf::models::Architecture for #spec {
            type Model<E: #tf::FloatDtype, Dev: #tf::dfdx::prelude::Device<E>> = #name<E, Dev>;
            const NAME: &'static str = #name_text;
            const KIND: &'static str = #kind_name;
            const D_MODEL: usize = #d;
            const HEADS: usize = #h;
            const HEAD_DIM: usize = #hd;
            const D_FF: usize = #f;
            const MAX_LEN: usize = #p;
            const NUM_PARAMS: usize = #spec::NUM_PARAMS;
            const DROPOUT: f64 = #dropout;
            const LAYER_NORM_EPS: f64 = #eps;
            fn layers() -> ::std::vec::Vec<#tf::models::Layer> {
                #name::<f32, #tf::dfdx::prelude::Cpu>::layers()
            }
        }
    }
}
