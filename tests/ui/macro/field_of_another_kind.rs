// A decoder-only model has one stack.
typeformer::transformer! {
    pub Bad: DecoderOnly {
        vocab: 256, d_model: 64, heads: 4, d_ff: 256, encoder_layers: 2, layers: 2, max_len: 128,
    }
}

fn main() {}
