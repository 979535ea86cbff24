// A required field that is not given.
typeformer::transformer! {
    pub Bad: EncoderDecoder { vocab: 100, d_model: 64, heads: 4, d_ff: 256, encoder_layers: 2, max_len: 64 }
}

fn main() {}
