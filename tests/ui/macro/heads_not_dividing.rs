// `heads` must divide `d_model` when `head_dim` is not given.
typeformer::transformer! {
    pub Bad: DecoderOnly { vocab: 256, d_model: 64, heads: 5, d_ff: 256, layers: 2, max_len: 128 }
}

fn main() {}
