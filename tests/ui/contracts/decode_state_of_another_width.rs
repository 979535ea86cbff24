// A decode state started by a width-64 encoder-decoder is not accepted by a width-32 one with the
// same heads and layers: the state carries the width of the model that made it.
use typeformer::prelude::*;

type Wide = EncoderDecoder<12, 12, 64, 4, 8, 64, 2, 2, 16, PostNorm, Relu, Sinusoidal, SharedTied, f32, Cpu>;
type Narrow = EncoderDecoder<12, 12, 32, 4, 8, 64, 2, 2, 16, PostNorm, Relu, Sinusoidal, SharedTied, f32, Cpu>;

fn main() {
    let dev = Cpu::default();
    let (wide, narrow) = (dev.build_module::<Wide, f32>(), dev.build_module::<Narrow, f32>());
    let src = Tokens::<12>::from_sequences(&[vec![3, 4]]).unwrap();
    let memory = wide.encode(&src, NoneTape).unwrap();
    let mut state = wide.start_decoding(&memory, src.lengths()).unwrap();
    let _ = narrow.decode_step(&mut state, &Tokens::<12>::from_sequences(&[vec![1]]).unwrap());
}
