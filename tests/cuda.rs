//! The same computations on the GPU and the CPU, from the same weights, must agree (1e-4):
//! multi-head attention under a causal and a padding mask (outputs and gradients), a whole
//! encoder-decoder's forward and backward pass (logits, loss and every parameter's gradient), two
//! training steps through the crate's training loop (losses, gradient norms, every weight after
//! Adam), and KV-cached generation (the logits of every cached step, and the greedy tokens).
//!
//! Compiled only with the `cuda` feature (type-checked in CI with `cuda-check`, which needs no
//! CUDA installation). Which GPU: `TYPEFORMER_TEST_CUDA=1` requires one (a test fails when no GPU
//! can be opened; `scripts/gpu-check.sh` sets it), `TYPEFORMER_TEST_CUDA=0` skips these tests, and
//! unset, each test runs when a GPU can be opened and otherwise skips, saying so.

#![cfg(feature = "cuda")]

use dfdx::nn::tensor_collection::{
    RecursiveWalker, ScalarOptions, TensorCollection, TensorOptions, TensorVisitor, ViewTensorName, ViewTensorRef,
};
use typeformer::data::{Task, TaskData, TaskSpec, BYTE_VOCAB};
use typeformer::device::to_device;
use typeformer::generate::{generate, GenerateConfig, Sampler, SamplingConfig};
use typeformer::io::{load_checkpoint, save_checkpoint};
use typeformer::prelude::*;
use typeformer::train::{label_smoothed_cross_entropy, train_seq2seq, AdamConfig, TrainConfig};

/// How far GPU and CPU may differ: `|gpu - cpu| / (1 + |cpu|)`.
const TOLERANCE: f64 = 1e-4;

/// The GPU to test on, or `None` (after saying why) when the test should skip.
fn gpu() -> Option<Cuda> {
    let required = match std::env::var("TYPEFORMER_TEST_CUDA").as_deref() {
        Ok("1") => true,
        Ok("0") => {
            eprintln!("TYPEFORMER_TEST_CUDA=0: skipping the GPU test");
            return None;
        }
        _ => false,
    };
    match typeformer::device::open_cuda(0, 0) {
        Ok(dev) => Some(dev),
        Err(e) if required => panic!("TYPEFORMER_TEST_CUDA=1, but no GPU can be opened: {e}"),
        Err(e) => {
            eprintln!("skipping: {e} (TYPEFORMER_TEST_CUDA=1 makes this an error)");
            None
        }
    }
}

/// Asserts that `gpu` and `cpu` have the same length and agree to [`TOLERANCE`].
fn assert_close<A: ToF64, B: ToF64>(gpu: &[A], cpu: &[B], what: &str) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: GPU and CPU have different lengths");
    let (mut worst, mut at) = (0.0f64, 0);
    for (i, (a, b)) in gpu.iter().zip(cpu).enumerate() {
        let (a, b) = (a.to_f64(), b.to_f64());
        let d = (a - b).abs() / (1.0 + b.abs());
        if d > worst || d.is_nan() {
            (worst, at) = (if d.is_nan() { f64::INFINITY } else { d }, i);
        }
    }
    assert!(
        worst < TOLERANCE,
        "{what}: GPU and CPU differ by {worst:e} at element {at} (GPU {}, CPU {})",
        gpu[at].to_f64(),
        cpu[at].to_f64()
    );
}

/// Tensors by dotted name, flattened (from [`named`]).
type NamedValues = Vec<(String, Vec<f64>)>;

/// Asserts that two lists of named vectors (from [`named`]) have the same names and agree.
fn assert_all_close(gpu: &NamedValues, cpu: &NamedValues, what: &str) {
    let names = |v: &NamedValues| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(gpu), names(cpu), "{what}: the GPU and CPU models name different tensors");
    assert!(!cpu.is_empty(), "{what}: no tensors");
    for ((name, g), (_, c)) in gpu.iter().zip(cpu) {
        assert_close(g, c, &format!("{what} {name}"));
    }
}

/// Numbers that compare as `f64`.
trait ToF64: Copy {
    fn to_f64(self) -> f64;
}
impl ToF64 for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
}
impl ToF64 for f64 {
    fn to_f64(self) -> f64 {
        self
    }
}

/// Visits a model's trainable tensors, collecting each one's value (or its gradient in `grads`)
/// under its dotted name.
struct Named<'a, E: Dtype, Dev: Storage<E>> {
    grads: Option<&'a Gradients<E, Dev>>,
    out: NamedValues,
}

impl<E: FloatDtype, Dev: Device<E>> TensorVisitor<E, Dev> for Named<'_, E, Dev> {
    type Viewer = (ViewTensorRef, ViewTensorName);
    type Err = Dev::Err;
    type E2 = E;
    type D2 = Dev;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, E, Dev>,
        (t, name): (&Tensor<S, E, Dev>, String),
    ) -> Result<Option<Tensor<S, E, Dev>>, Self::Err> {
        if opts.do_gradient_update {
            let values = match self.grads {
                Some(grads) => grads.get(t).as_vec(),
                None => t.as_vec(),
            };
            self.out.push((name, values.into_iter().map(|v| v.to_f64().unwrap_or(f64::NAN)).collect()));
        }
        Ok(None)
    }

    fn visit_scalar<N: num_traits::NumCast>(
        &mut self,
        _: ScalarOptions<N>,
        _: (&N, String),
    ) -> Result<Option<N>, Self::Err> {
        Ok(None)
    }
}

/// Every trainable tensor of `model` by name: its values, or with `grads` its gradients.
fn named<M: TensorCollection<E, Dev>, E: FloatDtype, Dev: Device<E>>(
    model: &M,
    grads: Option<&Gradients<E, Dev>>,
) -> NamedValues {
    let mut v = Named { grads, out: Vec::new() };
    M::iter_tensors(&mut RecursiveWalker { m: (model, String::new()), f: &mut v }).expect("visiting the tensors");
    v.out
}

/// A batch of the built-in task vocabulary: sources, decoder inputs and labels, with padding.
fn batch() -> (Tokens<TASK_VOCAB>, Tokens<TASK_VOCAB>, Tokens<TASK_VOCAB>) {
    let src = Tokens::from_sequences(&[vec![3, 4, 5, 6, 7], vec![8, 9], vec![10, 11, 12]]).unwrap();
    let tgt = Tokens::from_sequences(&[vec![1, 7, 6, 5, 4, 3], vec![1, 9, 8], vec![1, 12, 11, 10]]).unwrap();
    let labels = Tokens::from_sequences(&[vec![7, 6, 5, 4, 3, 2], vec![9, 8, 2], vec![12, 11, 10, 2]]).unwrap();
    (src, tgt, labels)
}

type Attention<Dev> = MultiHeadAttention<32, 4, 8, f32, Dev>;

/// Masked self-attention and cross-attention of one block: the outputs, and the gradients of the
/// block's weights for a loss over both.
fn attention_results<Dev: Device<f32>>(
    mha: &Attention<Dev>,
    x: &Tensor<(usize, usize, Const<32>), f32, Dev>,
    memory: &Tensor<(usize, usize, Const<32>), f32, Dev>,
) -> (Vec<f32>, Vec<f32>, NamedValues) {
    let lengths = [7, 4];
    let memory_lengths = [5, 3];
    let causal = MaskSpec::causal(Some(&lengths));
    let padding = MaskSpec::padding(&memory_lengths);
    let own = mha.self_attention(x.clone(), &causal).unwrap().as_vec();
    let cross = mha.cross_attention(x.clone(), memory, &padding).unwrap().as_vec();

    let grads = mha.alloc_grads();
    let y = mha.self_attention(x.clone().traced(grads), &causal).unwrap();
    let z = mha.cross_attention(y, memory, &padding).unwrap();
    let grads = z.square().mean().backward();
    (own, cross, named(mha, Some(&grads)))
}

#[test]
fn attention_matches_the_cpu() {
    let Some(cuda) = gpu() else { return };
    let cpu = Cpu::seed_from_u64(1);
    let mut mha = cpu.build_module::<Attention<Cpu>, f32>();
    typeformer::nn::set_dropout(&mut mha, 0.0).unwrap();
    let x: Tensor<(usize, usize, Const<32>), f32, Cpu> = cpu.sample_normal_like(&(2, 7, Const));
    let memory: Tensor<(usize, usize, Const<32>), f32, Cpu> = cpu.sample_normal_like(&(2, 5, Const));

    let (own_cpu, cross_cpu, grads_cpu) = attention_results(&mha, &x, &memory);
    let (own_gpu, cross_gpu, grads_gpu) =
        attention_results(&to_device(&mha, &cuda).unwrap(), &x.to_device(&cuda), &memory.to_device(&cuda));
    assert_close(&own_gpu, &own_cpu, "causal self-attention with padding");
    assert_close(&cross_gpu, &cross_cpu, "cross-attention with padding");
    assert_all_close(&grads_gpu, &grads_cpu, "attention gradient of");
}

/// Logits, loss and every gradient of one forward and backward pass of a task model.
fn forward_backward<Dev: Device<f32>>(model: &TaskSmall<f32, Dev>) -> (Vec<f32>, f32, NamedValues) {
    let (src, tgt, labels) = batch();
    let logits = model.forward(&src, &tgt).unwrap().as_vec();
    let loss =
        label_smoothed_cross_entropy(model.forward_traced(&src, &tgt, model.alloc_grads()).unwrap(), &labels, 0.1)
            .unwrap();
    let loss_value = loss.as_vec()[0];
    let grads = loss.backward();
    (logits, loss_value, named(model, Some(&grads)))
}

#[test]
fn an_encoder_decoder_forward_and_backward_match_the_cpu() {
    let Some(cuda) = gpu() else { return };
    let cpu = Cpu::seed_from_u64(2);
    let mut model = cpu.build_module::<TaskSmall<f32, Cpu>, f32>();
    typeformer::nn::set_dropout(&mut model, 0.0).unwrap();
    let (logits_cpu, loss_cpu, grads_cpu) = forward_backward(&model);
    let (logits_gpu, loss_gpu, grads_gpu) = forward_backward(&to_device(&model, &cuda).unwrap());
    assert_close(&logits_gpu, &logits_cpu, "logits");
    assert_close(&[loss_gpu], &[loss_cpu], "loss");
    assert_all_close(&grads_gpu, &grads_cpu, "gradient of");
}

/// Two steps of [`train_seq2seq`] (dropout on, its masks drawn from a seeded host RNG, so both
/// devices drop the same units): each step's loss and gradient norm, then every weight.
fn train_two_steps<Dev: Device<f64>>(model: &mut TaskSmall<f64, Dev>) -> (Vec<f64>, NamedValues) {
    let spec = TaskSpec { task: Task::Reverse, symbols: 8, min_len: 2, max_len: 8 };
    let mut data = TaskData::new(spec, 10, 5).unwrap();
    let cfg = TrainConfig {
        steps: 2,
        batch_size: 8,
        label_smoothing: 0.1,
        warmup: 1,
        lr_factor: 0.01, // a learning rate of 1.25e-3 at both steps
        cooldown: 0.0,
        adam: AdamConfig::default(),
    };
    typeformer::nn::seed_dropout(11);
    let logs = train_seq2seq::<_, TASK_VOCAB, TASK_VOCAB, f64, Dev>(model, &mut data, &cfg, |_| {}).unwrap();
    let stats = logs.iter().flat_map(|l| [l.loss, l.grad_norm, l.lr]).collect();
    (stats, named(model, None))
}

/// In f64: Adam's first steps move every weight by about ±lr whatever the size of its gradient,
/// so in f32 a weight whose gradient is rounding noise (a key projection's bias: softmax ignores
/// it) would move by a sign that differs between devices. In f64 that noise is far below Adam's ε.
#[test]
fn training_steps_match_the_cpu() {
    let Some(cuda) = gpu() else { return };
    let cpu = Cpu::seed_from_u64(3);
    let mut model = cpu.build_module::<TaskSmall<f64, Cpu>, f64>();
    let mut model_gpu = to_device(&model, &cuda).unwrap();
    let before = named(&model, None);
    let (stats_cpu, weights_cpu) = train_two_steps(&mut model);
    let (stats_gpu, weights_gpu) = train_two_steps(&mut model_gpu);
    assert_close(&stats_gpu, &stats_cpu, "loss, gradient norm and learning rate of each step");
    assert_all_close(&weights_gpu, &weights_cpu, "weight after two Adam steps:");
    let moved =
        weights_cpu.iter().zip(&before).any(|((_, w), (_, w0))| w.iter().zip(w0).any(|(a, b)| (a - b).abs() > 1e-4));
    assert!(moved, "training moved no weight: the comparison would prove nothing");
}

/// The logits of every KV-cached step along `tokens` (the prompt's `prompt_len` tokens at once,
/// then one token at a time).
fn cached_logits<Dev: Device<f32>>(model: &LmSmall<f32, Dev>, tokens: &[usize], prompt_len: usize) -> Vec<f32> {
    let mut state = model.start();
    let mut out =
        model.step(&mut state, &Tokens::from_sequences(&[tokens[..prompt_len].to_vec()]).unwrap()).unwrap().as_vec();
    for &t in &tokens[prompt_len..] {
        out.extend(model.step(&mut state, &Tokens::from_sequences(&[vec![t]]).unwrap()).unwrap().as_vec());
    }
    out
}

#[test]
fn cached_generation_matches_the_cpu() {
    let Some(cuda) = gpu() else { return };
    let cpu = Cpu::seed_from_u64(4);
    let model = cpu.build_module::<LmSmall<f32, Cpu>, f32>();
    // Copy the weights through a checkpoint, as a user moving a trained model to the GPU would.
    let path = std::env::temp_dir().join(format!("typeformer-cuda-test-{}.safetensors", std::process::id()));
    save_checkpoint(&model, &path, Default::default()).unwrap();
    let mut model_gpu = cuda.build_module::<LmSmall<f32, Cuda>, f32>();
    load_checkpoint(&mut model_gpu, &path).unwrap();
    std::fs::remove_file(&path).ok();

    let prompt: Vec<usize> = b"Hello".iter().map(|&b| b as usize).collect();
    let cfg = GenerateConfig { max_new_tokens: 24, stop_tokens: vec![] };
    let greedy = || Sampler::new(SamplingConfig::greedy()).unwrap();
    let on_cpu = generate::<_, BYTE_VOCAB, f32, Cpu>(&model, &prompt, &cfg, &mut greedy(), |_| {}).unwrap();
    let on_gpu = generate::<_, BYTE_VOCAB, f32, Cuda>(&model_gpu, &prompt, &cfg, &mut greedy(), |_| {}).unwrap();

    // The logits first: a real difference shows up there before it can flip a token.
    let mut sequence = prompt.clone();
    sequence.extend(&on_cpu);
    assert_close(
        &cached_logits(&model_gpu, &sequence, prompt.len()),
        &cached_logits(&model, &sequence, prompt.len()),
        "KV-cached logits",
    );
    assert_eq!(on_gpu, on_cpu, "greedy generation with the KV cache");
}
