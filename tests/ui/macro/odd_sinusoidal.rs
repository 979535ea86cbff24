// Sinusoidal positions come in sine/cosine pairs: the width must be even.
typeformer::transformer! {
    pub Bad: DecoderOnly {
        vocab: 256, d_model: 63, heads: 3, d_ff: 256, layers: 2, max_len: 128, positional: sinusoidal,
    }
}

fn main() {}
