//! Throughput of the building blocks and of a training step, on the CPU.
//!
//! `cargo bench` prints times per iteration; compare configurations within one run (these
//! machines are shared and noisy).

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use typeformer::data::{Seq2SeqBatch, Task, TaskData, TaskSpec};
use typeformer::prelude::*;
use typeformer::train::{label_smoothed_cross_entropy, Adam, AdamConfig};

#[path = "common/mod.rs"]
mod common;
use common::{gpt_batch, gpt_train_step, greedy, BenchGpt, BenchGptSpec, Encoder512};

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
            let mut g = typeformer::train::backward(loss).unwrap();
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

/// The workloads of issue 6 (also compared with PyTorch by `benches/compare/run.sh`).
fn issue_workloads(c: &mut Criterion) {
    typeformer::reuse_freed_memory();
    let dev = Cpu::seed_from_u64(0);
    let (b, s) = (1, 128);
    let x: Tensor<(usize, usize, Const<512>), f32, _> = dev.sample_normal_like(&(b, s, Const));
    let mut group = c.benchmark_group("d-512 blocks (batch 1, seq 128, 8 heads, d_ff 2048)");
    group.throughput(Throughput::Elements((b * s) as u64));
    let mha = dev.build_module::<MultiHeadAttention<512, 8, 64, f32, Cpu>, f32>();
    group.bench_function("multi-head self-attention", |bench| {
        bench.iter(|| mha.self_attention(x.clone(), &MaskSpec::none()).unwrap())
    });
    let layer = dev.build_module::<EncoderLayer<512, 8, 64, 2048, PostNorm, Relu, f32, Cpu>, f32>();
    group.bench_function("post-LN encoder layer", |bench| {
        bench.iter(|| layer.forward(x.clone(), &MaskSpec::none()).unwrap())
    });
    group.finish();

    let mut group = c.benchmark_group("d-512 6-layer post-LN encoder (batch 1, seq 128)");
    group.sample_size(10).throughput(Throughput::Elements((b * s) as u64));
    let encoder = dev.build_module::<Encoder512<Cpu>, f32>();
    group.bench_function("forward", |bench| bench.iter(|| encoder.forward(x.clone(), &MaskSpec::none()).unwrap()));
    let packed = PackedWeights::of(&encoder);
    group.bench_function("forward, packed weights", |bench| {
        bench.iter(|| packed.run(|| encoder.forward(x.clone(), &MaskSpec::none()).unwrap()))
    });
    let mut grads = Some(encoder.alloc_grads());
    group.bench_function("forward + backward", |bench| {
        bench.iter(|| {
            let y = encoder.forward(x.clone().traced(grads.take().unwrap()), &MaskSpec::none()).unwrap();
            let mut g = typeformer::train::backward(y.sum()).unwrap();
            encoder.zero_grads(&mut g);
            grads = Some(g);
        })
    });
    group.finish();

    let mut group = c.benchmark_group("GPT d 128, 4 layers, vocab 256 (batch 8, seq 128)");
    group.sample_size(10).throughput(Throughput::Elements(8 * 128));
    let mut model: BenchGpt = BenchGptSpec::build(&dev).unwrap();
    let data = gpt_batch(8, 128).unwrap();
    let mut opt = Adam::new(AdamConfig::default()).unwrap();
    let mut grads = Some(model.alloc_grads());
    group.bench_function("training step (forward + backward + Adam)", |bench| {
        bench.iter(|| grads = Some(gpt_train_step(&mut model, &mut opt, &data, grads.take().unwrap()).unwrap()))
    });
    group.finish();

    let mut group = c.benchmark_group("GPT d 128: 64 new tokens after a 64-token prompt");
    group.sample_size(10).throughput(Throughput::Elements(64));
    let prompt: Vec<usize> = (0..64).map(|i| (i * 13) % 256).collect();
    for cached in [true, false] {
        let name = if cached { "kv cache" } else { "recompute" };
        group.bench_function(name, |bench| bench.iter(|| greedy(&model, &prompt, 64, cached)));
    }
    group.finish();

    // all-MiniLM-L6-v2 from scripts/fetch-minilm.sh; skipped (with a note) when absent.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
    match SentenceEncoder::<MiniLmL6>::load(&dir, &dev) {
        Ok(encoder) => {
            let texts: Vec<String> = (0..32)
                .map(|i| format!("sentence number {i} is about the weather and the things people do on weekends"))
                .collect();
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            let tokens: usize = encoder.tokenizer.encode_batch(&texts).unwrap().iter().map(Vec::len).sum();
            let mut group = c.benchmark_group("all-MiniLM-L6-v2");
            group.sample_size(10).throughput(Throughput::Elements(tokens as u64));
            group.bench_function("embed 32 sentences", |bench| bench.iter(|| encoder.embed_all(&texts, 32).unwrap()));
            let packed = PackedWeights::of(&encoder.model);
            group.bench_function("embed 32 sentences, packed weights", |bench| {
                bench.iter(|| packed.run(|| encoder.embed_all(&texts, 32).unwrap()))
            });
            group.finish();
        }
        Err(e) => eprintln!("all-MiniLM-L6-v2 skipped (run scripts/fetch-minilm.sh): {e}"),
    }
}

criterion_group!(benches, blocks, training_step, generation_per_token, issue_workloads);
criterion_main!(benches);
