//! typeformer's side of `benches/compare/run.sh`: runs one named workload for about `seconds`
//! and prints its throughput, `<workload> <tokens per second>`. PyTorch's side is
//! `torch_workloads.py`; the script alternates the two and prints the ratios.
//!
//! `cargo bench --bench compare -- <workload> [seconds]`; `cargo bench --bench compare -- list`;
//! `-- memory` (the training step's peak memory); `-- peak` (the machine's f32 FMA peak, the
//! reference for the fraction of peak a workload reaches).

use std::path::Path;
use std::time::{Duration, Instant};
use typeformer::prelude::*;
use typeformer::train::{Adam, AdamConfig};

#[path = "../common/mod.rs"]
mod common;
use common::{gpt_batch, gpt_train_step, greedy, BenchGpt, BenchGptSpec, Encoder512};

type Layer512 = EncoderLayer<512, 8, 64, 2048, PostNorm, Relu, f32, Cpu>;

/// `VmRSS` or `VmHWM` (peak) of this process from /proc/self/status, in bytes (Linux).
fn rss(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? * 1024.0)
}

/// Peak memory of the GPT-style training step against what the step must hold: parameters,
/// gradients and Adam's two moments (4 x 4 bytes per parameter), and the activations a backward
/// pass needs, counted per layer as PyTorch keeps them: the two norm inputs, Q/K/V, the attention
/// weights (B x H x S x S), the merged heads, the FFN's hidden layer before and after GELU, the
/// residual stream, and the logits with their softmax.
fn gpt_train_step_memory() -> typeformer::Result<()> {
    let before = rss("VmRSS:").ok_or_else(|| typeformer::Error::Training("no /proc/self/status".into()))?;
    let dev = Cpu::default();
    let (batch, seq, d, h, f, v, layers) = (8.0, 128.0, 128.0, 4.0, 512.0, 256.0, 4.0);
    let mut model: BenchGpt = BenchGptSpec::build(&dev)?;
    let data = gpt_batch(8, 128)?;
    let mut opt = Adam::new(AdamConfig::default())?;
    let mut grads = model.alloc_grads();
    for _ in 0..5 {
        grads = gpt_train_step(&mut model, &mut opt, &data, grads)?;
    }
    let peak = rss("VmHWM:").unwrap_or(f64::NAN);
    let params = BenchGptSpec::NUM_PARAMS as f64;
    let state = 4.0 * params * 4.0;
    let (bsd, bhss, bsf, bsv) = (batch * seq * d, batch * h * seq * seq, batch * seq * f, batch * seq * v);
    let activations = 4.0 * (layers * (6.0 * bsd + bhss + 2.0 * bsf) + 2.0 * bsv);
    let mib = |x: f64| x / (1024.0 * 1024.0);
    println!(
        "gpt-train-step memory: peak RSS {:.1} MiB, {:.1} MiB above the process before the model; \
         the step must hold {:.1} MiB (parameters, gradients, Adam moments {:.1} MiB; activations {:.1} MiB); \
         ratio {:.2}",
        mib(peak),
        mib(peak - before),
        mib(state + activations),
        mib(state),
        mib(activations),
        (peak - before) / (state + activations)
    );
    Ok(())
}

/// Twelve independent chains of fused multiply-adds, `rounds` times each, in the widest
/// registers the CPU has (pulp's dispatch: 16 f32 lanes with AVX-512, 8 with AVX2 and FMA).
/// Returns the lanes and a sum of the results (so the loop is not optimised away); `None` on a
/// CPU without AVX2 and FMA, where the figure would not be a multiply-add peak.
fn fma_chains(rounds: u64) -> Option<(u64, f32)> {
    const CHAINS: usize = 12;
    struct Chains(u64);
    impl pulp::WithSimd for Chains {
        type Output = (u64, f32);
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, simd: S) -> (u64, f32) {
            let (a, b) = (simd.splat_f32s(0.999_99), simd.splat_f32s(1e-6));
            let mut acc: [S::f32s; CHAINS] = std::array::from_fn(|i| simd.splat_f32s(i as f32));
            for _ in 0..self.0 {
                for x in &mut acc {
                    *x = simd.mul_add_e_f32s(*x, a, b);
                }
            }
            let lanes = (std::mem::size_of::<S::f32s>() / std::mem::size_of::<f32>()) as u64;
            (lanes * CHAINS as u64, acc.iter().map(|&x| simd.reduce_sum_f32s(x)).sum())
        }
    }
    #[cfg(target_arch = "x86_64")]
    if pulp::x86::V3::try_new().is_some() {
        return Some(pulp::Arch::new().dispatch(Chains(rounds)));
    }
    let _ = rounds;
    None
}

/// The f32 multiply-add peak of the machine, GFLOP/s: [`fma_chains`] on every core at once for
/// about `seconds` (a multiply-add counts as two operations). The reference for the fraction of
/// peak that a workload reaches.
fn fma_peak(seconds: f64) -> typeformer::Result<f64> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let unsupported = || typeformer::Error::InvalidConfig("the FMA peak needs an x86-64 CPU with AVX2 and FMA".into());
    fma_chains(1).ok_or_else(unsupported)?;
    let start = Instant::now();
    let flops: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let (mut flops, mut sink) = (0u64, 0.0f32);
                    while start.elapsed() < Duration::from_secs_f64(seconds) {
                        let rounds = 1 << 22;
                        let (lanes, sum) = fma_chains(rounds).expect("checked above");
                        flops += 2 * lanes * rounds;
                        sink += sum;
                    }
                    std::hint::black_box(sink);
                    flops
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("a peak thread")).sum()
    });
    Ok(flops as f64 / start.elapsed().as_secs_f64() / 1e9)
}

const WORKLOADS: [&str; 12] = [
    "attention",
    "attention-packed",
    "encoder-layer",
    "encoder-layer-packed",
    "encoder-forward",
    "encoder-forward-packed",
    "encoder-forward-backward",
    "gpt-train-step",
    "generate-cached",
    "generate-recompute",
    "minilm-embed",
    "minilm-embed-packed",
];

/// The `-packed` variant of an inference workload runs it through [`PackedWeights`].
struct Packing<'m, M>(Option<PackedWeights<'m, M>>);

impl<'m, M> Packing<'m, M> {
    fn new<E: Dtype, D: Device<E>>(workload: &str, model: &'m M) -> Self
    where
        M: dfdx::nn::tensor_collection::TensorCollection<E, D>,
    {
        Self(workload.ends_with("-packed").then(|| PackedWeights::of(model)))
    }

    fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.0 {
            Some(packed) => packed.run(f),
            None => f(),
        }
    }
}

/// Calls `f` (which processes `tokens` tokens) repeatedly for about `seconds`, after one warm-up
/// call, and returns tokens per second.
fn throughput(tokens: usize, seconds: f64, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut calls = 0usize;
    while start.elapsed() < Duration::from_secs_f64(seconds) || calls < 3 {
        f();
        calls += 1;
    }
    (tokens * calls) as f64 / start.elapsed().as_secs_f64()
}

fn hidden<const D: usize>(dev: &Cpu, b: usize, s: usize) -> Tensor<(usize, usize, Const<D>), f32, Cpu> {
    dev.sample_normal_like(&(b, s, Const::<D>))
}

fn run(workload: &str, seconds: f64) -> typeformer::Result<f64> {
    let dev = Cpu::seed_from_u64(0);
    let (b, s) = (1, 128);
    Ok(match workload {
        "attention" | "attention-packed" => {
            let mha = dev.build_module::<MultiHeadAttention<512, 8, 64, f32, Cpu>, f32>();
            let x = hidden::<512>(&dev, b, s);
            let packed = Packing::new(workload, &mha);
            throughput(b * s, seconds, || {
                packed.run(|| drop(mha.self_attention(x.clone(), &MaskSpec::none()).unwrap()))
            })
        }
        "encoder-layer" | "encoder-layer-packed" => {
            let layer = dev.build_module::<Layer512, f32>();
            let x = hidden::<512>(&dev, b, s);
            let packed = Packing::new(workload, &layer);
            throughput(b * s, seconds, || packed.run(|| drop(layer.forward(x.clone(), &MaskSpec::none()).unwrap())))
        }
        "encoder-forward" | "encoder-forward-packed" => {
            let encoder = dev.build_module::<Encoder512<Cpu>, f32>();
            let x = hidden::<512>(&dev, b, s);
            let packed = Packing::new(workload, &encoder);
            throughput(b * s, seconds, || packed.run(|| drop(encoder.forward(x.clone(), &MaskSpec::none()).unwrap())))
        }
        "encoder-forward-backward" => {
            let mut encoder = dev.build_module::<Encoder512<Cpu>, f32>();
            set_dropout(&mut encoder, 0.0)?;
            let x = hidden::<512>(&dev, b, s);
            let mut grads = Some(encoder.alloc_grads());
            throughput(b * s, seconds, || {
                let y = encoder.forward(x.clone().traced(grads.take().unwrap()), &MaskSpec::none()).unwrap();
                let mut g = typeformer::train::backward(y.sum()).unwrap();
                encoder.zero_grads(&mut g);
                grads = Some(g);
            })
        }
        "gpt-train-step" => {
            let mut model: BenchGpt = BenchGptSpec::build(&dev)?;
            let (batch, seq) = (8, 128);
            let data = gpt_batch(batch, seq)?;
            let mut opt = Adam::new(AdamConfig::default())?;
            let mut grads = Some(model.alloc_grads());
            throughput(batch * seq, seconds, || {
                grads = Some(gpt_train_step(&mut model, &mut opt, &data, grads.take().unwrap()).unwrap());
            })
        }
        "generate-cached" | "generate-recompute" => {
            // 64 new tokens after a 64-token prompt, greedy; throughput counts the new tokens.
            let model: BenchGpt = BenchGptSpec::build(&dev)?;
            let prompt: Vec<usize> = (0..64).map(|i| (i * 13) % 256).collect();
            let cached = workload == "generate-cached";
            throughput(64, seconds, || drop(greedy(&model, &prompt, 64, cached)))
        }
        "minilm-embed" | "minilm-embed-packed" => {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
            let encoder = SentenceEncoder::<MiniLmL6>::load(&dir, &dev)?;
            let packed = Packing::new(workload, &encoder.model);
            let texts: Vec<String> = (0..32)
                .map(|i| format!("sentence number {i} is about the weather and the things people do on weekends"))
                .collect();
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            let tokens: usize = encoder.tokenizer.encode_batch(&texts)?.iter().map(Vec::len).sum();
            throughput(tokens, seconds, || packed.run(|| drop(encoder.embed_all(&texts, 32).unwrap())))
        }
        other => {
            return Err(typeformer::Error::InvalidConfig(format!(
                "unknown workload `{other}`; workloads: {}",
                WORKLOADS.join(", ")
            )))
        }
    })
}

fn main() {
    // As the command-line tool does.
    typeformer::reuse_freed_memory();
    // `cargo bench` passes `--bench`; skip flags.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let workload = args.first().map(String::as_str).unwrap_or("list");
    if workload == "memory" {
        if let Err(e) = gpt_train_step_memory() {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        return;
    }
    if workload == "peak" {
        let seconds = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3.0);
        match fma_peak(seconds) {
            Ok(gflops) => println!("fma-peak {gflops:.1} GFLOP/s"),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    if workload == "list" {
        println!("{}", WORKLOADS.join("\n"));
        return;
    }
    let seconds = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    match run(workload, seconds) {
        Ok(tokens_per_second) => println!("{workload} {tokens_per_second:.1}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
