// Activations are relu, gelu or gelu_tanh.
typeformer::transformer! {
    pub Bad: DecoderOnly {
        vocab: 256, d_model: 64, heads: 4, d_ff: 256, layers: 2, max_len: 128, activation: swish,
    }
}

fn main() {}
