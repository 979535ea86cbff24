//! The typeformer command-line tool. All logic lives in the library; this file parses flags and
//! presents results.

use clap::{Args, Parser, Subcommand, ValueEnum};
use dfdx::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::process::ExitCode;
use typeformer::data::{Task, TaskSpec, FIRST_SYMBOL};
use typeformer::models::{TaskMedium, TaskSmall, TASK_VOCAB};
use typeformer::train::{run_task, AdamConfig, TaskReport, TaskRun, TrainConfig};

/// Train and run Transformers whose shapes are checked by the compiler.
///
/// With no command, trains a small encoder-decoder Transformer to reverse sequences, shows
/// what it decodes, and reports exact match on held-out sequences.
#[derive(Parser)]
#[command(name = "typeformer", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Train an encoder-decoder Transformer on a built-in task (copy, reverse, sort).
    ///
    /// Writes model.safetensors, loss.csv and loss.png to --out, then reports exact match of
    /// greedy decoding on held-out sequences.
    Train(TrainArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum TaskArg {
    Copy,
    Reverse,
    Sort,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModelArg {
    /// d 64, 4 heads, d_ff 256, 2 + 2 layers.
    Small,
    /// d 128, 8 heads, d_ff 512, 3 + 3 layers.
    Medium,
}

#[derive(Args)]
struct TrainArgs {
    /// The task.
    #[arg(long, value_enum, default_value = "reverse")]
    task: TaskArg,
    /// Model size.
    #[arg(long, value_enum, default_value = "small")]
    model: ModelArg,
    /// Distinct symbols in the sequences (at most 16).
    #[arg(long, default_value_t = 10)]
    symbols: usize,
    /// Shortest source sequence.
    #[arg(long, default_value_t = 1)]
    min_len: usize,
    /// Longest source sequence (at most 64).
    #[arg(long, default_value_t = 10)]
    max_len: usize,
    /// Optimizer steps.
    #[arg(long, default_value_t = 1200)]
    steps: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Warmup steps of the learning-rate schedule.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Scale of the learning-rate schedule (lr = factor * d^-0.5 * min(step^-0.5, step * warmup^-1.5)).
    #[arg(long, default_value_t = 0.5)]
    lr_factor: f64,
    /// Label smoothing (0.1 in the paper).
    #[arg(long, default_value_t = 0.1)]
    label_smoothing: f64,
    /// Dropout probability everywhere.
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Clip gradients to this global norm (0 disables clipping).
    #[arg(long, default_value_t = 1.0)]
    clip_norm: f64,
    /// Held-out sequences for evaluation.
    #[arg(long, default_value_t = 1000)]
    eval_size: usize,
    /// Seed for data and initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory (default: runs/<task>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Decoded examples to show.
    #[arg(long, default_value_t = 5)]
    show: usize,
}

impl TaskArg {
    fn task(self) -> Task {
        match self {
            TaskArg::Copy => Task::Copy,
            TaskArg::Reverse => Task::Reverse,
            TaskArg::Sort => Task::Sort,
        }
    }
}

fn main() -> ExitCode {
    let command = Cli::parse().command.unwrap_or_else(|| {
        // The main job: `train` with every default.
        Cli::parse_from(["typeformer", "train"]).command.expect("train parses")
    });
    let Command::Train(args) = command;
    match train(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn symbols(ids: &[usize]) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdef";
    ids.iter().map(|&t| t.checked_sub(FIRST_SYMBOL).and_then(|i| ALPHABET.get(i)).map_or('?', |&c| c as char)).collect()
}

fn train(args: &TrainArgs) -> typeformer::Result<()> {
    let task = args.task.task();
    let run = TaskRun {
        spec: TaskSpec { task, symbols: args.symbols, min_len: args.min_len, max_len: args.max_len },
        train: TrainConfig {
            steps: args.steps,
            batch_size: args.batch_size,
            label_smoothing: args.label_smoothing,
            warmup: args.warmup,
            lr_factor: args.lr_factor,
            adam: AdamConfig { clip_norm: (args.clip_norm > 0.0).then_some(args.clip_norm), ..AdamConfig::default() },
        },
        dropout: args.dropout,
        eval_size: args.eval_size,
        seed: args.seed,
        out_dir: Some(args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(task.to_string()))),
        model_name: match args.model {
            ModelArg::Small => "small".into(),
            ModelArg::Medium => "medium".into(),
        },
    };
    // Fail on a bad configuration before printing anything else.
    run.spec.validate(TASK_VOCAB, typeformer::models::TASK_POSITIONS)?;
    run.train.validate()?;
    eprintln!(
        "training a {} encoder-decoder Transformer on the {task} task: {} symbols, lengths {}..={}, {} steps of {} sequences",
        run.model_name, args.symbols, args.min_len, args.max_len, args.steps, args.batch_size
    );
    let bar = ProgressBar::new(args.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let mut smoothed = None::<f64>;
    let on_step = |log: &typeformer::train::StepLog| {
        let s = smoothed.map_or(log.loss, |s| 0.9 * s + 0.1 * log.loss);
        smoothed = Some(s);
        bar.set_position(log.step as u64);
        bar.set_message(format!("loss {s:.4} | {:.0} tok/s | lr {:.2e}", log.tokens_per_sec, log.lr));
    };
    let dev = Cpu::seed_from_u64(args.seed);
    let report = match args.model {
        ModelArg::Small => run_task::<TaskSmall, TASK_VOCAB, f32, Cpu>(&run, &dev, on_step)?.1,
        ModelArg::Medium => run_task::<TaskMedium, TASK_VOCAB, f32, Cpu>(&run, &dev, on_step)?.1,
    };
    bar.finish();
    print_report(&report, args.show);
    Ok(())
}

fn print_report(report: &TaskReport, show: usize) {
    let last = report.logs.last().expect("at least one step");
    let tokens: f64 = report.logs.iter().map(|l| l.tokens_per_sec).sum::<f64>() / report.logs.len() as f64;
    println!(
        "trained {} steps in {:.1} s (mean {tokens:.0} tok/s), final loss {:.4}",
        last.step, report.train_seconds, last.loss
    );
    for file in &report.files {
        println!("wrote {}", file.display());
    }
    println!("held-out examples (source -> decoded):");
    for (example, decoded) in report.decoded.iter().take(show) {
        let mark = if &example.target == decoded { "ok" } else { "WRONG" };
        println!("  {:>16} -> {:<16} {mark}", symbols(&example.source), symbols(decoded));
    }
    println!("exact match: {:.3} on {} held-out sequences", report.exact_match, report.decoded.len());
}
