// A generation state of a 2-block language model is not accepted by a 4-block one: the state
// carries its number of blocks (it used to step only the first 2 blocks, silently).
use typeformer::prelude::*;

type Shallow = DecoderOnly<20, 16, 2, 8, 32, 2, 12, PreNorm, GeluTanh, Learned, TiedOutput, f32, Cpu>;
type Deep = DecoderOnly<20, 16, 2, 8, 32, 4, 12, PreNorm, GeluTanh, Learned, TiedOutput, f32, Cpu>;

fn main() {
    let dev = Cpu::default();
    let (shallow, deep) = (dev.build_module::<Shallow, f32>(), dev.build_module::<Deep, f32>());
    let mut state = shallow.start();
    let _ = deep.step(&mut state, &Tokens::<20>::from_sequences(&[vec![3, 4]]).unwrap());
}
