// A misspelt field is named, with the closest valid one.
typeformer::transformer! {
    pub Bad: DecoderOnly { vocab: 256, d_model: 64, heads: 4, dff: 256, layers: 2, max_len: 128 }
}

fn main() {}
