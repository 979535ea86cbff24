//! Several prompts generated together: each row computes what it computes alone.

use typeformer::generate::{generate, generate_batch, GenerateConfig, Sampler, SamplingConfig};
use typeformer::prelude::*;

/// Rotary positions, grouped-query attention (4 query heads over 2 key/value heads).
type TinyLlama = Llama<64, 16, 4, 2, 4, 40, 2, 32, 10000, UntiedOutputNoBias, f64, Cpu>;
/// Learned absolute positions.
type TinyGpt = DecoderOnly<64, 16, 2, 8, 32, 2, 32, PreNorm, GeluTanh, Learned, TiedOutput, f64, Cpu>;

fn prompts() -> Vec<Vec<usize>> {
    vec![vec![5], vec![7, 1, 33, 60, 2], vec![40, 41, 9]]
}

fn greedy() -> Sampler {
    Sampler::new(SamplingConfig::greedy()).unwrap()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn left_padded_rows_give_the_logits_of_each_prompt_alone() {
    let model = Cpu::seed_from_u64(0).build_module::<TinyLlama, f64>();
    let prompts = prompts();
    let longest = prompts.iter().map(Vec::len).max().unwrap();
    let padding: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let rows: Vec<Vec<usize>> =
        prompts.iter().zip(&padding).map(|(p, &pad)| [vec![0; pad], p.clone()].concat()).collect();
    let mut batch = model.start_padded(padding).unwrap();
    let batched = model.step(&mut batch, &Tokens::from_sequences(&rows).unwrap()).unwrap().as_vec();
    // The same rows fed in two chunks of positions end with the same logits.
    let mut chunked = model.start_padded(prompts.iter().map(|p| longest - p.len()).collect()).unwrap();
    let head: Vec<Vec<usize>> = rows.iter().map(|r| r[..2].to_vec()).collect();
    let tail: Vec<Vec<usize>> = rows.iter().map(|r| r[2..].to_vec()).collect();
    model.step(&mut chunked, &Tokens::from_sequences(&head).unwrap()).unwrap();
    let last = model.step(&mut chunked, &Tokens::from_sequences(&tail).unwrap()).unwrap().as_vec();
    for i in 0..prompts.len() {
        let (s, t) = (longest - 2, (i * longest + longest - 1) * 64);
        let row = &last[(i * s + s - 1) * 64..(i * s + s) * 64];
        assert!(max_abs_diff(row, &batched[t..t + 64]) < 1e-9, "prompt {i} fed in two chunks");
    }
    let next = [3, 9, 27];
    let batched_next =
        model.step(&mut batch, &Tokens::from_sequences(&next.map(|t| vec![t])).unwrap()).unwrap().as_vec();
    for (i, prompt) in prompts.iter().enumerate() {
        let mut alone = model.start();
        let logits = model.step(&mut alone, &Tokens::from_sequences(std::slice::from_ref(prompt)).unwrap()).unwrap();
        let logits = logits.as_vec();
        let row = &batched[(i * longest + longest - 1) * 64..(i * longest + longest) * 64];
        assert!(max_abs_diff(row, &logits[logits.len() - 64..]) < 1e-9, "prompt {i}, its last position");
        let logits = model.step(&mut alone, &Tokens::from_sequences(&[vec![next[i]]]).unwrap()).unwrap().as_vec();
        assert!(max_abs_diff(&batched_next[i * 64..(i + 1) * 64], &logits) < 1e-9, "prompt {i}, the next step");
    }
}

#[test]
fn each_sequence_gets_the_tokens_it_gets_alone_and_stops_on_its_own() {
    let model = Cpu::seed_from_u64(1).build_module::<TinyLlama, f64>();
    let prompts = prompts();
    let free = GenerateConfig { max_new_tokens: 12, stop_tokens: vec![] };
    let alone: Vec<Vec<usize>> =
        prompts.iter().map(|p| generate(&model, p, &free, &mut greedy(), |_| {}).unwrap()).collect();
    let mut streamed = vec![Vec::new(); prompts.len()];
    let together = generate_batch(&model, &prompts, &free, &mut greedy(), |i, t| streamed[i].push(t)).unwrap();
    assert_eq!(together, alone);
    assert_eq!(streamed, alone, "`on_token` saw each token of its prompt, in order");

    // Stop the first sequence on its third token: it ends there, the others go on.
    let stop = alone[0][2];
    let stopping = GenerateConfig { max_new_tokens: 12, stop_tokens: vec![stop] };
    let alone: Vec<Vec<usize>> =
        prompts.iter().map(|p| generate(&model, p, &stopping, &mut greedy(), |_| {}).unwrap()).collect();
    assert!(
        alone[0].len() <= 3 && alone.iter().any(|a| a.len() == 12),
        "the stop token ends some but not all: {alone:?}"
    );
    let together = generate_batch(&model, &prompts, &stopping, &mut greedy(), |_, _| {}).unwrap();
    assert_eq!(together, alone);
}

#[test]
fn absolute_positions_take_prompts_of_equal_length_only() {
    let model = Cpu::seed_from_u64(2).build_module::<TinyGpt, f64>();
    let cfg = GenerateConfig { max_new_tokens: 6, stop_tokens: vec![] };
    let err = generate_batch(&model, &prompts(), &cfg, &mut greedy(), |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("absolute"), "{err}");
    let equal = vec![vec![1, 2, 3], vec![4, 5, 6]];
    let alone: Vec<Vec<usize>> =
        equal.iter().map(|p| generate(&model, p, &cfg, &mut greedy(), |_| {}).unwrap()).collect();
    assert_eq!(generate_batch(&model, &equal, &cfg, &mut greedy(), |_, _| {}).unwrap(), alone);
}

#[test]
fn bad_batches_are_refused_with_what_was_wrong() {
    let model = Cpu::seed_from_u64(3).build_module::<TinyLlama, f64>();
    let cfg = GenerateConfig { max_new_tokens: 4, stop_tokens: vec![] };
    let refused = |prompts: Vec<Vec<usize>>, cfg: &GenerateConfig| {
        generate_batch(&model, &prompts, cfg, &mut greedy(), |_, _| {}).unwrap_err().to_string()
    };
    assert!(refused(vec![], &cfg).contains("no prompts"));
    assert!(refused(vec![vec![1], vec![]], &cfg).contains("prompt 1 is empty"));
    let err = refused(vec![vec![1, 2, 3], vec![64]], &cfg);
    assert!(
        err.contains("64") && err.contains("position 0"),
        "a token outside the vocabulary of 64, where it is: {err}"
    );
    let err = refused(vec![vec![1; 32]], &cfg);
    assert!(err.contains("prompt 0 has 32 tokens") && err.contains("at most 31"), "{err}");
    let long = GenerateConfig { max_new_tokens: 30, stop_tokens: vec![] };
    let err = refused(vec![vec![1], vec![1, 2, 3]], &long);
    assert!(err.contains("context is 32") && err.contains("at most 29"), "{err}");
    // A state started for 2 rows refuses 3.
    let mut state = model.start_padded(vec![0, 1]).unwrap();
    let err = model.step(&mut state, &Tokens::from_sequences(&[vec![1], vec![2], vec![3]]).unwrap()).unwrap_err();
    assert!(err.to_string().contains("left paddings"), "{err}");
}
