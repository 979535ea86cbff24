// Dropout is a probability below 1.
typeformer::transformer! {
    pub Bad: DecoderOnly { vocab: 256, d_model: 64, heads: 4, d_ff: 256, layers: 2, max_len: 128, dropout: 1.5 }
}

fn main() {}
