//! The typeformer command-line tool. All logic lives in the library; this file parses flags and
//! presents results.

use clap::{Args, Parser, Subcommand, ValueEnum};
use dfdx::nn::BuildModule;
use dfdx::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use typeformer::data::TextTokenizer;
use typeformer::data::{parse_symbols, symbol_text, Example, Task, TaskSpec, FIRST_SYMBOL, SYMBOL_ALPHABET};
use typeformer::data::{AdditionTask, ByteCorpus, LmSource, BYTE_VOCAB};
use typeformer::generate::{generate_batch, generate_while, BeamConfig, GenerateConfig, Sampler, SamplingConfig};
use typeformer::io::{latest_checkpoint, Checkpoint, Occupants, RunLock};
use typeformer::io::{read_gguf_llama, Gguf, QuantizedWeights};
use typeformer::memory::{check_memory, training_bytes_per_token};
use typeformer::models::{
    Architecture, BertBaseSpec, Gpt2SmallSpec, LmSmallSpec, MiniLmL6Spec, PaperBaseSpec, PaperBigSpec, TaskMediumSpec,
    TaskSmallSpec,
};
use typeformer::models::{
    BertBase, BertConfig, LanguageModel, LmSmall, MiniLmL6, NoPooler, Seq2Seq, TaskMedium, TaskSmall, TASK_VOCAB,
};
use typeformer::models::{LlamaSmall, LlamaSmallSpec, SmolLm2_135M, SmolLm2_135MSpec};
use typeformer::nn::PackedWeights;
use typeformer::pipelines::{turn_end_tokens, Chat, ChatTemplate, SentenceEncoder, Streamed};
use typeformer::train::{
    addition_accuracy, evaluate_checkpoint, label_smoothing_floor, launched_by_mpi, load_lm_checkpoint, load_lm_model,
    plot_attention, run_task_on, train_language_model_on, validation_loss, AdamConfig, AttentionKind,
    AttentionSelection, GradientExchange, LmRun, LmStop, LmTrainConfig, Metered, SingleProcess, StepLog,
    TaskCheckpoint, TaskEvaluation, TaskReport, TaskRun, TrainConfig,
};

const LM_NAME: &str = "lm-small";
const LLAMA_LM_NAME: &str = "llama-small";

/// The replicas this process trains with: the MPI job it was started in by `mpirun` (with the
/// `mpi` feature), or itself alone.
fn data_parallel_exchange() -> typeformer::Result<Box<dyn GradientExchange>> {
    if !launched_by_mpi() {
        return Ok(Box::new(SingleProcess));
    }
    #[cfg(feature = "mpi")]
    {
        Ok(Box::new(typeformer::train::MpiExchange::init()?))
    }
    #[cfg(not(feature = "mpi"))]
    {
        let size = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"].iter().find_map(|v| std::env::var(v).ok());
        match size.as_deref() {
            Some("1") => Ok(Box::new(SingleProcess)),
            _ => Err(typeformer::Error::InvalidConfig(
                "this typeformer was built without MPI, but it was started by an MPI launcher: each process would                  train alone. Rebuild it with `cargo build --release --features mpi` (needs an MPI library and                  libclang), or run it without mpirun"
                    .into(),
            )),
        }
    }
}

/// One line on a data-parallel run's exchange, for rank 0 to print at the end.
fn exchange_summary(exchange: &Metered, steps: usize, seconds: f64) -> Option<String> {
    let stats = exchange.stats();
    (exchange.ranks() > 1 && steps > 0).then(|| {
        format!(
            "data-parallel: {} ranks; gradient exchange {:.2} MB per step in {} all-reduces, {:.1} ms per step \
             ({:.0}% of the training time)",
            exchange.ranks(),
            stats.bytes as f64 / steps as f64 / 1e6,
            stats.calls,
            1e3 * stats.seconds / steps as f64,
            100.0 * stats.seconds / seconds.max(1e-9)
        )
    })
}

/// A flag that Ctrl-C (SIGINT) and SIGTERM set: training stops after the current step.
fn interrupt_flag() -> typeformer::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .map_err(|e| typeformer::Error::Training(format!("cannot install the Ctrl-C handler: {e}")))?;
    Ok(stop)
}

/// Settings of a language-model run that a resumed run may change, with their flags.
const SETTINGS: &[(&str, &str)] =
    &[("batch_size", "--batch-size"), ("context", "--context"), ("warmup", "--warmup"), ("lr_factor", "--lr-factor")];

/// The exit status of a run stopped by Ctrl-C, as shells report a process ended by SIGINT.
const INTERRUPTED: i32 = 130;

/// `println!` that ends the program quietly when stdout is closed (`typeformer ... | head`)
/// instead of panicking on the broken pipe.
macro_rules! say {
    ($($arg:tt)*) => {
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            stdout_failed(e);
        }
    };
}

/// `eprintln!` that never panics: a progress line or a warning that cannot be written (stderr
/// closed, a full disk) must not end a training run.
macro_rules! note {
    ($($arg:tt)*) => {
        let _ = writeln!(std::io::stderr(), $($arg)*);
    };
}

/// Ends the program after a failed write to stdout: quietly (status 0) when the reader went
/// away (`typeformer ... | head`), with an error otherwise (a full disk, /dev/full): output
/// that was lost is not a success.
fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    note!("error: cannot write the output: {e}");
    std::process::exit(1);
}

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
    /// Commits the model and its loss curve to the run directory --out (see --force), then
    /// reports exact match of greedy decoding on held-out sequences and draws attention.png.
    Train(TrainArgs),
    /// Train a byte-level GPT-style language model on a text file or on the addition task.
    ///
    /// Commits a checkpoint (model, optimizer, loss curve, as one unit) to the run directory
    /// --out every --checkpoint-every steps: Ctrl-C or a crash leaves the last one intact, and
    /// Ctrl-C exits with status 130. Reports validation loss and perplexity, and for the
    /// addition task held-out accuracy. --resume continues a run exactly where it stopped.
    TrainLm(TrainLmArgs),
    /// Generate text from a language model, printing tokens as they come: one trained with
    /// train-lm (--checkpoint), or a Llama-family GGUF file (--model, SmolLM2-135M-Instruct from
    /// `scripts/fetch-smollm2.sh`).
    Generate(GenerateArgs),
    /// Talk with an instruction-tuned Llama-family model from its GGUF file, in its chat
    /// template, replies streamed; the conversation stays in the KV cache between turns.
    ///
    /// One user turn per line of stdin (a prompt is shown on a terminal); `/reset` starts over,
    /// `/exit` (or the end of input) ends.
    Chat(ChatArgs),
    /// Evaluate a checkpoint written by train on its run's held-out sequences (greedy, and beam
    /// search with --beam-width).
    Evaluate(EvaluateArgs),
    /// Draw the attention maps of a model saved by train, for one source sequence: the
    /// encoder's self-attention, the decoder's masked self-attention and its cross-attention
    /// over the source, every layer and head (or the ones chosen), tokens on the axes.
    Attention(AttentionArgs),
    /// Embed texts with a sentence-transformers model directory (all-MiniLM-L6-v2, or a BERT of
    /// the bert-base shape): one text per line on stdin, one JSON array of floats per line on
    /// stdout, in order.
    ///
    /// Texts are batched with padding and attention masks (sorted by length within each block of
    /// input, so batching does not change the result). Get all-MiniLM-L6-v2 with
    /// `scripts/fetch-minilm.sh`.
    Embed(EmbedArgs),
    /// List a preset's parameters (name, shape, count), their total and memory, without
    /// allocating them.
    Summary(SummaryArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum PresetArg {
    /// "Attention Is All You Need", base (Table 3), with nn.Transformer's final norms.
    PaperBase,
    /// "Attention Is All You Need", big.
    PaperBig,
    /// GPT-2 small.
    Gpt2Small,
    /// BERT base (with the pooler).
    BertBase,
    /// all-MiniLM-L6-v2 (sentence-transformers).
    MinilmL6,
    /// The task model `train` uses by default.
    TaskSmall,
    /// `train --model medium`.
    TaskMedium,
    /// The byte-level language model of `train-lm`.
    LmSmall,
    /// `train-lm --arch llama`.
    LlamaSmall,
    /// SmolLM2-135M-Instruct (Llama blocks).
    #[value(name = "smollm2-135m")]
    Smollm2_135m,
}

#[derive(Args)]
struct SummaryArgs {
    /// Which model.
    #[arg(value_enum)]
    preset: PresetArg,
    /// A table of layers, or a Graphviz graph (`typeformer summary paper-base --format dot | dot -Tpng > g.png`).
    #[arg(long, value_enum, default_value = "text")]
    format: SummaryFormat,
    /// Also list every parameter tensor (name, shape, count); text format only.
    #[arg(long)]
    params: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum SummaryFormat {
    /// Layers, output shapes and parameter counts.
    Text,
    /// A Graphviz digraph.
    Dot,
}

#[derive(Args)]
struct EmbedArgs {
    /// Where to run.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// The model directory (config.json, model.safetensors, tokenizer.json, ...).
    #[arg(long)]
    model: PathBuf,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
}

#[derive(Args)]
struct EvaluateArgs {
    /// Where to run.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,

    /// A run directory written by train.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Evaluate on the first this many of the run's held-out sequences (default: all of them;
    /// more is an error, the others may have been trained on).
    #[arg(long)]
    eval_size: Option<usize>,
    /// Also evaluate with beam search of this width (0: greedy only).
    #[arg(long, default_value_t = 0)]
    beam_width: usize,
    /// Length penalty α of beam search: scores are log-probability / ((5 + len) / 6)^α.
    /// 0 compares raw log-probabilities (which favour short outputs), 1 about per-token averages.
    #[arg(long, allow_hyphen_values = true, default_value_t = 1.0)]
    length_penalty: f64,
}

#[derive(Args)]
struct AttentionArgs {
    /// Where to run.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// A run directory written by train.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The source sequence, in the run's symbols (`0123456789` for the default task).
    #[arg(long)]
    text: String,
    /// Which attention to draw.
    #[arg(long, value_enum, default_value = "all")]
    map: MapArg,
    /// Only this layer of each stack (counting from 0, as in the parameter names).
    #[arg(long)]
    layer: Option<usize>,
    /// Only this head of each layer (counting from 0).
    #[arg(long)]
    head: Option<usize>,
    /// The PNG to write.
    #[arg(long, default_value = "attention.png")]
    out: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum MapArg {
    /// Encoder self-attention, decoder self-attention and cross-attention.
    All,
    /// The encoder's self-attention over the source.
    EncoderSelf,
    /// The decoder's masked self-attention over its own inputs.
    DecoderSelf,
    /// The decoder's attention over the source.
    Cross,
}

#[derive(Clone, Copy, ValueEnum)]
enum LmTaskArg {
    /// Lines `a+b=c` of random numbers; accuracy on held-out pairs.
    Addition,
}

#[derive(Clone, Copy, ValueEnum)]
enum LmArch {
    /// GPT blocks: learned positions, pre-LN, tanh GELU (the preset lm-small).
    Gpt,
    /// Llama blocks: rotary positions, grouped-query attention, RMSNorm, SwiGLU (llama-small).
    Llama,
}

#[derive(Args)]
struct TrainLmArgs {
    /// Where to run.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// The model's blocks (both d 128, 4 blocks, context 128).
    #[arg(long, value_enum, default_value = "gpt")]
    arch: LmArch,

    /// A text file to model, byte by byte (90% training, 10% validation).
    #[arg(long, conflicts_with = "task", required_unless_present = "task")]
    data: Option<PathBuf>,
    /// A built-in task instead of a file.
    #[arg(long, value_enum)]
    task: Option<LmTaskArg>,
    /// Most digits per number in the addition task.
    #[arg(long, default_value_t = 3)]
    digits: u32,
    /// Held-out addition problems for accuracy.
    #[arg(long, default_value_t = 200)]
    eval_size: usize,
    /// Total optimizer steps (a resumed run continues up to this step).
    #[arg(long, default_value_t = 2000)]
    steps: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Tokens per training sequence (at most 128).
    #[arg(long, default_value_t = 128)]
    context: usize,
    /// Warmup steps of the learning-rate schedule.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Scale of the learning-rate schedule.
    #[arg(long, allow_hyphen_values = true, default_value_t = 1.0)]
    lr_factor: f64,
    /// Dropout probability everywhere.
    #[arg(long, allow_hyphen_values = true, default_value_t = 0.0)]
    dropout: f64,
    /// Measure validation loss every this many steps.
    #[arg(long, default_value_t = 100)]
    eval_every: usize,
    /// Write a checkpoint every this many steps.
    #[arg(long, default_value_t = 200)]
    checkpoint_every: usize,
    /// Seed for the data stream and the initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run directory (default: runs/lm).
    #[arg(long, default_value = "runs/lm")]
    out: PathBuf,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long, conflicts_with = "force")]
    resume: bool,
    /// Replace the checkpoint --out holds (it stays until the new run commits its first one).
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct GenerateArgs {
    /// Where to run.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,

    /// A run directory written by train-lm.
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    checkpoint: Option<PathBuf>,
    /// A Llama-family GGUF file (SmolLM2-135M-Instruct's shape).
    #[arg(long)]
    model: Option<PathBuf>,
    /// With --model: multiply by the f32 copy of the weights instead of the file's quantized
    /// blocks (slower; the same tokens up to rounding).
    #[arg(long, requires = "model")]
    dequantized: bool,
    /// The text to continue.
    #[arg(long, required_unless_present = "prompts_file", conflicts_with = "prompts_file")]
    prompt: Option<String>,
    /// With --model: continue every prompt of this file together, one batch through the model
    /// per step: one prompt per line (blank lines skipped; a line in double quotes is a JSON
    /// string, for prompts with newlines). Prints one JSON object per prompt, in file order.
    #[arg(long, requires = "model")]
    prompts_file: Option<PathBuf>,
    /// Most new tokens (bytes).
    #[arg(long, default_value_t = 100)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, allow_hyphen_values = true, default_value_t = 0.8)]
    temperature: f64,
    /// Sample among the k most likely tokens only.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample among the most likely tokens whose probabilities sum to p.
    #[arg(long, allow_hyphen_values = true)]
    top_p: Option<f64>,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop after this text (one byte, e.g. a newline).
    #[arg(long)]
    stop: Option<String>,
}

#[derive(Args)]
struct ChatArgs {
    /// Where to run.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// A Llama-family GGUF file with a chat template (SmolLM2-135M-Instruct's shape).
    #[arg(long)]
    model: PathBuf,
    /// The system message (the template's own default otherwise).
    #[arg(long)]
    system: Option<String>,
    /// Multiply by the f32 copy of the weights instead of the file's quantized blocks.
    #[arg(long)]
    dequantized: bool,
    /// Most new tokens per reply.
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, allow_hyphen_values = true, default_value_t = 0.7)]
    temperature: f64,
    /// Sample among the k most likely tokens only.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample among the most likely tokens whose probabilities sum to p.
    #[arg(long, allow_hyphen_values = true, default_value = "0.9")]
    top_p: Option<f64>,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    /// The CPU.
    Cpu,
    /// The first CUDA GPU (needs a build with `--features cuda`).
    Cuda,
}

/// Runs `$f(&device, args...)` on the device `$which` asks for, seeded with `$seed`.
macro_rules! on_device {
    ($which:expr, $seed:expr, $f:ident($($arg:expr),*)) => {
        match $which {
            DeviceArg::Cpu => $f(&Cpu::seed_from_u64($seed), $($arg),*),
            DeviceArg::Cuda => {
                #[cfg(feature = "cuda")]
                {
                    let dev = typeformer::device::open_cuda(0, $seed)?;
                    $f(&dev, $($arg),*)
                }
                #[cfg(not(feature = "cuda"))]
                {
                    Err(typeformer::Error::InvalidConfig(
                        "this typeformer was built without CUDA: rebuild it with `cargo build --release --features cuda` \
                         (needs the CUDA toolkit: nvcc, cuBLAS, NVRTC), or use --device cpu"
                            .into(),
                    ))
                }
            }
        }
    };
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
    /// Where to run.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,

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
    #[arg(long, default_value_t = TrainConfig::default().steps)]
    steps: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = TrainConfig::default().batch_size)]
    batch_size: usize,
    /// Warmup steps of the learning-rate schedule.
    #[arg(long, default_value_t = TrainConfig::default().warmup)]
    warmup: usize,
    /// Scale of the learning-rate schedule (lr = factor * d^-0.5 * min(step^-0.5, step * warmup^-1.5)).
    #[arg(long, allow_hyphen_values = true, default_value_t = TrainConfig::default().lr_factor)]
    lr_factor: f64,
    /// Fraction of the steps, at the end, over which the learning rate falls linearly towards
    /// zero (0: the paper's schedule to the last step).
    #[arg(long, allow_hyphen_values = true, default_value_t = TrainConfig::default().cooldown)]
    cooldown: f64,
    /// Label smoothing (0.1 in the paper).
    #[arg(long, allow_hyphen_values = true, default_value_t = TrainConfig::default().label_smoothing)]
    label_smoothing: f64,
    /// Dropout probability everywhere.
    #[arg(long, allow_hyphen_values = true, default_value_t = 0.0)]
    dropout: f64,
    /// Clip gradients to this global norm (0 disables clipping).
    #[arg(long, allow_hyphen_values = true, default_value_t = 1.0)]
    clip_norm: f64,
    /// Held-out sequences for evaluation.
    #[arg(long, default_value_t = 1000)]
    eval_size: usize,
    /// Seed for data and initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run directory (default: runs/<task>, which each run without --out replaces; a directory
    /// given here that holds a run needs --force).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Decoded examples to show.
    #[arg(long, default_value_t = 5)]
    show: usize,
    /// Also evaluate with beam search of this width (0: greedy only).
    #[arg(long, default_value_t = 0)]
    beam_width: usize,
    /// Length penalty α of beam search: scores are log-probability / ((5 + len) / 6)^α.
    /// 0 compares raw log-probabilities (which favour short outputs), 1 about per-token averages.
    #[arg(long, allow_hyphen_values = true, default_value_t = 1.0)]
    length_penalty: f64,
    /// Replace the model --out holds (it stays until the new one is complete).
    #[arg(long)]
    force: bool,
}

/// `--length-penalty` is refused when it is not a number, whether or not beam search runs.
fn length_penalty(alpha: f64) -> typeformer::Result<()> {
    if alpha.is_finite() {
        Ok(())
    } else {
        Err(typeformer::Error::InvalidConfig(format!("--length-penalty must be a finite number, got {alpha}")))
    }
}

/// `--clip-norm`: 0 turns clipping off; anything else must be a positive number.
fn clip_norm(value: f64) -> typeformer::Result<Option<f64>> {
    match value {
        0.0 => Ok(None),
        v if v.is_finite() && v > 0.0 => Ok(Some(v)),
        v => Err(typeformer::Error::InvalidConfig(format!(
            "--clip-norm must be a positive number, or 0 for no clipping; got {v}"
        ))),
    }
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
    typeformer::reuse_freed_memory();
    typeformer::report_oversized_writes();
    let command = Cli::parse().command.unwrap_or_else(|| {
        // The main job: `train` with every default.
        Cli::parse_from(["typeformer", "train"]).command.expect("train parses")
    });
    let done = |r: typeformer::Result<()>| r.map(|()| ExitCode::SUCCESS);
    let result = match command {
        Command::Train(args) => train(&args),
        Command::TrainLm(args) => train_lm(&args),
        Command::Generate(args) => done(generate_text(&args)),
        Command::Chat(args) => done(chat(&args)),
        Command::Evaluate(args) => done(evaluate(&args)),
        Command::Attention(args) => done(attention(&args)),
        Command::Embed(args) => done(embed(&args)),
        Command::Summary(args) => done(summary(&args)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            note!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn train(args: &TrainArgs) -> typeformer::Result<ExitCode> {
    on_device!(args.device, args.seed, train_on(args))
}

fn train_on<Dev: Device<f32>>(dev: &Dev, args: &TrainArgs) -> typeformer::Result<ExitCode> {
    length_penalty(args.length_penalty)?;
    let task = args.task.task();
    let run = TaskRun {
        spec: TaskSpec { task, symbols: args.symbols, min_len: args.min_len, max_len: args.max_len },
        train: TrainConfig {
            steps: args.steps,
            batch_size: args.batch_size,
            label_smoothing: args.label_smoothing,
            warmup: args.warmup,
            lr_factor: args.lr_factor,
            cooldown: args.cooldown,
            adam: AdamConfig { clip_norm: clip_norm(args.clip_norm)?, ..AdamConfig::default() },
        },
        dropout: args.dropout,
        eval_size: args.eval_size,
        seed: args.seed,
        // The default directory is the scratch place of `cargo run --release`, run again and
        // again; a directory the user names keeps its run unless --force says otherwise.
        overwrite: args.force || args.out.is_none(),
        stop: Some(interrupt_flag()?),
        out_dir: Some(args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(task.to_string()))),
        model_name: match args.model {
            ModelArg::Small => "small".into(),
            ModelArg::Medium => "medium".into(),
        },
        beam: (args.beam_width > 0).then_some(BeamConfig {
            width: args.beam_width,
            length_penalty: args.length_penalty,
            max_len: 0,
        }),
    };
    // Fail on a bad configuration before printing anything else.
    run.spec.validate(TASK_VOCAB, typeformer::models::TASK_POSITIONS)?;
    run.train.validate()?;
    let replicas = data_parallel_exchange()?;
    let exchange = Metered::new(&*replicas);
    let root = exchange.rank() == 0;
    if root {
        introduce(&run, args.model);
    }
    let progress = root.then(|| Progress::new(args.steps, 0));
    let mut smoothed = None::<f64>;
    let on_step = |log: &StepLog| {
        let s = smoothed.map_or(log.loss, |s| 0.9 * s + 0.1 * log.loss);
        smoothed = Some(s);
        if let Some(progress) = &progress {
            progress.step(log.step, format!("loss {s:.4} | {:.0} tok/s | lr {:.2e}", log.tokens_per_sec, log.lr));
        }
    };
    let report = match args.model {
        ModelArg::Small => {
            run_task_on::<TaskSmall<f32, Dev>, TASK_VOCAB, f32, Dev>(&exchange, &run, dev, on_step).map(|r| r.1)
        }
        ModelArg::Medium => {
            run_task_on::<TaskMedium<f32, Dev>, TASK_VOCAB, f32, Dev>(&exchange, &run, dev, on_step).map(|r| r.1)
        }
    };
    if let Some(progress) = &progress {
        progress.finish();
    }
    match report {
        Ok(_) if !root => Ok(ExitCode::SUCCESS),
        Ok(report) => {
            if let Some(line) = exchange_summary(&exchange, report.logs.len(), report.train_seconds) {
                note!("{line}");
            }
            print_report(&run, &report, args.show);
            Ok(ExitCode::SUCCESS)
        }
        Err(typeformer::Error::Interrupted { .. }) if !root => Ok(ExitCode::from(INTERRUPTED as u8)),
        Err(typeformer::Error::Interrupted { step }) => {
            say!("interrupted after step {step}: nothing was saved (a task run saves its model when it ends)");
            Ok(ExitCode::from(INTERRUPTED as u8))
        }
        Err(e) => Err(e),
    }
}

/// What the run is about to do, for someone who has never seen the task or the model.
fn introduce(run: &TaskRun, model: ModelArg) {
    let spec = &run.spec;
    let example = example_source(spec, spec.max_len.min(6).max(spec.min_len));
    let alphabet: String = SYMBOL_ALPHABET.chars().take(spec.symbols).collect();
    let (d, heads, enc, dec, params) = match model {
        ModelArg::Small => (
            TaskSmallSpec::D_MODEL,
            TaskSmallSpec::HEADS,
            TaskSmallSpec::ENCODER_LAYERS,
            TaskSmallSpec::DECODER_LAYERS,
            TaskSmallSpec::NUM_PARAMS,
        ),
        ModelArg::Medium => (
            TaskMediumSpec::D_MODEL,
            TaskMediumSpec::HEADS,
            TaskMediumSpec::ENCODER_LAYERS,
            TaskMediumSpec::DECODER_LAYERS,
            TaskMediumSpec::NUM_PARAMS,
        ),
    };
    note!("typeformer: training the Transformer of \"Attention Is All You Need\" from scratch");
    note!(
        "  task:  {} sequences of {} to {} symbols from {alphabet}, e.g. {} -> {}",
        spec.task,
        spec.min_len,
        spec.max_len,
        symbol_text(&example),
        symbol_text(&spec.task.apply(&example))
    );
    note!(
        "  model: {} encoder-decoder, d_model {d}, {heads} heads, {enc} + {dec} layers, {params} parameters",
        run.model_name
    );
    note!(
        "  plan:  {} steps of {} sequences, then greedy decoding of {} held-out sequences that no \
         training batch contains",
        run.train.steps,
        run.train.batch_size,
        run.eval_size
    );
    if let (Some(dir), true) = (&run.out_dir, run.overwrite) {
        if let Ok(Some(_)) = Checkpoint::latest(dir) {
            note!(
                "  note:  this run replaces the earlier one in {} once it is complete (--out DIR keeps runs apart)",
                dir.display()
            );
        }
    }
}

/// A source of `len` symbols that shows the task at work (not a sorted run, mostly distinct).
fn example_source(spec: &TaskSpec, len: usize) -> Vec<usize> {
    (0..len).map(|i| FIRST_SYMBOL + (i * 7 + 3) % spec.symbols).collect()
}

fn summary(args: &SummaryArgs) -> typeformer::Result<()> {
    if let (SummaryFormat::Dot, true) = (args.format, args.params) {
        return Err(typeformer::Error::InvalidConfig(
            "--params lists tensors in the text format; a --format dot graph has none".into(),
        ));
    }
    match args.preset {
        PresetArg::PaperBase => summary_of::<PaperBaseSpec>(args, Some("65M")),
        PresetArg::PaperBig => summary_of::<PaperBigSpec>(args, Some("213M")),
        PresetArg::Gpt2Small => summary_of::<Gpt2SmallSpec>(args, None),
        PresetArg::BertBase => summary_of::<BertBaseSpec>(args, None),
        PresetArg::MinilmL6 => summary_of::<MiniLmL6Spec>(args, None),
        PresetArg::TaskSmall => summary_of::<TaskSmallSpec>(args, None),
        PresetArg::TaskMedium => summary_of::<TaskMediumSpec>(args, None),
        PresetArg::LmSmall => summary_of::<LmSmallSpec>(args, None),
        PresetArg::LlamaSmall => summary_of::<LlamaSmallSpec>(args, None),
        PresetArg::Smollm2_135m => summary_of::<SmolLm2_135MSpec>(args, None),
    }
    Ok(())
}

/// Prints the summary of architecture `S`; `paper` is the count the paper reports.
fn summary_of<S: Architecture>(args: &SummaryArgs, paper: Option<&str>) {
    let s = S::summary();
    if let SummaryFormat::Dot = args.format {
        say!("{}", s.to_dot(S::NAME).trim_end());
        return;
    }
    say!("{} ({})", S::NAME, S::KIND);
    say!("{s}");
    if let Some(paper) = paper {
        let stacks = s.trainable_under(&["encoder.", "decoder."]);
        say!("encoder and decoder stacks without embeddings: {stacks} (as torch.nn.Transformer counts them)");
        say!("with embeddings: {} (the paper reports {paper})", s.trainable_params());
    }
    if args.params {
        say!("\n{}", s.params_table().trim_end());
    }
}

fn embed(args: &EmbedArgs) -> typeformer::Result<()> {
    on_device!(args.device, 0, embed_on(args))
}

/// Texts read from stdin per round of batches.
const EMBED_BLOCK: usize = 1024;

fn embed_on<Dev: Device<f32>>(dev: &Dev, args: &EmbedArgs) -> typeformer::Result<()> {
    let config = BertConfig::from_file(&args.model.join("config.json"))?;
    if args.batch_size == 0 {
        return Err(typeformer::Error::InvalidConfig("--batch-size must be at least 1".into()));
    }
    // Checkpoints of BertForMaskedLM have no pooler, which sentence embeddings do not use.
    let weights = args.model.join("model.safetensors");
    let has_pooler = typeformer::io::tensor_names(&weights)?
        .iter()
        .any(|n| n == "pooler.dense.weight" || n == "bert.pooler.dense.weight");
    macro_rules! embed_as {
        ($ty:ty) => {{
            let encoder = SentenceEncoder::<$ty>::load(&args.model, dev)?;
            // Inference keeps about one layer's activations (half a training step's) for texts
            // of up to the tokenizer's length.
            let len = encoder.tokenizer.max_len();
            let per_token = training_bytes_per_token(config.d_model, config.d_ff, config.heads, 1, len, 0, 4) / 2;
            check_memory("--batch-size", args.batch_size, len as u64 * per_token)?;
            if !encoder.unused.is_empty() {
                let n = encoder.unused.len();
                note!(
                    "note: {n} {} of {} {} not part of the encoder and {} skipped: {}",
                    if n == 1 { "tensor" } else { "tensors" },
                    weights.display(),
                    if n == 1 { "is" } else { "are" },
                    if n == 1 { "was" } else { "were" },
                    encoder.unused.join(", ")
                );
            }
            // The weights stay as loaded: packed copies make the CPU's products faster.
            let packed = PackedWeights::of(&encoder.model);
            embed_lines(|texts| packed.run(|| encoder.embed_all(texts, args.batch_size)))
        }};
    }
    macro_rules! with_bert {
        ($($preset:ident: $name:literal),*) => {{
            $(
                if $preset::<f32, Dev>::config_mismatches(&config).is_empty() {
                    return if has_pooler { embed_as!($preset<f32, Dev>) } else { embed_as!($preset<f32, Dev, NoPooler>) };
                }
            )*
            let supported = [$($name),*];
            Err(typeformer::Error::InvalidConfig(format!(
                "{} describes a BERT this build has no type for (supported: {}); the differences from {}:\n{}",
                args.model.join("config.json").display(),
                supported.join(", "),
                supported[0],
                MiniLmL6::<f32, Dev>::config_mismatches(&config).join("\n")
            )))
        }};
    }
    with_bert!(MiniLmL6: "all-MiniLM-L6-v2", BertBase: "bert-base")
}

/// Reads stdin in blocks, embeds each with `embed` and writes one JSON array per line. A line
/// that is not UTF-8 ends the input there: every line before it is embedded and written, then
/// the error names the line.
fn embed_lines(embed: impl Fn(&[&str]) -> typeformer::Result<Vec<Vec<f32>>>) -> typeformer::Result<()> {
    use std::io::BufRead;
    let mut lines = std::io::stdin().lock().split(b'\n');
    let bar = ProgressBar::hidden();
    bar.set_style(ProgressStyle::with_template("{elapsed_precise} {pos} texts ({per_sec})").expect("a valid template"));
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut line_number = 0usize;
    let mut failure = None;
    while failure.is_none() {
        let mut block = Vec::with_capacity(EMBED_BLOCK);
        for line in lines.by_ref() {
            line_number += 1;
            let bytes = line.map_err(|e| typeformer::Error::InvalidConfig(format!("cannot read stdin: {e}")))?;
            let bytes = bytes.strip_suffix(b"\r").unwrap_or(&bytes).to_vec();
            match String::from_utf8(bytes) {
                Ok(text) => block.push(text),
                Err(e) => {
                    failure = Some(typeformer::Error::InvalidConfig(format!(
                        "stdin line {line_number} is not UTF-8 text (invalid byte at column {}); \
                         the {} lines before it were embedded",
                        e.utf8_error().valid_up_to() + 1,
                        line_number - 1
                    )));
                    break;
                }
            }
            if block.len() == EMBED_BLOCK {
                break;
            }
        }
        if block.is_empty() {
            break;
        }
        if block.len() == EMBED_BLOCK && bar.is_hidden() {
            // A large input: show progress on stderr (only if it is a terminal).
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        let texts: Vec<&str> = block.iter().map(String::as_str).collect();
        // The first line of this block, for errors that name the line.
        let first = line_number + 1 - block.len() - usize::from(failure.is_some());
        let rows = embed(&texts).map_err(|e| {
            // Which line: embed them one at a time until one fails.
            let line = (0..texts.len()).find(|&i| embed(&texts[i..=i]).is_err()).map_or(first, |i| first + i);
            typeformer::Error::InvalidConfig(format!(
                "stdin line {line}: {e}; the lines before its block were embedded"
            ))
        })?;
        for (i, row) in rows.iter().enumerate() {
            if row.iter().any(|v| !v.is_finite()) {
                out.flush().unwrap_or_else(|e| stdout_failed(e));
                return Err(typeformer::Error::InvalidConfig(format!(
                    "stdin line {}: its embedding is not a number (the model's weights overflow it); the lines \
                     before it were embedded",
                    first + i
                )));
            }
            let json: Vec<String> = row.iter().map(f32::to_string).collect();
            if let Err(e) = writeln!(out, "[{}]", json.join(",")) {
                stdout_failed(e);
            }
        }
        bar.inc(block.len() as u64);
        if block.len() < EMBED_BLOCK {
            break;
        }
    }
    bar.finish_and_clear();
    out.flush().unwrap_or_else(|e| stdout_failed(e));
    failure.map_or(Ok(()), Err)
}

fn evaluate(args: &EvaluateArgs) -> typeformer::Result<()> {
    on_device!(args.device, 0, evaluate_on(args))
}

/// Calls `$f::<M, Dev>(args...)` with `M` the task model type that a checkpoint of `train`
/// holds (by the model name in its metadata), or fails naming what it holds.
macro_rules! with_task_model {
    ($checkpoint:expr, $f:ident::<$Dev:ty>($($arg:expr),*)) => {{
        let checkpoint: &TaskCheckpoint = $checkpoint;
        match checkpoint.model_name.as_str() {
            "small" => $f::<TaskSmall<f32, $Dev>, $Dev>($($arg),*),
            "medium" => $f::<TaskMedium<f32, $Dev>, $Dev>($($arg),*),
            other => Err(typeformer::Error::InvalidConfig(format!(
                "{} holds a `{other}` model; this command takes checkpoints of `train` (small or medium)",
                checkpoint.path.display()
            ))),
        }
    }};
}

fn evaluate_on<Dev: Device<f32>>(dev: &Dev, args: &EvaluateArgs) -> typeformer::Result<()> {
    length_penalty(args.length_penalty)?;
    let beam = (args.beam_width > 0).then_some(BeamConfig {
        width: args.beam_width,
        length_penalty: args.length_penalty,
        max_len: 0,
    });
    let checkpoint = TaskCheckpoint::read(&args.checkpoint)?;
    let evaluation = with_task_model!(&checkpoint, evaluate_model::<Dev>(&checkpoint, dev, args.eval_size, beam))?;
    print_evaluation(&evaluation, 0);
    Ok(())
}

fn evaluate_model<M, Dev>(
    checkpoint: &TaskCheckpoint,
    dev: &Dev,
    eval_size: Option<usize>,
    beam: Option<BeamConfig>,
) -> typeformer::Result<TaskEvaluation>
where
    M: Seq2Seq<TASK_VOCAB, TASK_VOCAB, f32, Dev> + TensorCollection<f32, Dev, To<f32, Dev> = M>,
    M::State: Clone,
    Dev: Device<f32>,
{
    evaluate_checkpoint::<M, TASK_VOCAB, f32, Dev>(checkpoint, dev, eval_size, beam)
}

fn attention(args: &AttentionArgs) -> typeformer::Result<()> {
    on_device!(args.device, 0, attention_on(args))
}

fn attention_on<Dev: Device<f32>>(dev: &Dev, args: &AttentionArgs) -> typeformer::Result<()> {
    let checkpoint = TaskCheckpoint::read(&args.checkpoint)?;
    let source = parse_symbols(&args.text, checkpoint.spec.symbols)?;
    let longest = typeformer::models::TASK_POSITIONS - 1;
    if source.len() > longest {
        return Err(typeformer::Error::InvalidConfig(format!(
            "--text has {} symbols; the model reads at most {longest}",
            source.len()
        )));
    }
    let kinds = match args.map {
        MapArg::All => vec![AttentionKind::EncoderSelf, AttentionKind::DecoderSelf, AttentionKind::Cross],
        MapArg::EncoderSelf => vec![AttentionKind::EncoderSelf],
        MapArg::DecoderSelf => vec![AttentionKind::DecoderSelf],
        MapArg::Cross => vec![AttentionKind::Cross],
    };
    let selection = AttentionSelection { kinds, layer: args.layer, head: args.head };
    let title = format!("{} ({} task)", args.checkpoint.display(), checkpoint.spec.task);
    let decoded = with_task_model!(
        &checkpoint,
        plot_checkpoint_attention::<Dev>(&checkpoint, dev, &source, &selection, &args.out, &title)
    )?;
    say!("{} -> {}", symbol_text(&source), symbol_text(&decoded));
    say!("wrote {}", args.out.display());
    Ok(())
}

fn plot_checkpoint_attention<M, Dev>(
    checkpoint: &TaskCheckpoint,
    dev: &Dev,
    source: &[usize],
    selection: &AttentionSelection,
    out: &std::path::Path,
    title: &str,
) -> typeformer::Result<Vec<usize>>
where
    M: Seq2Seq<TASK_VOCAB, TASK_VOCAB, f32, Dev> + TensorCollection<f32, Dev, To<f32, Dev> = M>,
    Dev: Device<f32>,
{
    let model: M = checkpoint.load_model::<M, TASK_VOCAB, f32, Dev>(dev)?;
    plot_attention::<M, TASK_VOCAB, f32, Dev>(&model, source, selection, out, title)
}

fn print_evaluation(evaluation: &TaskEvaluation, show: usize) {
    let decoded = &evaluation.decoded;
    let n = decoded.len();
    if show > 0 {
        say!("held-out sequences (source -> greedy decoding):");
        for (example, output) in decoded.iter().take(show) {
            print_decoded(example, output);
        }
        let wrong = decoded.iter().filter(|(e, o)| &e.target != o).count();
        if wrong > 0 {
            say!("{wrong} of {n} decoded wrongly, for example (^ marks the errors):");
            // Wrong ones not among those just shown.
            for (example, output) in decoded.iter().skip(show).filter(|(e, o)| &e.target != o).take(show) {
                print_decoded(example, output);
            }
        }
    }
    if let Some(beam) = evaluation.beam_exact_match {
        say!("beam search: exact match {beam:.3} on {n} held-out sequences");
    }
    say!("exact match: {:.3} on {n} held-out sequences", evaluation.exact_match);
}

/// One decoded example: `ok`, or `WRONG` with the expected output and a `^` under each symbol
/// that differs from it (and under each missing or extra one).
fn print_decoded(example: &Example, output: &[usize]) {
    let (source, got) = (symbol_text(&example.source), symbol_text(output));
    if example.target == output {
        say!("  {source:>16} -> {got:<16} ok");
        return;
    }
    say!("  {source:>16} -> {got:<16} WRONG, expected {}", symbol_text(&example.target));
    let marks: String = (0..output.len().max(example.target.len()))
        .map(|i| if output.get(i) == example.target.get(i) { ' ' } else { '^' })
        .collect();
    // Under the decoded symbols, however long the source.
    say!("{:width$}{marks}", "", width = 2 + source.chars().count().max(16) + 4);
}

fn print_report(run: &TaskRun, report: &TaskReport, show: usize) {
    let last = report.logs.last().expect("at least one step");
    let tokens: f64 = report.logs.iter().map(|l| l.tokens_per_sec).sum::<f64>() / report.logs.len() as f64;
    let floor = label_smoothing_floor(run.train.label_smoothing, TASK_VOCAB);
    let floor_note = if run.train.label_smoothing > 0.0 {
        format!(" (label smoothing {} puts the least possible at {floor:.4})", run.train.label_smoothing)
    } else {
        String::new()
    };
    say!(
        "trained {} steps in {:.1} s (mean {tokens:.0} tok/s), final loss {:.4}{floor_note}",
        last.step,
        report.train_seconds,
        last.loss
    );
    print_evaluation(&report.evaluation, show);
    for warning in &report.warnings {
        note!("warning: {warning}");
    }
    let Some(dir) = &run.out_dir else { return };
    say!("files in {}:", dir.display());
    for file in &report.files {
        let name = file.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
        let shown = file.strip_prefix(dir).unwrap_or(file).display().to_string();
        let what = match name.as_str() {
            "model.safetensors" => {
                format!("the trained model; evaluate it again: typeformer evaluate --checkpoint {}", dir.display())
            }
            "loss.csv" => "the loss, learning rate and gradient norm of every step".into(),
            "loss.png" => "the training loss, plotted".into(),
            "attention.png" => format!(
                "where the decoder looks in the source while decoding a held-out sequence; any other: \
                 typeformer attention --checkpoint {} --text {}",
                dir.display(),
                symbol_text(&example_source(&run.spec, run.spec.max_len))
            ),
            _ => String::new(),
        };
        say!("  {shown:<30} {what}");
    }
}

/// Progress of a training run on stderr: a bar with the time left on a terminal, and a line
/// every tenth of the run otherwise (logs, pipes), so that something shows either way.
struct Progress {
    bar: ProgressBar,
    steps: usize,
    plain: bool,
    start: std::time::Instant,
}

impl Progress {
    /// A run of `steps` steps, starting after step `start`.
    fn new(steps: usize, start: usize) -> Self {
        let bar = ProgressBar::new(steps as u64);
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} steps, {eta} left | {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_position(start as u64);
        let plain = !std::io::stderr().is_terminal();
        Self { bar, steps, plain, start: std::time::Instant::now() }
    }

    /// Step `step` is done; `message` says how it went.
    fn step(&self, step: usize, message: String) {
        if self.plain {
            let every = (self.steps / 10).max(1);
            if step == 1 || step.is_multiple_of(every) || step == self.steps {
                let elapsed = self.start.elapsed().as_secs_f64();
                note!("step {step}/{} ({elapsed:.1} s) {message}", self.steps);
            }
        }
        self.bar.set_position(step as u64);
        self.bar.set_message(message);
    }

    fn finish(&self) {
        self.bar.finish();
    }
}

fn train_lm(args: &TrainLmArgs) -> typeformer::Result<ExitCode> {
    on_device!(args.device, args.seed, train_lm_on(args))
}

fn train_lm_on<Dev: Device<f32>>(dev: &Dev, args: &TrainLmArgs) -> typeformer::Result<ExitCode> {
    match args.arch {
        LmArch::Gpt => train_lm_as::<LmSmall<f32, Dev>, Dev>(dev, args, LM_NAME, "GPT blocks"),
        LmArch::Llama => train_lm_as::<LlamaSmall<f32, Dev>, Dev>(dev, args, LLAMA_LM_NAME, "Llama blocks"),
    }
}

/// Rank 0's run of train-lm: the checkpoint in `lock`'s directory to resume (checked against
/// this command), or a fresh model where no run is to be replaced unasked.
fn root_lm_run<M, Dev>(
    dev: &Dev,
    args: &TrainLmArgs,
    cfg: &LmTrainConfig,
    name: &str,
    lock: &RunLock,
    metadata: &std::collections::HashMap<String, String>,
) -> typeformer::Result<LmRun<M, f32, Dev>>
where
    M: LanguageModel<BYTE_VOCAB, f32, Dev> + TensorCollection<f32, Dev, To<f32, Dev> = M> + BuildModule<Dev, f32>,
    Dev: Device<f32>,
{
    // With --force, even a run directory whose record cannot be read is replaced.
    let existing = match Checkpoint::latest(lock.dir()) {
        Err(_) if args.force => None,
        other => other?,
    };
    let occupants = Occupants::of(lock.dir())?;
    let run = if args.resume {
        if existing.is_none() {
            return Err(match occupants.refusal(lock.dir()).filter(|_| !occupants.unrecorded_steps.is_empty()) {
                Some(refusal) => refusal,
                None => typeformer::Error::InvalidConfig(format!(
                    "--resume: {} holds no checkpoint to continue; start the run without --resume",
                    args.out.display()
                )),
            });
        }
        let resume = load_lm_checkpoint::<M, f32, Dev>(lock.dir(), dev, name, cfg.adam)?;
        for key in ["data", "seed", "held_out"] {
            // (Checkpoints from before the held-out count was recorded have none to compare.)
            let unrecorded = key == "held_out" && !resume.metadata.contains_key(key);
            if resume.metadata.get(key) != metadata.get(key) && !unrecorded {
                let flag = match key {
                    "held_out" => "--eval-size",
                    "seed" => "--seed",
                    _ => "--data or --task",
                };
                return Err(typeformer::Error::InvalidConfig(format!(
                    "--resume needs the run's own {flag}: the checkpoint has `{}`, this command gives `{}`",
                    resume.metadata.get(key).map_or("nothing", String::as_str),
                    metadata.get(key).map_or("nothing", String::as_str)
                )));
            }
        }
        let step = resume.run.opt.step;
        if args.steps <= step {
            return Err(typeformer::Error::InvalidConfig(format!(
                "--steps {}: the checkpoint is already at step {step}; give more steps to continue it",
                args.steps
            )));
        }
        // Other settings may change, but then the run is no longer the one it would have been.
        for (key, flag) in SETTINGS {
            if let (Some(saved), Some(now)) = (resume.metadata.get(*key), metadata.get(*key)) {
                if saved != now {
                    note!(
                        "note: {flag} {now} differs from the run's {saved}: the resumed run will not equal an \
                         uninterrupted one"
                    );
                }
            }
        }
        if let Some(saved) = resume.metadata.get("dropout").filter(|d| **d != args.dropout.to_string()) {
            note!("note: --dropout {} is not applied: a resumed run keeps its dropout, {saved}", args.dropout);
        }
        for warning in &resume.warnings {
            note!("warning: {warning}");
        }
        note!("resuming {} at step {step}", args.out.display());
        resume.run
    } else {
        if let (Some(existing), false) = (&existing, args.force) {
            return Err(typeformer::Error::InvalidConfig(format!(
                "{} already holds a checkpoint (step {}): pass --resume to continue it, --force to replace it, \
                 or choose another --out",
                args.out.display(),
                existing.step
            )));
        }
        if let (Some(refusal), false) = (occupants.refusal(lock.dir()), args.force) {
            return Err(refusal);
        }
        lock.start_new_run();
        let mut model =
            M::try_build(dev).map_err(|e| typeformer::Error::Device(format!("cannot build the model: {e:?}")))?;
        typeformer::nn::set_dropout(&mut model, args.dropout)?;
        LmRun { model, opt: typeformer::train::Adam::new(cfg.adam)?, logs: Vec::new() }
    };
    Ok(run)
}

fn train_lm_as<M, Dev>(dev: &Dev, args: &TrainLmArgs, name: &str, blocks: &str) -> typeformer::Result<ExitCode>
where
    M: LanguageModel<BYTE_VOCAB, f32, Dev> + TensorCollection<f32, Dev, To<f32, Dev> = M> + BuildModule<Dev, f32>,
    Dev: Device<f32>,
{
    if args.task.is_some() && args.eval_size == 0 {
        return Err(typeformer::Error::InvalidConfig(
            "--eval-size 0: the addition task needs at least one held-out problem to measure accuracy on".into(),
        ));
    }
    let cfg = LmTrainConfig {
        steps: args.steps,
        batch_size: args.batch_size,
        context: args.context,
        warmup: args.warmup,
        lr_factor: args.lr_factor,
        adam: AdamConfig::default(),
        seed: args.seed,
        eval_every: args.eval_every,
        checkpoint_every: args.checkpoint_every,
        model_name: name.into(),
    };
    cfg.validate(M::CONTEXT)?;
    let replicas = data_parallel_exchange()?;
    let exchange = Metered::new(&*replicas);
    let root = exchange.rank() == 0;
    // Ctrl-C (or SIGTERM) while training stops after the step, with a checkpoint; once the last
    // checkpoint is written, it ends the evaluation at once. Installed before the run directory
    // is taken, so that a signal while the data is read still lets the run clean up.
    let stop = Arc::new(AtomicBool::new(false));
    let evaluating = Arc::new(AtomicBool::new(false));
    let (flag, done) = (stop.clone(), evaluating.clone());
    ctrlc::set_handler(move || {
        if done.load(Ordering::SeqCst) {
            note!("\ninterrupted during the final evaluation; the checkpoint is complete");
            std::process::exit(INTERRUPTED);
        }
        flag.store(true, Ordering::SeqCst);
    })
    .map_err(|e| typeformer::Error::Training(format!("cannot install the Ctrl-C handler: {e}")))?;
    let prepared = (|| {
        // Owned before anything is read or trained: a second run (or a --resume beside a
        // running one) stops here. Only rank 0 reads or writes the run directory.
        let lock = root.then(|| RunLock::acquire(&args.out)).transpose()?;
        let source = match (&args.data, args.task) {
            (Some(path), _) => LmSource::Text(ByteCorpus::from_file(path)?),
            (None, Some(LmTaskArg::Addition)) => {
                check_memory("--eval-size", args.eval_size, 64)?;
                LmSource::Addition(AdditionTask::new(args.digits, args.eval_size, args.seed)?)
            }
            (None, None) => unreachable!("clap requires --data or --task"),
        };
        let mut metadata = std::collections::HashMap::from([
            ("format".to_string(), "typeformer".to_string()),
            ("model".to_string(), name.to_string()),
            ("data".to_string(), source.describe()),
            ("seed".to_string(), args.seed.to_string()),
            ("batch_size".to_string(), args.batch_size.to_string()),
            ("context".to_string(), args.context.to_string()),
            ("warmup".to_string(), args.warmup.to_string()),
            ("lr_factor".to_string(), args.lr_factor.to_string()),
            ("dropout".to_string(), args.dropout.to_string()),
        ]);
        if let LmSource::Addition(task) = &source {
            // The held-out problems are kept out of training: another count is other data.
            metadata.insert("held_out".to_string(), task.held_out().len().to_string());
        }
        let run = match &lock {
            Some(lock) => root_lm_run::<M, Dev>(dev, args, &cfg, name, lock, &metadata)?,
            // Rank 0's model and optimizer reach the other ranks before the first step.
            None => LmRun {
                model: M::try_build(dev)
                    .map_err(|e| typeformer::Error::Device(format!("cannot build the model: {e:?}")))?,
                opt: typeformer::train::Adam::new(cfg.adam)?,
                logs: Vec::new(),
            },
        };
        Ok((lock, source, metadata, run))
    })();
    let (lock, source, metadata, mut run) = typeformer::train::agree(&exchange, prepared)?;
    if root {
        let parallel = match exchange.ranks() {
            1 => String::new(),
            n => format!(", {n} data-parallel ranks of {} sequences", args.batch_size / n.max(1)),
        };
        note!(
            "training a byte-level language model ({blocks}, d 128, 4 blocks, context {}) on {}{parallel}",
            args.context,
            source.describe()
        );
    }
    if exchange.ranks() == 1 && stop.load(Ordering::SeqCst) {
        say!("interrupted before training began: nothing was written");
        return Ok(ExitCode::from(INTERRUPTED as u8));
    }
    let progress = root.then(|| Progress::new(args.steps, run.opt.step));
    let mut last_val = None;
    let (first_step, start) = (run.opt.step, std::time::Instant::now());
    let outcome = train_language_model_on(
        &exchange,
        &mut run,
        &source,
        &cfg,
        lock.as_ref(),
        metadata,
        &stop,
        |log: &StepLog| {
            last_val = log.val_loss.or(last_val);
            let val = last_val.map_or(String::new(), |v: f64| format!(" | val {v:.3} (ppl {:.2})", v.exp()));
            if let Some(progress) = &progress {
                progress.step(
                    log.step,
                    format!("loss {:.3}{val} | {:.0} tok/s | lr {:.2e}", log.loss, log.tokens_per_sec, log.lr),
                );
            }
        },
    )?;
    let Some(lock) = lock else {
        // The other ranks end here: rank 0 reports and evaluates.
        return Ok(if outcome == LmStop::Interrupted { ExitCode::from(INTERRUPTED as u8) } else { ExitCode::SUCCESS });
    };
    if let Some(progress) = &progress {
        progress.finish();
    }
    if let Some(line) = exchange_summary(&exchange, run.opt.step - first_step, start.elapsed().as_secs_f64()) {
        note!("{line}");
    }
    // The plot is a view of the run: a failure to draw it is reported, not fatal.
    if !run.logs.is_empty() {
        let png = lock.dir().join("loss.png");
        if let Err(e) = typeformer::train::write_curve_png(&png, &run.logs, "language model: training loss") {
            note!("warning: no plot: {e}");
        }
    }
    if outcome == LmStop::Interrupted {
        say!(
            "interrupted: the checkpoint at step {} is in {}; continue with the same command and --resume",
            run.opt.step,
            args.out.display()
        );
        return Ok(ExitCode::from(INTERRUPTED as u8));
    }
    evaluating.store(true, Ordering::SeqCst);
    let checkpoint = latest_checkpoint(lock.dir())?;
    say!("checkpoint of step {} in {}", checkpoint.step, checkpoint.dir.display());
    let val = validation_loss(&run.model, &source, cfg.batch_size, cfg.context)?;
    say!("validation loss: {val:.4} (perplexity {:.3}) after {} steps", val.exp(), run.opt.step);
    if let LmSource::Addition(task) = &source {
        let accuracy = addition_accuracy(&run.model, task)?;
        say!("addition accuracy: {accuracy:.3} on {} held-out problems", task.held_out().len());
    }
    Ok(ExitCode::SUCCESS)
}

fn generate_text(args: &GenerateArgs) -> typeformer::Result<()> {
    on_device!(args.device, 0, generate_on(args))
}

fn generate_on<Dev: Device<f32>>(dev: &Dev, args: &GenerateArgs) -> typeformer::Result<()> {
    let Some(checkpoint) = &args.checkpoint else {
        return generate_llama(dev, args);
    };
    let model_file = |c: &Checkpoint| c.file(typeformer::train::MODEL_FILE);
    let name = typeformer::io::read_latest(checkpoint, |c| typeformer::io::read_metadata(&model_file(c)?))?
        .get("model")
        .cloned()
        .unwrap_or_default();
    if name == LLAMA_LM_NAME {
        generate_bytes::<LlamaSmall<f32, Dev>, Dev>(dev, args, checkpoint, LLAMA_LM_NAME)
    } else {
        generate_bytes::<LmSmall<f32, Dev>, Dev>(dev, args, checkpoint, LM_NAME)
    }
}

/// `generate` with a byte-level model `M` trained by train-lm.
fn generate_bytes<M, Dev>(
    dev: &Dev,
    args: &GenerateArgs,
    checkpoint: &std::path::Path,
    name: &str,
) -> typeformer::Result<()>
where
    M: LanguageModel<BYTE_VOCAB, f32, Dev> + TensorCollection<f32, Dev, To<f32, Dev> = M>,
    Dev: Device<f32>,
{
    // Inference reads the model alone: not the optimizer, not the loss curve.
    let (model, _, _) = load_lm_model::<M, f32, Dev>(checkpoint, dev, name)?;
    let stop_tokens = match &args.stop {
        None => Vec::new(),
        Some(s) if s.len() == 1 => vec![s.as_bytes()[0] as usize],
        Some(s) => {
            return Err(typeformer::Error::InvalidConfig(format!(
                "--stop takes one byte (one ASCII character), got `{s}`"
            )))
        }
    };
    let cfg = GenerateConfig { max_new_tokens: args.max_new_tokens, stop_tokens };
    let mut sampler = Sampler::new(SamplingConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    })?;
    let text = args.prompt.as_deref().expect("clap requires --prompt without --prompts-file");
    let prompt: Vec<usize> = text.bytes().map(usize::from).collect();
    let start = std::time::Instant::now();
    let mut stdout = std::io::stdout().lock();
    // The prompt is printed with the first token, once generation has passed its checks; a
    // reader that went away ends the generation, a failed write ends it with an error.
    let mut started = false;
    let mut failed = None;
    let out = generate_while::<M, BYTE_VOCAB, f32, Dev>(&model, &prompt, &cfg, &mut sampler, |t| {
        let prompt_text = if std::mem::replace(&mut started, true) { &[][..] } else { text.as_bytes() };
        match stdout.write_all(prompt_text).and_then(|()| stdout.write_all(&[t as u8])).and_then(|()| stdout.flush()) {
            Ok(()) => std::ops::ControlFlow::Continue(()),
            Err(e) => {
                failed = Some(e);
                std::ops::ControlFlow::Break(())
            }
        }
    })?;
    if let Some(e) = failed {
        stdout_failed(e);
    }
    let ended = if started { writeln!(stdout) } else { writeln!(stdout, "{text}") };
    ended.unwrap_or_else(|e| stdout_failed(e));
    let secs = start.elapsed().as_secs_f64();
    note!("{} tokens in {secs:.2} s ({:.1} tokens/s)", out.len(), out.len() as f64 / secs);
    Ok(())
}

/// The sampler the sampling flags describe.
fn sampler_of(temperature: f64, top_k: Option<usize>, top_p: Option<f64>, seed: u64) -> typeformer::Result<Sampler> {
    Sampler::new(SamplingConfig { temperature, top_k, top_p, seed })
}

/// A Llama-family model, its tokenizer and the file's metadata, from a GGUF file of a shape the
/// command line has a type for.
fn open_llama<Dev: Device<f32>>(
    dev: &Dev,
    path: &std::path::Path,
) -> typeformer::Result<(SmolLm2_135M<f32, Dev>, TextTokenizer, Gguf)> {
    let file = Gguf::open(path)?;
    let tokenizer = TextTokenizer::from_gguf(&file)?;
    // The type is SmolLM2-135M's; the loader checks the file against it.
    let model: SmolLm2_135M<f32, Dev> = read_gguf_llama(dev, &file).map_err(|e| match e {
        typeformer::Error::CheckpointMismatch { path, problems } => typeformer::Error::CheckpointMismatch {
            path,
            problems: format!(
                "{problems}\n(the command line runs files of SmolLM2-135M's shape; a program of your own runs any \
                 shape that has a `Llama<...>` type, see the README)"
            ),
        },
        other => other,
    })?;
    Ok((model, tokenizer, file))
}

/// `f()` with the products reading the file's quantized blocks (on the CPU, unless
/// `dequantized`), or as it is.
fn maybe_quantized<Dev: Device<f32>, R>(
    model: &SmolLm2_135M<f32, Dev>,
    file: &Gguf,
    dequantized: bool,
    f: impl FnOnce() -> R,
) -> typeformer::Result<R> {
    let on_cpu = (model as &dyn std::any::Any).downcast_ref::<SmolLm2_135M<f32, Cpu>>();
    match on_cpu {
        Some(model) if !dequantized => Ok(QuantizedWeights::from_gguf(model, file)?.run(f)),
        _ => Ok(f()),
    }
}

fn generate_llama<Dev: Device<f32>>(dev: &Dev, args: &GenerateArgs) -> typeformer::Result<()> {
    let path = args.model.as_ref().expect("clap requires --checkpoint or --model");
    // A bad prompts file is reported before the model loads.
    let listed = args.prompts_file.as_deref().map(read_prompts).transpose()?;
    let (model, tokenizer, file) = open_llama(dev, path)?;
    let stop_tokens = match &args.stop {
        None => turn_end_tokens(&file, &tokenizer),
        Some(text) => match tokenizer.encode_plain(text)?[..] {
            [id] => vec![id],
            ref ids => {
                return Err(typeformer::Error::InvalidConfig(format!(
                    "--stop takes text that is one token of this model's vocabulary; `{text}` is {} tokens",
                    ids.len()
                )))
            }
        },
    };
    let cfg = GenerateConfig { max_new_tokens: args.max_new_tokens, stop_tokens };
    let mut sampler = sampler_of(args.temperature, args.top_k, args.top_p, args.seed)?;
    if let (Some(list), Some(listed)) = (&args.prompts_file, listed) {
        return generate_llama_batch(&model, &tokenizer, &file, (list, listed), args.dequantized, &cfg, &mut sampler);
    }
    let text = args.prompt.as_deref().expect("clap requires --prompt without --prompts-file");
    let prompt = llama_prompt(&tokenizer, &file, text)?;
    if prompt.is_empty() {
        return Err(typeformer::Error::InvalidConfig(
            "the prompt is empty: generation needs at least one token".into(),
        ));
    }
    let mut start = std::time::Instant::now();
    let mut stdout = std::io::stdout().lock();
    let (mut shown, mut started) = (Streamed::default(), false);
    let mut failed = None;
    let out = maybe_quantized(&model, &file, args.dequantized, || {
        start = std::time::Instant::now(); // the clock starts once the weights are ready
        generate_while::<SmolLm2_135M<f32, Dev>, 49_152, f32, Dev>(&model, &prompt, &cfg, &mut sampler, |t| {
            if !std::mem::replace(&mut started, true) {
                let _ = write!(stdout, "{text}");
            }
            if cfg.stop_tokens.contains(&t) {
                return std::ops::ControlFlow::Continue(());
            }
            shown.push(&tokenizer, t, &mut |piece| print_piece(&mut stdout, piece)).unwrap_or_else(|e| {
                failed = Some(e);
                std::ops::ControlFlow::Break(())
            })
        })
    })??;
    if let Some(e) = failed {
        return Err(e);
    }
    let _ = shown.finish(&tokenizer, &mut |piece| print_piece(&mut stdout, piece))?;
    writeln!(stdout).unwrap_or_else(|e| stdout_failed(e));
    let secs = start.elapsed().as_secs_f64();
    note!(
        "{} tokens in {secs:.2} s ({:.1} tokens/s, prompt of {} tokens included)",
        out.len(),
        out.len() as f64 / secs,
        prompt.len()
    );
    Ok(())
}

/// The ids of `text` for the Llama `file`: as llama.cpp does, a file that asks for a BOS token
/// gets one before the prompt.
fn llama_prompt(tokenizer: &TextTokenizer, file: &Gguf, text: &str) -> typeformer::Result<Vec<usize>> {
    let mut prompt = tokenizer.encode_plain(text)?;
    if file.get("tokenizer.ggml.add_bos_token").and_then(typeformer::io::GgufValue::as_bool) == Some(true) {
        if let Some(bos) = file.get("tokenizer.ggml.bos_token_id").and_then(typeformer::io::GgufValue::as_u64) {
            prompt.insert(0, bos as usize);
        }
    }
    Ok(prompt)
}

/// The prompts of a `--prompts-file` with their line numbers: one per line, blank lines
/// skipped, a line in double quotes read as a JSON string.
fn read_prompts(path: &std::path::Path) -> typeformer::Result<Vec<(usize, String)>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| typeformer::Error::Io { path: path.to_path_buf(), source: e })?;
    let mut prompts = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r').trim_start_matches('\u{feff}');
        if line.trim().is_empty() {
            continue;
        }
        if line.trim_start().starts_with('"') {
            let prompt: String = serde_json::from_str(line.trim()).map_err(|e| {
                typeformer::Error::InvalidConfig(format!(
                    "{}:{}: a line in double quotes must be one JSON string ({e})",
                    path.display(),
                    n + 1
                ))
            })?;
            prompts.push((n + 1, prompt));
        } else {
            prompts.push((n + 1, line.to_string()));
        }
    }
    if prompts.is_empty() {
        return Err(typeformer::Error::InvalidConfig(format!("{} has no prompts: write one per line", path.display())));
    }
    Ok(prompts)
}

/// `generate --prompts-file`: every prompt continued together; one JSON object per prompt.
fn generate_llama_batch<Dev: Device<f32>>(
    model: &SmolLm2_135M<f32, Dev>,
    tokenizer: &TextTokenizer,
    file: &Gguf,
    (list, listed): (&std::path::Path, Vec<(usize, String)>),
    dequantized: bool,
    cfg: &GenerateConfig,
    sampler: &mut Sampler,
) -> typeformer::Result<()> {
    let texts: Vec<&str> = listed.iter().map(|(_, t)| t.as_str()).collect();
    let prompts = texts.iter().map(|t| llama_prompt(tokenizer, file, t)).collect::<typeformer::Result<Vec<_>>>()?;
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(typeformer::Error::InvalidConfig(format!(
            "{}:{}: the prompt is empty after tokenizing: generation needs at least one token",
            list.display(),
            listed[i].0
        )));
    }
    let mut start = std::time::Instant::now();
    let out = maybe_quantized(model, file, dequantized, || {
        start = std::time::Instant::now(); // the clock starts once the weights are ready
        generate_batch::<SmolLm2_135M<f32, Dev>, 49_152, f32, Dev>(model, &prompts, cfg, sampler, |_, _| {})
    })??;
    let secs = start.elapsed().as_secs_f64();
    // Every completion decoded before any is printed: an error prints nothing.
    let mut lines = Vec::with_capacity(out.len());
    for (text, tokens) in texts.iter().zip(&out) {
        let shown: Vec<usize> = tokens.iter().copied().filter(|t| !cfg.stop_tokens.contains(t)).collect();
        lines.push(serde_json::json!({
            "prompt": text,
            "completion": tokenizer.decode(&shown)?,
            "tokens": tokens.len(),
            "stopped": tokens.last().is_some_and(|t| cfg.stop_tokens.contains(t)),
        }));
    }
    let mut stdout = std::io::stdout().lock();
    for line in lines {
        writeln!(stdout, "{line}").unwrap_or_else(|e| stdout_failed(e));
    }
    let new: usize = out.iter().map(Vec::len).sum();
    let lengths = prompts.iter().map(Vec::len);
    note!(
        "{} sequences, {new} new tokens in {secs:.2} s ({:.1} tokens/s, prompts of {}..{} tokens included)",
        prompts.len(),
        new as f64 / secs,
        lengths.clone().min().unwrap_or(0),
        lengths.max().unwrap_or(0)
    );
    Ok(())
}

/// Writes a piece of streamed text to stdout at once.
fn print_piece(stdout: &mut std::io::StdoutLock, piece: &str) -> std::ops::ControlFlow<()> {
    if let Err(e) = write!(stdout, "{piece}").and_then(|()| stdout.flush()) {
        stdout_failed(e);
    }
    std::ops::ControlFlow::Continue(())
}

fn chat(args: &ChatArgs) -> typeformer::Result<()> {
    on_device!(args.device, 0, chat_on(args))
}

fn chat_on<Dev: Device<f32>>(dev: &Dev, args: &ChatArgs) -> typeformer::Result<()> {
    let (model, tokenizer, file) = open_llama(dev, &args.model)?;
    let template = ChatTemplate::from_gguf(&file)?;
    let stop = turn_end_tokens(&file, &tokenizer);
    let mut sampler = sampler_of(args.temperature, args.top_k, args.top_p, args.seed)?;
    let mut conversation = Chat::new(&model, &tokenizer, &template, args.system.clone(), stop);
    let terminal = std::io::stdin().is_terminal();
    // Ctrl-C during a reply ends the reply (what was said stays in the conversation); at the
    // prompt it ends the program, as it would without this handler.
    let replying = Arc::new(AtomicBool::new(false));
    let interrupted = Arc::new(AtomicBool::new(false));
    let (during, flag) = (replying.clone(), interrupted.clone());
    ctrlc::set_handler(move || {
        if during.load(Ordering::SeqCst) {
            flag.store(true, Ordering::SeqCst);
        } else {
            std::process::exit(INTERRUPTED);
        }
    })
    .map_err(|e| typeformer::Error::Training(format!("cannot install the Ctrl-C handler: {e}")))?;
    if terminal {
        note!("{} loaded; /reset starts over, /exit ends.", args.model.display());
    }
    let talk = || -> typeformer::Result<()> {
        let mut lines = std::io::stdin().lines();
        loop {
            if terminal {
                let _ = write!(std::io::stderr(), "> ");
            }
            let Some(line) = lines.next() else { break };
            let line = line.map_err(|source| typeformer::Error::Io { path: "<stdin>".into(), source })?;
            match line.trim() {
                "" => continue,
                "/exit" => break,
                "/reset" => {
                    conversation.reset();
                    note!("(conversation reset)");
                    continue;
                }
                _ => {}
            }
            let start = std::time::Instant::now();
            let mut stdout = std::io::stdout().lock();
            interrupted.store(false, Ordering::SeqCst);
            replying.store(true, Ordering::SeqCst);
            let reply = conversation.reply(&line, args.max_new_tokens, &mut sampler, |piece| {
                let _ = print_piece(&mut stdout, piece);
                if interrupted.load(Ordering::SeqCst) {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                }
            });
            replying.store(false, Ordering::SeqCst);
            match reply {
                Ok(_) => {
                    writeln!(stdout).unwrap_or_else(|e| stdout_failed(e));
                    if terminal {
                        note!(
                            "({:.1} s, {} of {} positions used)",
                            start.elapsed().as_secs_f64(),
                            conversation.positions_used(),
                            <SmolLm2_135M<f32, Dev> as LanguageModel<49_152, f32, Dev>>::CONTEXT
                        );
                    }
                }
                // A full context ends the turn, not the conversation: the user may /reset.
                Err(e @ typeformer::Error::ContextFull { .. }) => {
                    note!("{e}");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    maybe_quantized(&model, &file, args.dequantized, talk)?
}
