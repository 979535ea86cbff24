//! Defining models of your own, and training them briefly.
//!
//! 1. A GPT declared in a few lines with `transformer!` learns to continue counting sequences.
//! 2. A model the macro cannot describe, written by hand from the same typed parts with
//!    `#[derive(Model)]`: an encoder-only sequence tagger (pre-LN, GELU, learned positions) that
//!    labels every position with whether its symbol occurred earlier in the sequence.
//!
//! Every width is checked by the compiler in both. Run with
//! `cargo run --release --example custom_model`.

use dfdx::nn::Module;
use rand::{rngs::StdRng, Rng, SeedableRng};
use typeformer::prelude::*;
use typeformer::train::{label_smoothed_cross_entropy, training_tape, Adam, AdamConfig, WarmupSchedule};

const VOCAB: usize = 12; // 0 is padding, symbols are 1..12
const D: usize = 32;
const TAGS: usize = 2; // 0: first occurrence, 1: seen before
const MAX_LEN: usize = 16;

typeformer::transformer! {
    /// A small GPT over 16 tokens.
    Counter: DecoderOnly {
        vocab: 16, d_model: 32, heads: 4, d_ff: 64, layers: 2, max_len: 24,
        positional: learned, norm: pre, activation: gelu_tanh, dropout: 0.0,
    }
}

/// Trains [`Counter`] on sequences `k, k+1, k+2, ...` (mod 16) and has it continue one.
fn train_counter(dev: &Cpu) -> typeformer::Result<()> {
    let mut model: Counter = CounterSpec::build(dev)?;
    println!("Counter: {} parameters", CounterSpec::NUM_PARAMS);
    let mut opt = Adam::new(AdamConfig::default())?;
    let schedule = WarmupSchedule { d_model: CounterSpec::D_MODEL, warmup: 50, factor: 1.0 };
    let mut rng = StdRng::seed_from_u64(2);
    let mut grads = model.alloc_grads();
    for step in 1..=200 {
        let sequences: Vec<Vec<usize>> = (0..32)
            .map(|_| {
                let start = rng.gen_range(0..16);
                (0..17).map(|i| (start + i) % 16).collect()
            })
            .collect();
        let inputs: Vec<Vec<usize>> = sequences.iter().map(|s| s[..16].to_vec()).collect();
        let targets: Vec<Vec<usize>> = sequences.iter().map(|s| s[1..].to_vec()).collect();
        let logits = model.forward_traced(&Tokens::from_sequences(&inputs)?, grads)?;
        let loss = label_smoothed_cross_entropy(logits, &Tokens::from_sequences(&targets)?, 0.0)?;
        if step % 50 == 0 {
            println!("step {step}: loss {:.4}", loss.as_vec()[0]);
        }
        grads = typeformer::train::backward(loss)?;
        opt.update(&mut model, &grads, schedule.lr(step))?;
        model.zero_grads(&mut grads);
    }
    let mut sequence = vec![12, 13, 14];
    for _ in 0..8 {
        let logits = model.forward(&Tokens::<16>::from_sequences(std::slice::from_ref(&sequence))?)?.as_vec();
        let last = &logits[(sequence.len() - 1) * 16..][..16];
        sequence.push(typeformer::generate::argmax(last));
    }
    println!("Counter continues [12, 13, 14] as {sequence:?}");
    Ok(())
}

/// A tagger: embeddings + learned positions, a 2-layer pre-LN encoder, and a linear head.
/// `#[derive(Model)]` gives it parameter traversal with dotted names (`encoder.layers.0.ffn...`),
/// building, checkpoints, optimizers and summaries.
#[derive(Debug, Clone, typeformer::Model)]
struct Tagger<E: Dtype, Dev: Storage<E>> {
    embed: TokenEmbedding<VOCAB, D, E, Dev>,
    pos: PositionalEncoding<MAX_LEN, D, Learned, E, Dev>,
    encoder: Encoder<D, 4, 8, 64, 2, PreNorm, Gelu, E, Dev>,
    head: dfdx::nn::modules::Linear<D, TAGS, E, Dev>,
}

impl<E: FloatDtype, Dev: Device<E>> Tagger<E, Dev> {
    /// Tag logits `(B, S, TAGS)` for every position of `tokens`.
    fn forward<T: Tape<E, Dev>>(
        &self,
        tokens: &Tokens<VOCAB>,
        tape: T,
    ) -> typeformer::Result<Logits<usize, usize, TAGS, E, Dev, T>> {
        let ids = tokens.to_tensor(self.embed.weight.device()).put_tape(tape);
        let x = self.pos.forward(self.embed.forward(ids), 0)?; // (B, S, D)
        let h = self.encoder.forward(x, &MaskSpec::padding(tokens.lengths()))?; // (B, S, D)
        Ok(self.head.forward(h)) // (B, S, TAGS)
    }
}

/// A batch of random sequences and their tags.
fn batch(rng: &mut StdRng, size: usize) -> (Tokens<VOCAB>, Tokens<TAGS>) {
    let mut sources = Vec::new();
    let mut tags = Vec::new();
    for _ in 0..size {
        let len = rng.gen_range(2..MAX_LEN);
        let seq: Vec<usize> = (0..len).map(|_| rng.gen_range(1..VOCAB)).collect();
        tags.push((0..len).map(|i| usize::from(seq[..i].contains(&seq[i]))).collect());
        sources.push(seq);
    }
    (Tokens::from_sequences(&sources).unwrap(), Tokens::from_sequences(&tags).unwrap())
}

fn accuracy(model: &Tagger<f32, Cpu>, tokens: &Tokens<VOCAB>, tags: &Tokens<TAGS>) -> f64 {
    let logits = model.forward(tokens, NoneTape).unwrap().as_vec();
    let (mut right, mut total) = (0, 0);
    for item in 0..tokens.batch() {
        for (pos, &tag) in tags.sequence(item).iter().enumerate() {
            let row = &logits[(item * tokens.seq_len() + pos) * TAGS..][..TAGS];
            right += usize::from(typeformer::generate::argmax(row) == tag);
            total += 1;
        }
    }
    right as f64 / total as f64
}

fn main() -> typeformer::Result<()> {
    let dev = Cpu::seed_from_u64(0);
    train_counter(&dev)?;
    println!("\n{}", Summary::of::<Tagger<f32, Cpu>, f32, Cpu>());
    // `BuildModule` (implemented for every `TensorCollection`) allocates and initialises it.
    let mut model = Tagger::<f32, Cpu>::build(&dev);
    typeformer::nn::set_dropout(&mut model, 0.0)?;
    let mut opt = Adam::new(AdamConfig::default())?;
    let schedule = WarmupSchedule { d_model: D, warmup: 100, factor: 1.0 };
    let mut rng = StdRng::seed_from_u64(1);
    let (test_tokens, test_tags) = batch(&mut StdRng::seed_from_u64(99), 256);
    println!("untrained accuracy: {:.3}", accuracy(&model, &test_tokens, &test_tags));

    let mut grads = model.alloc_grads();
    for step in 1..=600 {
        let (tokens, tags) = batch(&mut rng, 32);
        let tape = training_tape(&dev, grads);
        let loss = label_smoothed_cross_entropy(model.forward(&tokens, tape)?, &tags, 0.0)?;
        if step % 100 == 0 {
            println!("step {step}: loss {:.4}", loss.as_vec()[0]);
        }
        grads = typeformer::train::backward(loss)?;
        opt.update(&mut model, &grads, schedule.lr(step))?;
        model.zero_grads(&mut grads);
    }
    println!("trained accuracy: {:.3}", accuracy(&model, &test_tokens, &test_tags));
    Ok(())
}
