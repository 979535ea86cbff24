//! Meaning: each declaration checked against `schema` into the `Config` that `expand` writes
//! out, and the names of all declarations checked against each other.
//!
//! One mistake is one error. So a `Config` comes back even from a wrong declaration (stand-ins
//! fill what is missing or wrong, and an error says so): its items are still emitted, and the
//! user's later uses of their names add no errors. Checks that relate fields run only on a
//! declaration whose fields are all right, since a stand-in would make them report nonsense.

use super::errors::{closest, did_you_mean, one_of, Errors};
use super::parse::{Declaration, Field, Value};
use super::schema::{fields_of, instead, lookup, Expect, FieldSpec, Kind};
use std::collections::HashMap;

use Kind::{DecoderOnly as DO, EncoderDecoder as ED, EncoderOnly as EO};

/// A validated declaration: every dimension and choice, defaults applied.
pub struct Config {
    pub kind: Kind,
    pub src_vocab: usize,
    pub tgt_vocab: usize,
    pub d_model: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub d_ff: usize,
    /// Encoder and decoder layers; the second is 0 for a single-stack kind.
    pub layers: (usize, usize),
    pub max_len: usize,
    pub token_types: usize,
    pub sinusoidal: bool,
    pub pre_norm: bool,
    pub final_norm: bool,
    pub activation: String,
    pub dropout: f64,
    pub tie: bool,
    pub eps: f64,
    pub bias: bool,
    pub output_bias: bool,
    pub pooler: bool,
    /// Llama blocks (`positional: rope`, `norm: rms`, `activation: swiglu`).
    pub llama: bool,
    pub kv_heads: usize,
    pub rope_base: usize,
}

/// Whether each declaration's names are free. A second `Small`, or a model named `SmallSpec`
/// beside the `SmallSpec` that `Small` declares, is one error at the later name, and the later
/// declaration is not emitted: emitting both would add an error for every item and impl the two
/// share.
pub fn free_names(items: &[Declaration], errors: &mut Errors) -> Vec<bool> {
    let mut free = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let (name, spec) = (item.name.to_string(), format!("{}Spec", item.name));
        let earlier = items[..i].iter().zip(&free).filter(|(_, free)| **free).map(|(e, _)| e);
        let clash = earlier.map(|e| e.name.to_string()).find_map(|earlier| {
            if earlier == name {
                Some(format!("`{name}` is declared twice: give one of them another name"))
            } else if format!("{earlier}Spec") == name {
                Some(format!(
                    "`{name}` clashes with the `{name}` that `{earlier}` declares (its hyperparameters): \
                     rename one of the two models"
                ))
            } else if earlier == spec {
                Some(format!(
                    "`{name}` declares its hyperparameters as `{spec}`, which clashes with the model `{spec}` \
                     declared above: rename one of the two models"
                ))
            } else {
                None
            }
        });
        if let Some(message) = &clash {
            errors.add(&item.name, message);
        }
        free.push(clash.is_none());
    }
    free
}

/// Checks one declaration, reporting into `errors`; always returns a config to emit.
pub fn validate(decl: &Declaration, errors: &mut Errors) -> Config {
    let mut own = Errors::default();
    let mut quiet = Errors::default();
    let kind = kind_of(decl, &mut own);
    // With an unknown kind no field can be judged: only the kind is reported, and the fields
    // are read quietly, for the stand-in items.
    let sink = if own.is_empty() { &mut own } else { &mut quiet };
    let given = given_fields(decl, kind, sink);
    let values = read_values(&given, sink);
    check_complete(decl, kind, &given, sink);
    let config = config(kind, &values);
    if own.is_empty() {
        check_relations(&config, &values, &mut own);
    }
    errors.append(own);
    config
}

/// The declared kind; an unknown one is an error, and the kind it is nearest (or DecoderOnly)
/// stands in for it.
fn kind_of(decl: &Declaration, errors: &mut Errors) -> Kind {
    if let Some((_, kind)) = Kind::ALL.iter().find(|(n, _)| decl.kind == n) {
        return *kind;
    }
    let names = Kind::ALL.map(|(n, _)| n);
    let guess = closest(&decl.kind.to_string(), names.into_iter());
    errors.add(
        &decl.kind,
        format!("unknown architecture kind `{}`{}: expected {}", decl.kind, did_you_mean(guess), one_of(&names)),
    );
    Kind::ALL.iter().find(|(n, _)| Some(*n) == guess).map_or(DO, |(_, k)| *k)
}

/// A field the declaration gives for its kind.
struct Given<'a> {
    spec: &'static FieldSpec,
    field: &'a Field,
    /// Written as a misspelling of this field (and reported as such).
    guessed: bool,
}

fn given_fields<'a>(decl: &'a Declaration, kind: Kind, errors: &mut Errors) -> Vec<Given<'a>> {
    let valid: Vec<&'static str> = fields_of(kind).collect();
    let mut given: Vec<Given> = Vec::new();
    let mut guesses = Vec::new();
    for field in &decl.fields {
        let key = field.key.to_string();
        match lookup(&key) {
            None => {
                let guess = closest(&key, valid.iter().copied());
                errors.add(
                    &field.key,
                    format!(
                        "unknown field `{key}`{}; {} takes: {}",
                        did_you_mean(guess),
                        kind.name(),
                        valid.join(", ")
                    ),
                );
                guesses.extend(guess.and_then(lookup).map(|spec| (spec, field)));
            }
            Some(spec) if !spec.kinds.contains(&kind) => errors
                .add(&field.key, format!("`{}` does not apply to {}{}", spec.name, kind.name(), instead(spec.name))),
            Some(spec) if given.iter().any(|g| g.spec.name == spec.name) => {
                errors.add(&field.key, format!("duplicate field `{}`: it is already given above", spec.name))
            }
            Some(spec) => given.push(Given { spec, field, guessed: false }),
        }
    }
    // A misspelt field most likely is the field it is near, so it stands in for it (unless that
    // one is given as well): that field is not also reported missing, and the items get its value.
    for (spec, field) in guesses {
        if !given.iter().any(|g| g.spec.name == spec.name) {
            given.push(Given { spec, field, guessed: true });
        }
    }
    given
}

/// Each given value, read as what its field takes, with the tokens it came from (for spans).
#[derive(Default)]
struct Values<'a> {
    sizes: HashMap<&'static str, (usize, &'a Value)>,
    floats: HashMap<&'static str, (f64, &'a Value)>,
    bools: HashMap<&'static str, (bool, &'a Value)>,
    choices: HashMap<&'static str, (String, &'a Value)>,
}

impl Values<'_> {
    fn size(&self, name: &str) -> Option<usize> {
        self.sizes.get(name).map(|s| s.0)
    }
}

fn read_values<'a>(given: &[Given<'a>], errors: &mut Errors) -> Values<'a> {
    let mut values = Values::default();
    let mut quiet = Errors::default();
    for g in given {
        // A misspelt field's value was not asked for under this name: read it without judging.
        let errors = if g.guessed { &mut quiet } else { &mut *errors };
        let FieldSpec { name, expect, meaning, .. } = *g.spec;
        let value = &g.field.value;
        match (expect, value) {
            (Expect::Size, Value::Int(v)) => match v.base10_parse::<usize>() {
                Ok(0) => errors.add(v, format!("`{name}` ({meaning}) must be at least 1, found 0")),
                Ok(n) => {
                    values.sizes.insert(name, (n, value));
                }
                Err(e) => errors.push(e),
            },
            (Expect::Size, Value::Negative(..)) => {
                errors.add(value, format!("`{name}` ({meaning}) must be a positive integer, found {}", value.text()))
            }
            (Expect::Float, Value::Float(_) | Value::Int(_) | Value::Negative(..)) => {
                match value.digits().parse::<f64>() {
                    Ok(x) => {
                        values.floats.insert(name, (x, value));
                    }
                    Err(e) => errors.add(value, e),
                }
            }
            (Expect::Bool, Value::Bool(v)) => {
                values.bools.insert(name, (v.value, value));
            }
            (Expect::Choice(options), Value::Ident(v)) => {
                let text = v.to_string();
                if options.contains(&text.as_str()) {
                    values.choices.insert(name, (text, value));
                } else {
                    let guess = did_you_mean(closest(&text, options.iter().copied()));
                    errors.add(v, format!("unknown {name} `{text}`{guess}: expected {}", one_of(options)));
                }
            }
            _ => {
                errors.add(value, format!("`{name}` ({meaning}) takes {}, found `{}`", expect.describe(), value.text()))
            }
        }
    }
    values
}

/// Every required field is there, and no vocabulary is given two ways.
fn check_complete(decl: &Declaration, kind: Kind, given: &[Given], errors: &mut Errors) {
    let get = |name: &str| given.iter().find(|g| g.spec.name == name);
    let mut required: Vec<(&str, &str)> = vec![
        ("d_model", "the model width"),
        ("d_ff", "the feed-forward width"),
        ("max_len", "the number of positions"),
    ];
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
    let name = &decl.name;
    for (field, meaning) in required {
        if get(field).is_none() {
            errors.add(name, format!("`{name}` is missing `{field}` ({meaning})"));
        }
    }
    if get("heads").is_none() && get("head_dim").is_none() {
        errors.add(name, format!("`{name}` is missing `heads` (or `head_dim`)"));
    }
    if kind == ED && get("vocab").is_some_and(|g| !g.guessed) {
        for field in ["src_vocab", "tgt_vocab"] {
            if let Some(g) = get(field).filter(|g| !g.guessed) {
                errors.add(&g.field.key, format!("give either `vocab` (shared) or `{field}`, not both"));
            }
        }
    }
}

/// The config, defaults applied. Sizes that are missing or wrong (already reported) become 1, so
/// that the stand-in items are well-formed types.
fn config(kind: Kind, values: &Values) -> Config {
    let size = |name: &str| values.size(name).unwrap_or(1);
    let d_model = size("d_model");
    // Where only one of heads and head_dim is given, the other is d_model divided by it (whole,
    // or `check_relations` says so).
    let (heads, head_dim) = match (values.size("heads"), values.size("head_dim")) {
        (Some(h), Some(hd)) => (h, hd),
        (Some(h), None) => (h, (d_model / h).max(1)),
        (None, Some(hd)) => ((d_model / hd).max(1), hd),
        (None, None) => (1, d_model),
    };
    let choice = |name: &str| values.choices.get(name).map(|c| c.0.as_str());
    let flag = |name: &str| values.bools.get(name).map(|b| b.0);
    let float = |name: &str| values.floats.get(name).map(|f| f.0);
    let default_positional = if kind == ED { "sinusoidal" } else { "learned" };
    let pre_norm = choice("norm").map_or(kind == DO, |c| c != "post");
    let default_activation = match kind {
        ED => "relu",
        EO => "gelu",
        DO => "gelu_tanh",
    };
    let vocab = values.size("vocab");
    Config {
        kind,
        src_vocab: vocab.or(values.size("src_vocab")).unwrap_or(1),
        tgt_vocab: vocab.or(values.size("tgt_vocab")).unwrap_or(1),
        d_model,
        heads,
        head_dim,
        d_ff: size("d_ff"),
        layers: match kind {
            ED => (size("encoder_layers"), size("decoder_layers")),
            _ => (size("layers"), 0),
        },
        max_len: size("max_len"),
        token_types: values.size("token_types").unwrap_or(2),
        sinusoidal: choice("positional").unwrap_or(default_positional) == "sinusoidal",
        pre_norm,
        final_norm: flag("final_norm").unwrap_or(pre_norm),
        activation: choice("activation").unwrap_or(default_activation).to_string(),
        // Llama trains without dropout; the paper, BERT and GPT-2 with 0.1.
        dropout: float("dropout").unwrap_or(if choice("positional") == Some("rope") { 0.0 } else { 0.1 }),
        tie: flag("tie_embeddings").unwrap_or(true),
        bias: flag("bias").unwrap_or(true),
        output_bias: flag("output_bias").unwrap_or(true),
        pooler: flag("pooler").unwrap_or(true),
        eps: float("layer_norm_eps").or(float("rms_norm_eps")).unwrap_or(if kind == EO { 1e-12 } else { 1e-5 }),
        llama: choice("positional") == Some("rope"),
        kv_heads: values.size("kv_heads").unwrap_or(heads),
        rope_base: values.size("rope_base").unwrap_or(10_000),
    }
}

/// What relates fields to each other: head split, sinusoid pairs, ranges, a tied head's bias.
fn check_relations(c: &Config, values: &Values, errors: &mut Errors) {
    let d_model = c.d_model;
    match (values.sizes.get("heads"), values.sizes.get("head_dim")) {
        (Some(&(h, value)), None) if !d_model.is_multiple_of(h) => {
            let divisors: Vec<String> =
                (1..=d_model.min(64)).filter(|k| d_model.is_multiple_of(*k)).map(|k| k.to_string()).collect();
            errors.add(
                value,
                format!(
                    "`heads: {h}` does not divide `d_model: {d_model}` ({d_model} / {h} is not whole); \
                     heads that divide it: {}, or give `head_dim` too",
                    divisors.join(", ")
                ),
            );
        }
        (None, Some(&(hd, value))) if !d_model.is_multiple_of(hd) => {
            errors.add(value, format!("`head_dim: {hd}` does not divide `d_model: {d_model}`; give `heads` too"))
        }
        _ => {}
    }
    if c.sinusoidal && !d_model.is_multiple_of(2) {
        // At `positional: sinusoidal` where it is written, else at the width (the default chose it).
        let at = values.choices.get("positional").map(|c| c.1).or(values.sizes.get("d_model").map(|s| s.1));
        if let Some(at) = at {
            errors.add(
                at,
                format!(
                    "sinusoidal positions need an even `d_model` (sine and cosine pairs), found {d_model}; \
                     use an even width or `positional: learned`"
                ),
            );
        }
    }
    if let Some(&(p, value)) = values.floats.get("dropout") {
        if !(0.0..1.0).contains(&p) {
            errors.add(value, format!("`dropout` must be in [0, 1), found {p}"));
        }
    }
    if let Some(&(eps, value)) = values.floats.get("layer_norm_eps") {
        if !(eps > 0.0 && eps < 1.0) {
            errors.add(value, format!("`layer_norm_eps` must be in (0, 1), found {eps}"));
        }
    }
    check_llama(c, values, errors);
    let untied = values.bools.get("tie_embeddings").is_some_and(|b| !b.0);
    if let (Some(&(true, value)), false) = (values.bools.get("output_bias"), untied) {
        errors.add(
            value,
            "`output_bias` applies to an untied output projection: add `tie_embeddings: false` (a tied one \
             is the embedding, which has no bias)",
        );
    }
}

/// Llama blocks come whole: rotary positions, RMSNorm and SwiGLU together, only in a
/// DecoderOnly; their own fields (`kv_heads`, `rope_base`, `rms_norm_eps`) only with them, and
/// the fields of GPT blocks (`bias`, `final_norm`, `layer_norm_eps`) not at all.
fn check_llama(c: &Config, values: &Values, errors: &mut Errors) {
    const PARTS: [(&str, &str); 3] = [("positional", "rope"), ("norm", "rms"), ("activation", "swiglu")];
    let given: Vec<(&str, &str, &Value)> = PARTS
        .iter()
        .filter_map(|&(field, value)| values.choices.get(field).filter(|c| c.0 == value).map(|c| (field, value, c.1)))
        .collect();
    let Some(&(field, value, at)) = given.first() else {
        for own in ["kv_heads", "rope_base"] {
            if let Some(&(_, at)) = values.sizes.get(own) {
                errors.add(
                    at,
                    format!("`{own}` applies to Llama blocks: add `positional: rope, norm: rms, activation: swiglu`"),
                );
            }
        }
        if let Some(&(_, at)) = values.floats.get("rms_norm_eps") {
            errors.add(at, "`rms_norm_eps` applies to Llama blocks (`norm: rms`); GPT blocks take `layer_norm_eps`");
        }
        return;
    };
    if c.kind != DO {
        errors.add(at, format!("`{field}: {value}` builds Llama blocks, which only a DecoderOnly stacks"));
        return;
    }
    let missing: Vec<String> =
        PARTS.iter().filter(|p| !given.iter().any(|g| g.0 == p.0)).map(|(f, v)| format!("`{f}: {v}`")).collect();
    if !missing.is_empty() {
        errors.add(
            at,
            format!(
                "`{field}: {value}` builds Llama blocks (rotary grouped-query attention, RMSNorm, SwiGLU), which \
                 come whole: also give {}",
                missing.join(" and ")
            ),
        );
        return;
    }
    if let Some(&(kvh, at)) = values.sizes.get("kv_heads") {
        if !c.heads.is_multiple_of(kvh) {
            let divisors: Vec<String> =
                (1..=c.heads).filter(|k| c.heads.is_multiple_of(*k)).map(|k| k.to_string()).collect();
            errors.add(
                at,
                format!(
                    "`kv_heads: {kvh}` does not divide `heads: {}`: each key/value head serves a whole group of query \
                     heads; kv_heads that divide it: {}",
                    c.heads,
                    divisors.join(", ")
                ),
            );
        }
    }
    if !c.head_dim.is_multiple_of(2) {
        errors.add(at, format!("rotary positions rotate pairs of features: the head width {} is odd", c.head_dim));
    }
    for gpt in ["bias", "final_norm"] {
        if let Some(&(_, at)) = values.bools.get(gpt) {
            errors.add(at, format!("`{gpt}` does not apply to Llama blocks (no biases, always a final RMSNorm)"));
        }
    }
    if let Some(&(_, at)) = values.floats.get("layer_norm_eps") {
        errors.add(at, "Llama blocks have no layer norm: give `rms_norm_eps`");
    }
    if let Some(&(eps, at)) = values.floats.get("rms_norm_eps") {
        if !(eps > 0.0 && eps < 1.0) {
            errors.add(at, format!("`rms_norm_eps` must be in (0, 1), found {eps}"));
        }
    }
    if let Some(&(true, at)) = values.bools.get("output_bias") {
        errors.add(at, "Llama's output projection has no bias: leave out `output_bias`");
    }
}
