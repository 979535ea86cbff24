//! GPU throughput (needs the `cuda` feature and a GPU): the workloads of `benches/compare` that
//! the issue names, run on the first CUDA device, one line each:
//!
//! ```text
//! <workload>: typeformer-cuda <tokens per second> tok/s
//! ```
//!
//! `cargo bench --features cuda --bench gpu [-- workload ...]` (default: all; `list` names them).
//! Each workload runs for about `SECONDS_PER_RUN` seconds (default 3) after one warm-up call (which
//! also loads dfdx's kernels onto the device); every call ends with a device synchronisation, so
//! the time is the wall time of finished work. Without a GPU it says so and exits with status 2.

use std::time::{Duration, Instant};
use typeformer::prelude::*;
use typeformer::train::{Adam, AdamConfig};

#[path = "common/mod.rs"]
mod common;
use common::{gpt_batch, gpt_train_step, greedy, BenchGpt, BenchGptSpec, Encoder512};

/// Each workload with what it measures.
const WORKLOADS: [(&str, &str); 5] = [
    ("encoder-forward-b1", "d-512 6-layer post-LN encoder, inference, batch 1, seq 128"),
    ("encoder-forward-b32", "d-512 6-layer post-LN encoder, inference, batch 32, seq 128"),
    ("gpt-train-step", "GPT d 128, 4 heads, 4 layers, d_ff 512, vocab 256: forward, backward, Adam; batch 8, seq 128"),
    ("generate-cached", "the same GPT, 64 greedy tokens after a 64-token prompt with the KV cache (new tokens/s)"),
    ("generate-recompute", "as generate-cached, recomputing the whole sequence for every token"),
];

/// Calls `f` (which processes `tokens` tokens) for about `seconds` after one warm-up call, waiting
/// for the device after each call, and returns tokens per second.
fn throughput<Dev: Device<f32> + Synchronize>(dev: &Dev, tokens: usize, seconds: f64, mut f: impl FnMut()) -> f64 {
    f();
    dev.synchronize();
    let start = Instant::now();
    let mut calls = 0usize;
    while start.elapsed() < Duration::from_secs_f64(seconds) || calls < 3 {
        f();
        dev.synchronize();
        calls += 1;
    }
    (tokens * calls) as f64 / start.elapsed().as_secs_f64()
}

fn run<Dev: Device<f32> + Synchronize + DeviceBuildExt>(
    dev: &Dev,
    workload: &str,
    seconds: f64,
) -> typeformer::Result<f64> {
    let s = 128;
    Ok(match workload {
        "encoder-forward-b1" | "encoder-forward-b32" => {
            let b = if workload.ends_with("b1") { 1 } else { 32 };
            let encoder = dev.build_module::<Encoder512<Dev>, f32>();
            let x: Tensor<(usize, usize, Const<512>), f32, Dev> = dev.sample_normal_like(&(b, s, Const));
            throughput(dev, b * s, seconds, || drop(encoder.forward(x.clone(), &MaskSpec::none()).unwrap()))
        }
        "gpt-train-step" => {
            let mut model: BenchGpt<f32, Dev> = BenchGptSpec::build(dev)?;
            let batch = 8;
            let data = gpt_batch(batch, s)?;
            let mut opt = Adam::new(AdamConfig::default())?;
            let mut grads = Some(model.alloc_grads());
            throughput(dev, batch * s, seconds, || {
                grads = Some(gpt_train_step(&mut model, &mut opt, &data, grads.take().unwrap()).unwrap());
            })
        }
        "generate-cached" | "generate-recompute" => {
            let model: BenchGpt<f32, Dev> = BenchGptSpec::build(dev)?;
            let prompt: Vec<usize> = (0..64).map(|i| (i * 13) % 256).collect();
            let cached = workload == "generate-cached";
            throughput(dev, 64, seconds, || drop(greedy(&model, &prompt, 64, cached)))
        }
        other => {
            let names: Vec<&str> = WORKLOADS.iter().map(|(n, _)| *n).collect();
            return Err(typeformer::Error::InvalidConfig(format!(
                "unknown workload `{other}`; workloads: {}",
                names.join(", ")
            )));
        }
    })
}

fn main() {
    // `cargo bench` passes `--bench`; skip flags.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if args.first().map(String::as_str) == Some("list") {
        for (name, what) in WORKLOADS {
            println!("{name}\t{what}");
        }
        return;
    }
    let seconds: f64 = std::env::var("SECONDS_PER_RUN").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let workloads: Vec<String> =
        if args.is_empty() { WORKLOADS.iter().map(|(n, _)| n.to_string()).collect() } else { args };
    let dev = match typeformer::device::open_cuda(0, 0) {
        Ok(dev) => dev,
        Err(e) => {
            eprintln!("no CUDA device: {e}; the GPU benchmarks need one");
            std::process::exit(2);
        }
    };
    for (name, what) in WORKLOADS.iter().filter(|(n, _)| workloads.iter().any(|w| w == n)) {
        println!("# {name}: {what}");
    }
    for workload in &workloads {
        match run(&dev, workload, seconds) {
            Ok(tps) => println!("{workload}: typeformer-cuda {tps:.0} tok/s"),
            Err(e) => {
                eprintln!("{workload}: {e}");
                std::process::exit(1);
            }
        }
    }
}
