// A bias for an output projection that is tied to the embedding (which has none) is refused.
typeformer::transformer! {
    pub Bad: DecoderOnly { vocab: 256, d_model: 64, heads: 4, d_ff: 256, layers: 2, max_len: 128, output_bias: true }
}

fn main() {}
