// Rotary positions come with Llama's blocks: RMSNorm and SwiGLU too.
typeformer::transformer! {
    pub Bad: DecoderOnly {
        vocab: 256, d_model: 64, heads: 8, d_ff: 128, layers: 2, max_len: 64, positional: rope,
    }
}

fn main() {}
