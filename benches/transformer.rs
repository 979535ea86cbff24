//! Throughput of the building blocks and of a training step, on the CPU.
//!
//! `cargo bench` prints times per iteration; compare configurations within one run (these
//! machines are shared and noisy).

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use typeformer::data::{Seq2SeqBatch, Task, TaskData, TaskSpec};
use typeformer::prelude::*;
use typeformer::train::{label_smoothed_cross_entropy, Adam, AdamConfig};

fn blocks(c: &mut Criterion) {
    let dev = Cpu::seed_from_u64(0);
    let (b, s) = (8, 64);
    let mut group = c.benchmark_group("blocks (batch 8, seq 64, d 128)");
    group.throughput(Throughput::Elements((b * s) as u64));
    let mha = dev.build_module::<MultiHeadAttention<128, 8, 16, f32, Cpu>, f32>();
    let x: Tensor<(usize, usize, Const<128>), f32, _> = dev.sample_normal_like(&(b, s, Const));
    group.bench_function("multi-head self-attention, causal", |bench| {
        bench.iter(|| mha.self_attention(x.clone(), &MaskSpec::causal(None)).unwrap())
    });
    let layer = dev.build_module::<EncoderLayer<128, 8, 16, 512, PostNorm, Relu, f32, Cpu>, f32>();
    group.bench_function("encoder layer forward", |bench| {
        bench.iter(|| layer.forward(x.clone(), &MaskSpec::none()).unwrap())
    });
    group.finish();
}

fn training_step(c: &mut Criterion) {
    let dev = Cpu::seed_from_u64(0);
    let mut model = dev.build_module::<TaskSmall<f32, Cpu>, f32>();
    let spec = TaskSpec { task: Task::Reverse, symbols: 10, min_len: 1, max_len: 10 };
    let mut data = TaskData::new(spec, 100, 0).unwrap();
    let batch = Seq2SeqBatch::<TASK_VOCAB, TASK_VOCAB>::new(&data.train_examples(64)).unwrap();
    let mut opt = Adam::<f32, Cpu>::new(AdamConfig::default()).unwrap();
    let mut grads = Some(model.alloc_grads());
    let mut group = c.benchmark_group("training step (TaskSmall, batch 64, reverse 1..=10)");
    group.throughput(Throughput::Elements((batch.src.num_tokens() + batch.labels.num_tokens()) as u64));
    group.bench_function("forward + backward + Adam", |bench| {
        bench.iter(|| {
            let logits = model.forward_traced(&batch.src, &batch.tgt_in, grads.take().unwrap()).unwrap();
            let loss = label_smoothed_cross_entropy(logits, &batch.labels, 0.1).unwrap();
            let mut g = loss.backward();
            opt.update(&mut model, &g, 1e-4).unwrap();
            model.zero_grads(&mut g);
            grads = Some(g);
        })
    });
    group.finish();
}

/// The cost of producing one more token after `n` tokens: one cached step, versus a full pass
/// over all `n + 1` tokens. With the cache it should stay nearly flat as `n` grows.
fn generation_per_token(c: &mut Criterion) {
    let dev = Cpu::seed_from_u64(0);
    let model = dev.build_module::<LmSmall<f32, Cpu>, f32>();
    let mut group = c.benchmark_group("next token (LmSmall: d 128, 4 blocks)");
    for n in [8usize, 32, 64, 120] {
        let prefix: Vec<usize> = (0..n).map(|i| 32 + i % 90).collect();
        let mut state = model.start();
        model.step(&mut state, &Tokens::from_sequences(std::slice::from_ref(&prefix)).unwrap()).unwrap();
        let next = Tokens::<256>::from_sequences(&[vec![65]]).unwrap();
        group.bench_with_input(BenchmarkId::new("kv cache", n), &n, |bench, _| {
            bench.iter_batched(|| state.clone(), |mut s| model.step(&mut s, &next).unwrap(), BatchSize::SmallInput)
        });
        let mut full = prefix.clone();
        full.push(65);
        let full = Tokens::<256>::from_sequences(&[full]).unwrap();
        group.bench_with_input(BenchmarkId::new("recompute", n), &n, |bench, _| {
            bench.iter(|| model.forward(&full).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, blocks, training_step, generation_per_token);
criterion_main!(benches);
