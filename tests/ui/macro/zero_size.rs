// Sizes are at least 1.
typeformer::transformer! {
    pub Bad: EncoderOnly { vocab: 100, d_model: 64, heads: 4, d_ff: 256, layers: 0, max_len: 64 }
}

fn main() {}
