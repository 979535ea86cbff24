//! What a declaration may say: the three kinds, and every field with the value it takes and the
//! kinds it applies to. Validation and the error messages both read this one table.

/// The three architecture kinds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    EncoderDecoder,
    EncoderOnly,
    DecoderOnly,
}

impl Kind {
    pub const ALL: [(&'static str, Kind); 3] = [
        ("EncoderDecoder", Kind::EncoderDecoder),
        ("EncoderOnly", Kind::EncoderOnly),
        ("DecoderOnly", Kind::DecoderOnly),
    ];

    pub fn name(self) -> &'static str {
        Kind::ALL.iter().find(|(_, k)| *k == self).map(|(n, _)| *n).unwrap_or("?")
    }
}

/// What a field's value must be.
#[derive(Clone, Copy)]
pub enum Expect {
    /// A positive integer.
    Size,
    /// A number.
    Float,
    Bool,
    /// One of these identifiers.
    Choice(&'static [&'static str]),
}

impl Expect {
    pub fn describe(self) -> String {
        match self {
            Expect::Size => "a positive integer".into(),
            Expect::Float => "a number".into(),
            Expect::Bool => "`true` or `false`".into(),
            Expect::Choice(options) => super::errors::one_of(options),
        }
    }
}

/// One field of the table.
pub struct FieldSpec {
    pub name: &'static str,
    pub expect: Expect,
    pub kinds: &'static [Kind],
    /// What it means, for messages: "`heads` (the number of attention heads) takes ...".
    pub meaning: &'static str,
}

use Kind::{DecoderOnly as DO, EncoderDecoder as ED, EncoderOnly as EO};

const fn field(name: &'static str, expect: Expect, kinds: &'static [Kind], meaning: &'static str) -> FieldSpec {
    FieldSpec { name, expect, kinds, meaning }
}

/// Every field.
pub const FIELDS: &[FieldSpec] = &[
    field("vocab", Expect::Size, &[ED, EO, DO], "the vocabulary size"),
    field("src_vocab", Expect::Size, &[ED], "the source vocabulary size"),
    field("tgt_vocab", Expect::Size, &[ED], "the target vocabulary size"),
    field("d_model", Expect::Size, &[ED, EO, DO], "the model width"),
    field("heads", Expect::Size, &[ED, EO, DO], "the number of attention heads"),
    field("head_dim", Expect::Size, &[ED, EO, DO], "the width of each head"),
    field("d_ff", Expect::Size, &[ED, EO, DO], "the feed-forward width"),
    field("layers", Expect::Size, &[EO, DO], "the number of layers"),
    field("encoder_layers", Expect::Size, &[ED], "the number of encoder layers"),
    field("decoder_layers", Expect::Size, &[ED], "the number of decoder layers"),
    field("max_len", Expect::Size, &[ED, EO, DO], "the number of positions"),
    field("token_types", Expect::Size, &[EO], "the number of token types (segments)"),
    field("kv_heads", Expect::Size, &[DO], "the number of key/value heads (grouped-query attention)"),
    field("positional", Expect::Choice(&["sinusoidal", "learned", "rope"]), &[ED, EO, DO], "the positional encoding"),
    field("rope_base", Expect::Size, &[DO], "the angle base of rotary positions"),
    field(
        "norm",
        Expect::Choice(&["pre", "post", "rms"]),
        &[ED, EO, DO],
        "where layer norm sits (or `rms`: pre-norm RMSNorm)",
    ),
    field("final_norm", Expect::Bool, &[ED, EO, DO], "whether a layer norm follows each stack"),
    field(
        "activation",
        Expect::Choice(&["relu", "gelu", "gelu_tanh", "swiglu"]),
        &[ED, EO, DO],
        "the feed-forward activation",
    ),
    field("dropout", Expect::Float, &[ED, EO, DO], "the dropout probability"),
    field("tie_embeddings", Expect::Bool, &[ED, DO], "whether the output projection is the embedding"),
    field("layer_norm_eps", Expect::Float, &[ED, EO, DO], "the layer-norm epsilon"),
    field("rms_norm_eps", Expect::Float, &[DO], "the RMSNorm epsilon"),
    field("bias", Expect::Bool, &[ED, EO, DO], "whether projections and norms have biases"),
    field("output_bias", Expect::Bool, &[DO], "whether an untied output projection has a bias"),
    field("pooler", Expect::Bool, &[EO], "whether the [CLS] pooler exists"),
];

pub fn lookup(name: &str) -> Option<&'static FieldSpec> {
    FIELDS.iter().find(|f| f.name == name)
}

/// The fields `kind` takes, in table order.
pub fn fields_of(kind: Kind) -> impl Iterator<Item = &'static str> {
    FIELDS.iter().filter(move |f| f.kinds.contains(&kind)).map(|f| f.name)
}

/// Why a field of another kind is refused, with what to write instead.
pub fn instead(name: &str) -> &'static str {
    match name {
        "encoder_layers" | "decoder_layers" => " (it has one stack: use `layers`)",
        "layers" => " (give `encoder_layers` and `decoder_layers`)",
        "src_vocab" | "tgt_vocab" => " (it has one vocabulary: use `vocab`)",
        "tie_embeddings" => " (it has no output projection)",
        _ => "",
    }
}
