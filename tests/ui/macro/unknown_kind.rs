// Kinds are EncoderDecoder, EncoderOnly or DecoderOnly.
typeformer::transformer! {
    pub Bad: DecoderOnlyy { vocab: 256, d_model: 64, heads: 4, d_ff: 256, layers: 2, max_len: 128 }
}

fn main() {}
