// A size is an integer.
typeformer::transformer! {
    pub Bad: DecoderOnly { vocab: 256, d_model: 64, heads: four, d_ff: 256, layers: 2, max_len: 128 }
}

fn main() {}
