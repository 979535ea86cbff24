//! Collecting errors and wording them: what every check of `transformer!` reports through.

use proc_macro2::TokenStream;
use quote::ToTokens;

/// Every error of one invocation, so that it reports all of its mistakes at once, each at its own
/// tokens (rather than stopping at the first).
#[derive(Default)]
pub struct Errors(Vec<syn::Error>);

impl Errors {
    /// An error spanning `tokens` (all of them: `-8` underlines both tokens).
    pub fn add(&mut self, tokens: impl ToTokens, message: impl std::fmt::Display) {
        self.0.push(syn::Error::new_spanned(tokens, message));
    }

    pub fn push(&mut self, error: syn::Error) {
        self.0.push(error);
    }

    pub fn append(&mut self, other: Errors) {
        self.0.extend(other.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn to_compile_errors(&self) -> TokenStream {
        self.0.iter().map(syn::Error::to_compile_error).collect()
    }
}

/// `` `a`, `b` or `c` ``.
pub fn one_of(options: &[&str]) -> String {
    let quoted: Vec<String> = options.iter().map(|o| format!("`{o}`")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.join(""),
    }
}

/// The option closest to `word`, if it is near enough to be a typo of it (edit distance 2).
pub fn closest(word: &str, options: impl Iterator<Item = &'static str>) -> Option<&'static str> {
    options.filter(|o| distance(word, o) <= 2).min_by_key(|o| distance(word, o))
}

/// `" (did you mean `x`?)"`, or nothing when no option is near.
pub fn did_you_mean(guess: Option<&str>) -> String {
    guess.map(|o| format!(" (did you mean `{o}`?)")).unwrap_or_default()
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
