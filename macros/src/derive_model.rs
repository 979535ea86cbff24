//! `#[derive(Model)]`: dfdx's `TensorCollection` (parameter traversal with dotted names, which
//! gives building, checkpoints, optimizers and summaries) and `BuildOnDevice` for a model struct.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, GenericParam, Ident, Member};

/// How one field takes part in traversal.
enum Role {
    /// A sub-module (anything that is a `TensorCollection`), visited under the field's name.
    Module,
    /// An `f64`/`f32` hyperparameter, saved in checkpoints, with this default.
    Scalar(TokenStream),
    /// Not visited; rebuilt with `Default::default()` (for `PhantomData` and the like).
    Skip,
}

/// A field's role and the name it is visited under (its own, or `#[model(rename = "...")]`).
fn role(field: &syn::Field, label: String) -> syn::Result<(Role, String)> {
    let mut role = Role::Module;
    let mut name = label;
    for attr in field.attrs.iter().filter(|a| a.path().is_ident("model")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("skip") {
                role = Role::Skip;
                Ok(())
            } else if meta.path.is_ident("scalar") {
                role = Role::Scalar(quote!(0.0));
                Ok(())
            } else if meta.path.is_ident("default") {
                let value: syn::Expr = meta.value()?.parse()?;
                role = Role::Scalar(quote!(#value));
                Ok(())
            } else if meta.path.is_ident("rename") {
                name = meta.value()?.parse::<syn::LitStr>()?.value();
                Ok(())
            } else {
                Err(meta.error(
                    "expected `#[model(skip)]`, `#[model(scalar)]`, `#[model(scalar, default = 0.1)]` or \
                     `#[model(rename = \"name\")]`",
                ))
            }
        })?;
    }
    Ok((role, name))
}

/// The struct's `#[model(..)]` attributes: the where-clause predicates of
/// `#[model(bound = "A: Activation, K: PositionKind")]` (what the traversal needs of type
/// parameters that the struct itself leaves unbounded), and the type parameters named by
/// `#[model(parts = "Pos, Block")]`: parameters that *are* sub-modules (a composed model's
/// positions or blocks), which the same struct over another dtype and device holds converted.
fn struct_options(input: &DeriveInput) -> syn::Result<(Vec<syn::WherePredicate>, Vec<Ident>)> {
    let mut out = Vec::new();
    let mut parts = Vec::new();
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("model")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("bound") {
                let text = meta.value()?.parse::<syn::LitStr>()?;
                let parsed = text
                    .parse_with(syn::punctuated::Punctuated::<syn::WherePredicate, syn::Token![,]>::parse_terminated)?;
                out.extend(parsed);
                Ok(())
            } else if meta.path.is_ident("parts") {
                let text = meta.value()?.parse::<syn::LitStr>()?;
                let parsed = text.parse_with(syn::punctuated::Punctuated::<Ident, syn::Token![,]>::parse_terminated)?;
                for part in parsed {
                    if !input.generics.type_params().any(|t| t.ident == part) {
                        return Err(syn::Error::new(part.span(), format!("`{part}` is not a type parameter of this struct")));
                    }
                    parts.push(part);
                }
                Ok(())
            } else {
                Err(meta.error(
                    "expected `#[model(bound = \"T: Trait, ...\")]` or `#[model(parts = \"Block, ...\")]` on the struct",
                ))
            }
        })?;
    }
    Ok((out, parts))
}

/// The dtype and device parameters: the parameter bounded by `Storage<X>` or `Device<X>` is the
/// device and `X` the dtype; without such a bound, the last two type parameters.
fn dtype_and_device(generics: &syn::Generics) -> Option<(Ident, Ident)> {
    let types: Vec<&syn::TypeParam> = generics.type_params().collect();
    for t in &types {
        for bound in &t.bounds {
            let syn::TypeParamBound::Trait(tb) = bound else { continue };
            let Some(last) = tb.path.segments.last() else { continue };
            if last.ident != "Storage" && last.ident != "Device" {
                continue;
            }
            if let syn::PathArguments::AngleBracketed(args) = &last.arguments {
                if let Some(syn::GenericArgument::Type(syn::Type::Path(arg))) = args.args.first() {
                    if let Some(dtype) = arg.path.get_ident() {
                        return Some((dtype.clone(), t.ident.clone()));
                    }
                }
            }
        }
    }
    match types[..] {
        [.., e, d] => Some((e.ident.clone(), d.ident.clone())),
        _ => None,
    }
}

/// Groups items into nested tuples of at most 6 (the most dfdx's `visit_fields` takes at once).
fn nest(items: Vec<TokenStream>) -> TokenStream {
    if items.len() <= 6 {
        return quote!((#(#items,)*));
    }
    let groups: Vec<TokenStream> = items.chunks(6).map(|c| nest(c.to_vec())).collect();
    nest(groups)
}

pub fn expand(input: DeriveInput) -> syn::Result<TokenStream> {
    let name = &input.ident;
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new(
            input.span(),
            "#[derive(Model)] needs a struct whose fields are the model's parts",
        ));
    };
    let (dtype, device) = dtype_and_device(&input.generics).ok_or_else(|| {
        syn::Error::new(
            input.generics.span(),
            "#[derive(Model)] needs a dtype and a device type parameter, the device bounded by the dtype, \
             as in `struct MyModel<E: Dtype, Dev: Storage<E>>`",
        )
    })?;
    let (dtype, device) = (&dtype, &device);
    let tf = quote!(::typeformer);
    let dfdx = quote!(#tf::dfdx);

    // impl generics: the struct's, with the dtype and device bounds typeformer's blocks need.
    let mut impl_generics = input.generics.clone();
    for param in impl_generics.params.iter_mut() {
        if let GenericParam::Type(t) = param {
            if t.ident == *dtype {
                t.bounds = syn::parse_quote!(#tf::FloatDtype);
            } else if t.ident == *device {
                t.bounds = syn::parse_quote!(#dfdx::prelude::Device<#dtype>);
            }
        }
    }
    let (mut extra, parts) = struct_options(&input)?;
    extra.extend(parts.iter().map(|p| -> syn::WherePredicate {
        syn::parse_quote!(#p: #dfdx::nn::tensor_collection::TensorCollection<#dtype, #device, To<#dtype, #device> = #p>)
    }));
    if !extra.is_empty() {
        impl_generics.make_where_clause().predicates.extend(extra);
    }
    let (impl_generics, _, where_clause) = impl_generics.split_for_impl();
    let (_, ty_generics, _) = input.generics.split_for_impl();
    // The same struct over another dtype and device.
    let to_args = input.generics.params.iter().map(|p| match p {
        GenericParam::Type(t) if t.ident == *dtype => quote!(E2__),
        GenericParam::Type(t) if t.ident == *device => quote!(D2__),
        GenericParam::Type(t) if parts.contains(&t.ident) => {
            let i = &t.ident;
            quote!(<#i as #dfdx::nn::tensor_collection::TensorCollection<#dtype, #device>>::To<E2__, D2__>)
        }
        GenericParam::Type(t) => {
            let i = &t.ident;
            quote!(#i)
        }
        GenericParam::Const(c) => {
            let i = &c.ident;
            quote!(#i)
        }
        GenericParam::Lifetime(l) => {
            let l = &l.lifetime;
            quote!(#l)
        }
    });

    let fields: Vec<(Member, &syn::Field)> = match &data.fields {
        Fields::Named(f) => f.named.iter().map(|x| (Member::Named(x.ident.clone().expect("named")), x)).collect(),
        Fields::Unnamed(f) => f.unnamed.iter().enumerate().map(|(i, x)| (Member::Unnamed(i.into()), x)).collect(),
        Fields::Unit => Vec::new(),
    };
    let mut visits = Vec::new();
    let mut bindings = Vec::new();
    let mut rebuild = Vec::new();
    // Every misused `#[model(..)]` is reported, not only the first.
    let mut errors: Option<syn::Error> = None;
    for (i, (member, field)) in fields.iter().enumerate() {
        let label = match member {
            Member::Named(id) => id.to_string(),
            Member::Unnamed(idx) => idx.index.to_string(),
        };
        let binding = format_ident!("field_{}", i);
        let (role, label) = match role(field, label) {
            Ok(role) => role,
            Err(e) => {
                match &mut errors {
                    Some(all) => all.combine(e),
                    None => errors = Some(e),
                }
                continue;
            }
        };
        match role {
            Role::Module => {
                visits.push(quote!(Self::module(#label, |s| &s.#member, |s| &mut s.#member)));
                bindings.push(quote!(#binding));
                rebuild.push(quote!(#member: #binding));
            }
            Role::Scalar(default) => {
                visits.push(quote!(Self::scalar(
                    #label,
                    |s| &s.#member,
                    |s| &mut s.#member,
                    #dfdx::nn::tensor_collection::ScalarOptions::from_default(#default)
                )));
                bindings.push(quote!(#binding));
                rebuild.push(quote!(#member: #binding));
            }
            Role::Skip => rebuild.push(quote!(#member: ::core::default::Default::default())),
        }
    }
    if let Some(e) = errors {
        return Err(e);
    }
    let visits = nest(visits);
    let bindings = nest(bindings);
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics #dfdx::nn::tensor_collection::TensorCollection<#dtype, #device> for #name #ty_generics #where_clause {
            type To<E2__: #dfdx::prelude::Dtype, D2__: #dfdx::prelude::Device<E2__>> = #name<#(#to_args),*>;

            fn iter_tensors<V__: #dfdx::nn::tensor_collection::ModuleVisitor<Self, #dtype, #device>>(
                visitor: &mut V__,
            ) -> ::core::result::Result<::core::option::Option<Self::To<V__::E2, V__::D2>>, V__::Err> {
                visitor.visit_fields(#visits, |#bindings| #name { #(#rebuild,)* })
            }
        }

        #[automatically_derived]
        impl #impl_generics #dfdx::nn::BuildOnDevice<#device, #dtype> for #name #ty_generics #where_clause {
            type Built = Self;
        }
    })
}
