//! `transformer!`: parsing, validation (every mistake is an error at the offending token) and
//! expansion into type aliases over typeformer's building blocks.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::{braced, Attribute, Ident, Lit, Token, Visibility};

/// The three architecture kinds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    EncoderDecoder,
    EncoderOnly,
    DecoderOnly,
}

impl Kind {
    const ALL: [(&'static str, Kind); 3] = [
        ("EncoderDecoder", Kind::EncoderDecoder),
        ("EncoderOnly", Kind::EncoderOnly),
        ("DecoderOnly", Kind::DecoderOnly),
    ];

    fn name(self) -> &'static str {
        Kind::ALL.iter().find(|(_, k)| *k == self).map(|(n, _)| *n).unwrap_or("?")
    }
}

/// What a field's value must be.
#[derive(Clone, Copy)]
enum Expect {
    /// A positive integer.
    Size,
    /// A number.
    Float,
    Bool,
    /// One of these identifiers.
    Choice(&'static [&'static str]),
}

impl Expect {
    fn describe(self) -> String {
        match self {
            Expect::Size => "a positive integer".into(),
            Expect::Float => "a number".into(),
            Expect::Bool => "`true` or `false`".into(),
            Expect::Choice(options) => one_of(options),
        }
    }
}

fn one_of(options: &[&str]) -> String {
    let quoted: Vec<String> = options.iter().map(|o| format!("`{o}`")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.join(""),
    }
}

use Kind::{DecoderOnly as DO, EncoderDecoder as ED, EncoderOnly as EO};

/// Every field: its name, what it takes, the kinds it applies to, and what it means.
const FIELDS: &[(&str, Expect, &[Kind], &str)] = &[
    ("vocab", Expect::Size, &[ED, EO, DO], "the vocabulary size"),
    ("src_vocab", Expect::Size, &[ED], "the source vocabulary size"),
    ("tgt_vocab", Expect::Size, &[ED], "the target vocabulary size"),
    ("d_model", Expect::Size, &[ED, EO, DO], "the model width"),
    ("heads", Expect::Size, &[ED, EO, DO], "the number of attention heads"),
    ("head_dim", Expect::Size, &[ED, EO, DO], "the width of each head"),
    ("d_ff", Expect::Size, &[ED, EO, DO], "the feed-forward width"),
    ("layers", Expect::Size, &[EO, DO], "the number of layers"),
    ("encoder_layers", Expect::Size, &[ED], "the number of encoder layers"),
    ("decoder_layers", Expect::Size, &[ED], "the number of decoder layers"),
    ("max_len", Expect::Size, &[ED, EO, DO], "the number of positions"),
    ("token_types", Expect::Size, &[EO], "the number of token types (segments)"),
    ("positional", Expect::Choice(&["sinusoidal", "learned"]), &[ED, EO, DO], "the positional encoding"),
    ("norm", Expect::Choice(&["pre", "post"]), &[ED, EO, DO], "where layer norm sits"),
    ("final_norm", Expect::Bool, &[ED, EO, DO], "whether a layer norm follows each stack"),
    ("activation", Expect::Choice(&["relu", "gelu", "gelu_tanh"]), &[ED, EO, DO], "the feed-forward activation"),
    ("dropout", Expect::Float, &[ED, EO, DO], "the dropout probability"),
    ("tie_embeddings", Expect::Bool, &[ED, DO], "whether the output projection is the embedding"),
    ("layer_norm_eps", Expect::Float, &[ED, EO, DO], "the layer-norm epsilon"),
    ("bias", Expect::Bool, &[ED, EO, DO], "whether projections and norms have biases"),
    ("output_bias", Expect::Bool, &[DO], "whether an untied output projection has a bias"),
    ("pooler", Expect::Bool, &[EO], "whether the [CLS] pooler exists"),
];

/// A field's value as written.
enum Value {
    Int(syn::LitInt),
    Float(syn::LitFloat),
    Bool(syn::LitBool),
    Ident(Ident),
}

impl Value {
    fn span(&self) -> Span {
        match self {
            Value::Int(v) => v.span(),
            Value::Float(v) => v.span(),
            Value::Bool(v) => v.span,
            Value::Ident(v) => v.span(),
        }
    }
    /// A number's digits, without underscores or a type suffix.
    fn digits(&self) -> String {
        match self {
            Value::Int(v) => v.base10_digits().to_string(),
            Value::Float(v) => v.base10_digits().to_string(),
            _ => self.text(),
        }
    }
    fn text(&self) -> String {
        match self {
            Value::Int(v) => v.to_string(),
            Value::Float(v) => v.to_string(),
            Value::Bool(v) => v.value.to_string(),
            Value::Ident(v) => v.to_string(),
        }
    }
}

impl Parse for Value {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        if input.peek(Token![-]) {
            return Err(input.error("negative values are never valid here"));
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

struct Field {
    key: Ident,
    value: Value,
}

/// One `vis Name: Kind { field: value, ... }`.
struct Declaration {
    attrs: Vec<Attribute>,
    vis: Visibility,
    name: Ident,
    kind: Ident,
    fields: Vec<Field>,
}

/// The whole macro input: one or more declarations.
pub struct Declarations(Vec<Declaration>);

impl Parse for Declarations {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut out = Vec::new();
        while !input.is_empty() {
            let attrs = input.call(Attribute::parse_outer)?;
            let vis: Visibility = input.parse()?;
            let name: Ident = input.parse()?;
            input.parse::<Token![:]>()?;
            let kind: Ident = input.parse()?;
            let body;
            braced!(body in input);
            let mut fields = Vec::new();
            while !body.is_empty() {
                let key: Ident = body.parse()?;
                body.parse::<Token![:]>()?;
                let value: Value = body.parse()?;
                fields.push(Field { key, value });
                if body.is_empty() {
                    break;
                }
                body.parse::<Token![,]>()?;
            }
            out.push(Declaration { attrs, vis, name, kind, fields });
        }
        if out.is_empty() {
            return Err(input.error("expected a declaration such as `pub Name: DecoderOnly { vocab: 256, ... }`"));
        }
        Ok(Declarations(out))
    }
}

/// Accumulates errors so that one invocation reports all of its mistakes.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn add(&mut self, span: Span, message: impl std::fmt::Display) {
        let e = syn::Error::new(span, message);
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }
}

/// Edit distance, for "did you mean" hints.
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

fn suggestion(word: &str, options: impl Iterator<Item = &'static str>) -> String {
    options
        .filter(|o| distance(word, o) <= 2)
        .min_by_key(|o| distance(word, o))
        .map(|o| format!(" (did you mean `{o}`?)"))
        .unwrap_or_default()
}

/// A validated declaration.
struct Config {
    kind: Kind,
    src_vocab: usize,
    tgt_vocab: usize,
    d_model: usize,
    heads: usize,
    head_dim: usize,
    d_ff: usize,
    layers: (usize, usize),
    max_len: usize,
    token_types: usize,
    sinusoidal: bool,
    pre_norm: bool,
    final_norm: bool,
    activation: String,
    dropout: f64,
    tie: bool,
    eps: f64,
    bias: bool,
    output_bias: bool,
    pooler: bool,
}

impl Declaration {
    fn validate(&self) -> Result<Config, syn::Error> {
        let mut errors = Errors::default();
        let kind = match Kind::ALL.iter().find(|(n, _)| self.kind == n) {
            Some((_, k)) => *k,
            None => {
                let hint = suggestion(&self.kind.to_string(), Kind::ALL.iter().map(|(n, _)| *n));
                return Err(syn::Error::new(
                    self.kind.span(),
                    format!(
                        "unknown architecture kind `{}`{hint}: expected {}",
                        self.kind,
                        one_of(&Kind::ALL.map(|(n, _)| n))
                    ),
                ));
            }
        };
        let valid: Vec<&'static str> = FIELDS.iter().filter(|f| f.2.contains(&kind)).map(|f| f.0).collect();
        let mut given: Vec<(&'static str, &Field)> = Vec::new();
        for field in &self.fields {
            let key = field.key.to_string();
            match FIELDS.iter().find(|f| f.0 == key) {
                None => errors.add(
                    field.key.span(),
                    format!(
                        "unknown field `{key}`{}; {} takes: {}",
                        suggestion(&key, valid.iter().copied()),
                        kind.name(),
                        valid.join(", ")
                    ),
                ),
                Some((name, _, kinds, _)) if !kinds.contains(&kind) => {
                    let instead = match *name {
                        "encoder_layers" | "decoder_layers" => " (it has one stack: use `layers`)",
                        "layers" => " (give `encoder_layers` and `decoder_layers`)",
                        "src_vocab" | "tgt_vocab" => " (it has one vocabulary: use `vocab`)",
                        "tie_embeddings" => " (it has no output projection)",
                        _ => "",
                    };
                    errors.add(field.key.span(), format!("`{name}` does not apply to {}{instead}", kind.name()))
                }
                Some((name, ..)) if given.iter().any(|(n, _)| n == name) => {
                    errors.add(field.key.span(), format!("duplicate field `{name}`: it is already given above"))
                }
                Some((name, ..)) => given.push((name, field)),
            }
        }
        let get = |name: &str| given.iter().find(|(n, _)| *n == name).map(|(_, f)| *f);

        // Each given value has the right form.
        let mut sizes = std::collections::HashMap::new();
        let mut floats = std::collections::HashMap::new();
        let mut bools = std::collections::HashMap::new();
        let mut choices = std::collections::HashMap::new();
        for (name, field) in &given {
            let (_, expect, _, meaning) = FIELDS.iter().find(|f| f.0 == *name).expect("known field");
            let found = field.value.text();
            let wrong = |errors: &mut Errors| {
                errors.add(
                    field.value.span(),
                    format!("`{name}` ({meaning}) takes {}, found `{found}`", expect.describe()),
                )
            };
            match (expect, &field.value) {
                (Expect::Size, Value::Int(v)) => match v.base10_parse::<usize>() {
                    Ok(0) => errors.add(v.span(), format!("`{name}` ({meaning}) must be at least 1, found 0")),
                    Ok(n) => {
                        sizes.insert(*name, n);
                    }
                    Err(e) => errors.add(v.span(), e),
                },
                (Expect::Float, Value::Float(_) | Value::Int(_)) => match field.value.digits().parse::<f64>() {
                    Ok(x) => {
                        floats.insert(*name, (x, field.value.span()));
                    }
                    Err(e) => errors.add(field.value.span(), e),
                },
                (Expect::Bool, Value::Bool(v)) => {
                    bools.insert(*name, (v.value, v.span));
                }
                (Expect::Choice(options), Value::Ident(v)) => {
                    let text = v.to_string();
                    if options.contains(&text.as_str()) {
                        choices.insert(*name, (text, v.span()));
                    } else {
                        errors.add(
                            v.span(),
                            format!(
                                "unknown {name} `{text}`{}: expected {}",
                                suggestion(&text, options.iter().copied()),
                                one_of(options)
                            ),
                        );
                    }
                }
                _ => wrong(&mut errors),
            }
        }

        // Required fields.
        let mut required: Vec<(&str, &str)> = vec![("d_model", "the model width"), ("d_ff", "the feed-forward width")];
        required.push(("max_len", "the number of positions"));
        match kind {
            ED => {
                if get("vocab").is_none() && (get("src_vocab").is_none() || get("tgt_vocab").is_none()) {
                    required.push(("vocab", "the vocabulary size, or both `src_vocab` and `tgt_vocab`"));
                }
                required.push(("encoder_layers", "the number of encoder layers"));
                required.push(("decoder_layers", "the number of decoder layers"));
            }
            EO | DO => {
                required.push(("vocab", "the vocabulary size"));
                required.push(("layers", "the number of layers"));
            }
        }
        for (name, meaning) in required {
            if get(name).is_none() {
                errors.add(self.name.span(), format!("`{}` is missing `{name}` ({meaning})", self.name));
            }
        }
        if get("heads").is_none() && get("head_dim").is_none() {
            errors.add(self.name.span(), format!("`{}` is missing `heads` (or `head_dim`)", self.name));
        }
        if kind == ED && get("vocab").is_some() {
            for name in ["src_vocab", "tgt_vocab"] {
                if let Some(f) = get(name) {
                    errors.add(f.key.span(), format!("give either `vocab` (shared) or `{name}`, not both"));
                }
            }
        }
        if let Some(e) = errors.0.take() {
            return Err(e);
        }

        // Relations between fields.
        let size = |name: &str| sizes.get(name).copied();
        let d_model = size("d_model").expect("required");
        let (heads, head_dim) = match (size("heads"), size("head_dim")) {
            (Some(h), Some(hd)) => (h, hd),
            (Some(h), None) => {
                if d_model % h != 0 {
                    let divisors: Vec<String> =
                        (1..=d_model.min(64)).filter(|k| d_model % k == 0).map(|k| k.to_string()).collect();
                    errors.add(
                        get("heads").expect("given").value.span(),
                        format!(
                            "`heads: {h}` does not divide `d_model: {d_model}` ({d_model} / {h} is not whole); \
                             heads that divide it: {}, or give `head_dim` too",
                            divisors.join(", ")
                        ),
                    );
                }
                (h, d_model / h)
            }
            (None, Some(hd)) => {
                if d_model % hd != 0 {
                    errors.add(
                        get("head_dim").expect("given").value.span(),
                        format!("`head_dim: {hd}` does not divide `d_model: {d_model}`; give `heads` too"),
                    );
                }
                (d_model / hd, hd)
            }
            (None, None) => unreachable!("checked above"),
        };
        let default_positional = if kind == ED { "sinusoidal" } else { "learned" };
        let sinusoidal = choices.get("positional").map_or(default_positional, |c| c.0.as_str()) == "sinusoidal";
        if sinusoidal && d_model % 2 != 0 {
            let span = choices.get("positional").map_or(get("d_model").expect("given").value.span(), |c| c.1);
            errors.add(
                span,
                format!(
                    "sinusoidal positions need an even `d_model` (sine and cosine pairs), found {d_model}; \
                     use an even width or `positional: learned`"
                ),
            );
        }
        if let Some(&(p, span)) = floats.get("dropout") {
            if !(0.0..1.0).contains(&p) {
                errors.add(span, format!("`dropout` must be in [0, 1), found {p}"));
            }
        }
        if let Some(&(eps, span)) = floats.get("layer_norm_eps") {
            if !(eps > 0.0 && eps < 1.0) {
                errors.add(span, format!("`layer_norm_eps` must be in (0, 1), found {eps}"));
            }
        }
        if let (Some(&(true, span)), false) =
            (bools.get("output_bias"), bools.get("tie_embeddings").is_some_and(|b| !b.0))
        {
            errors.add(
                span,
                "`output_bias` applies to an untied output projection: add `tie_embeddings: false` (a tied one \
                 is the embedding, which has no bias)",
            );
        }
        if let Some(e) = errors.0 {
            return Err(e);
        }
        let vocab = size("vocab");
        let pre_norm = choices.get("norm").map_or(kind == DO, |c| c.0 == "pre");
        let default_activation = match kind {
            ED => "relu",
            EO => "gelu",
            DO => "gelu_tanh",
        };
        Ok(Config {
            kind,
            src_vocab: vocab.or(size("src_vocab")).expect("checked"),
            tgt_vocab: vocab.or(size("tgt_vocab")).expect("checked"),
            d_model,
            heads,
            head_dim,
            d_ff: size("d_ff").expect("required"),
            layers: match kind {
                ED => (size("encoder_layers").expect("required"), size("decoder_layers").expect("required")),
                _ => (size("layers").expect("required"), 0),
            },
            max_len: size("max_len").expect("required"),
            token_types: size("token_types").unwrap_or(2),
            sinusoidal,
            pre_norm,
            final_norm: bools.get("final_norm").map_or(pre_norm, |b| b.0),
            activation: choices.get("activation").map_or(default_activation.to_string(), |c| c.0.clone()),
            dropout: floats.get("dropout").map_or(0.1, |f| f.0),
            tie: bools.get("tie_embeddings").is_none_or(|b| b.0),
            bias: bools.get("bias").is_none_or(|b| b.0),
            output_bias: bools.get("output_bias").is_none_or(|b| b.0),
            pooler: bools.get("pooler").is_none_or(|b| b.0),
            eps: floats.get("layer_norm_eps").map_or(if kind == EO { 1e-12 } else { 1e-5 }, |f| f.0),
        })
    }

    fn expand(&self) -> TokenStream {
        let c = match self.validate() {
            Ok(c) => c,
            Err(e) => return e.to_compile_error(),
        };
        let Declaration { attrs, vis, name, .. } = self;
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
                quote!(#tf::models::DecoderOnly<#sv, #d, #h, #hd, #f, #le, #p, #norm, #activation, #positions, #output, E, Dev>)
            }
        };
        let layers_text = match c.kind {
            ED => format!("{le} + {ld} layers"),
            _ => format!("{le} layers"),
        };
        let vocab_text = if sv == tv { format!("vocabulary {sv}") } else { format!("vocabularies {sv} / {tv}") };
        let description = format!(
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
        );
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
        let span = name.span();
        quote_spanned! {span=>
            #(#attrs)*
            #[doc = ""]
            #[doc = #description]
            #vis type #name<E = f32, Dev = #tf::dfdx::prelude::Cpu #extra_params> = #ty;

            #[doc = #spec_doc]
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
}

impl Declarations {
    pub fn expand(&self) -> TokenStream {
        self.0.iter().map(Declaration::expand).collect()
    }
}
