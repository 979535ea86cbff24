//! `transformer!`, in three steps: `parse` reads the syntax, `validate` checks it against the
//! field table in `schema` into a `Config`, and `expand` writes that out as typed Rust.
//!
//! One mistake is one error, at the offending token. A declaration is emitted even when it has
//! errors (with stand-in values), so that the user's later uses of its names add none; only one
//! whose names are already taken is not.

mod errors;
mod expand;
mod parse;
mod schema;
mod validate;

pub use parse::Declarations;
use proc_macro2::TokenStream;

pub fn expand(declarations: Declarations) -> TokenStream {
    let Declarations { items, mut errors } = declarations;
    let free = validate::free_names(&items, &mut errors);
    let mut emitted = TokenStream::new();
    for (item, free) in items.iter().zip(free) {
        // Validated even when not emitted: its own mistakes are reported too.
        let config = validate::validate(item, &mut errors);
        if free {
            emitted.extend(expand::declaration(item, &config));
        }
    }
    let mut out = errors.to_compile_errors();
    out.extend(emitted);
    out
}
