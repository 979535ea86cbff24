//! Syntax: `vis Name: Kind { field: value, ... }`, any number of times, into plain data that keeps
//! every token for spans. Nothing here knows which fields exist; that is `validate`'s job.

use super::errors::Errors;
use proc_macro2::{TokenStream, TokenTree};
use quote::ToTokens;
use syn::parse::{Parse, ParseStream};
use syn::{braced, Attribute, Ident, Lit, Token, Visibility};

/// The whole macro input.
pub struct Declarations {
    pub items: Vec<Declaration>,
    /// Malformed fields. Each was skipped up to the next comma, so the declaration around it is
    /// still read and emitted: one syntax slip is one error, not one per later use of the name.
    pub errors: Errors,
}

/// One `vis Name: Kind { field: value, ... }`.
pub struct Declaration {
    pub attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub name: Ident,
    pub kind: Ident,
    pub fields: Vec<Field>,
}

pub struct Field {
    pub key: Ident,
    pub value: Value,
}

/// A field's value as written.
pub enum Value {
    Int(syn::LitInt),
    Float(syn::LitFloat),
    Bool(syn::LitBool),
    Ident(Ident),
    /// `-` and a number. Read rather than refused, so that the error can name the field.
    Negative(Token![-], Lit),
}

impl Value {
    /// A number's digits, without underscores or a type suffix.
    pub fn digits(&self) -> String {
        match self {
            Value::Int(v) => v.base10_digits().to_string(),
            Value::Float(v) => v.base10_digits().to_string(),
            Value::Negative(_, Lit::Int(v)) => format!("-{}", v.base10_digits()),
            Value::Negative(_, Lit::Float(v)) => format!("-{}", v.base10_digits()),
            _ => self.text(),
        }
    }

    /// As written.
    pub fn text(&self) -> String {
        match self {
            Value::Int(v) => v.to_string(),
            Value::Float(v) => v.to_string(),
            Value::Bool(v) => v.value.to_string(),
            Value::Ident(v) => v.to_string(),
            Value::Negative(_, v) => format!("-{}", v.to_token_stream()),
        }
    }
}

impl ToTokens for Value {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        match self {
            Value::Int(v) => v.to_tokens(tokens),
            Value::Float(v) => v.to_tokens(tokens),
            Value::Bool(v) => v.to_tokens(tokens),
            Value::Ident(v) => v.to_tokens(tokens),
            Value::Negative(minus, v) => {
                minus.to_tokens(tokens);
                v.to_tokens(tokens);
            }
        }
    }
}

impl Parse for Value {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        if input.peek(Token![-]) {
            let minus = input.parse()?;
            return match input.parse::<Lit>()? {
                v @ (Lit::Int(_) | Lit::Float(_)) => Ok(Value::Negative(minus, v)),
                other => Err(syn::Error::new(other.span(), "expected a number after `-`")),
            };
        }
        if input.peek(Ident) {
            return Ok(Value::Ident(input.parse()?));
        }
        match input.parse::<Lit>()? {
            Lit::Int(v) => Ok(Value::Int(v)),
            Lit::Float(v) => Ok(Value::Float(v)),
            Lit::Bool(v) => Ok(Value::Bool(v)),
            other => Err(syn::Error::new(other.span(), "expected a number, `true`/`false` or a name")),
        }
    }
}

impl Parse for Field {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let key = input.parse()?;
        input.parse::<Token![:]>()?;
        Ok(Field { key, value: input.parse()? })
    }
}

impl Parse for Declarations {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut items = Vec::new();
        let mut errors = Errors::default();
        while !input.is_empty() {
            // A broken header leaves no name to emit anything under: that one stays fatal.
            let attrs = input.call(Attribute::parse_outer)?;
            let vis: Visibility = input.parse()?;
            let name: Ident = input.parse()?;
            input.parse::<Token![:]>()?;
            let kind: Ident = input.parse()?;
            let body;
            braced!(body in input);
            let mut fields = Vec::new();
            while !body.is_empty() {
                match body.parse::<Field>() {
                    Ok(field) => fields.push(field),
                    Err(e) => {
                        errors.push(e);
                        skip_to_comma(&body)?;
                    }
                }
                if body.is_empty() {
                    break;
                }
                if let Err(e) = body.parse::<Token![,]>() {
                    errors.push(e);
                    // A forgotten comma before `field:` loses nothing: read on from that field.
                    if !(body.peek(Ident) && body.peek2(Token![:])) {
                        skip_to_comma(&body)?;
                        let _ = body.parse::<Option<Token![,]>>()?;
                    }
                }
            }
            items.push(Declaration { attrs, vis, name, kind, fields });
        }
        if items.is_empty() {
            return Err(input.error("expected a declaration such as `pub Name: DecoderOnly { vocab: 256, ... }`"));
        }
        Ok(Declarations { items, errors })
    }
}

/// Passes over the rest of a malformed field.
fn skip_to_comma(body: ParseStream) -> syn::Result<()> {
    while !body.is_empty() && !body.peek(Token![,]) {
        body.parse::<TokenTree>()?;
    }
    Ok(())
}
