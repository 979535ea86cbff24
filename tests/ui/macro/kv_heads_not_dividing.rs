// Each key/value head serves a whole group of query heads: `kv_heads` must divide `heads`.
typeformer::transformer! {
    pub Bad: DecoderOnly {
        vocab: 256, d_model: 64, heads: 8, kv_heads: 3, d_ff: 128, layers: 2, max_len: 64,
        positional: rope, norm: rms, activation: swiglu,
    }
}

fn main() {}
