//! Procedural macros of [typeformer](https://crates.io/crates/typeformer), re-exported by it:
//! `transformer!` declares whole architectures, `#[derive(Model)]` gives hand-written model
//! structs parameter traversal, building and summaries. See their documentation in `typeformer`.

use proc_macro::TokenStream;

mod architecture;
mod derive_model;

/// Declares Transformer architectures; documented in `typeformer::transformer`.
#[proc_macro]
pub fn transformer(input: TokenStream) -> TokenStream {
    let declarations = syn::parse_macro_input!(input as architecture::Declarations);
    architecture::expand(declarations).into()
}

/// Parameter traversal, building and summaries for a hand-written model struct; documented in
/// `typeformer::Model`.
#[proc_macro_derive(Model, attributes(model))]
pub fn derive_model(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    derive_model::expand(input).unwrap_or_else(|e| e.to_compile_error()).into()
}
