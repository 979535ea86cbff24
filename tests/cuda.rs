//! The same computations on the GPU and the CPU, from the same weights, must agree (1e-4).
//!
//! Compiled only with the `cuda` feature (and type-checked in CI with `cuda-check`, which needs
//! no CUDA installation); each test skips, saying so, when no GPU can be opened.

#![cfg(feature = "cuda")]

use dfdx::nn::ToDevice;
use typeformer::generate::{generate, GenerateConfig, Sampler, SamplingConfig};
use typeformer::prelude::*;
use typeformer::train::{label_smoothed_cross_entropy, Adam, AdamConfig};

fn gpu() -> Option<Cuda> {
    match Cuda::try_seed_from_u64(0) {
        Ok(dev) => Some(dev),
        Err(e) => {
            eprintln!("no GPU ({e:?}): skipping");
            None
        }
    }
}

fn assert_close(gpu: &[f32], cpu: &[f32], what: &str) {
    assert_eq!(gpu.len(), cpu.len(), "{what}");
    let worst = gpu.iter().zip(cpu).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "{what}: GPU and CPU differ by {worst}");
}

fn batch() -> (Tokens<TASK_VOCAB>, Tokens<TASK_VOCAB>, Tokens<TASK_VOCAB>) {
    let src = Tokens::from_sequences(&[vec![3, 4, 5, 6, 7], vec![8, 9]]).unwrap();
    let tgt = Tokens::from_sequences(&[vec![1, 7, 6, 5, 4, 3], vec![1, 9, 8]]).unwrap();
    let labels = Tokens::from_sequences(&[vec![7, 6, 5, 4, 3, 2], vec![9, 8, 2]]).unwrap();
    (src, tgt, labels)
}

#[test]
fn attention_matches_the_cpu() {
    let Some(cuda) = gpu() else { return };
    let cpu = Cpu::seed_from_u64(1);
    let mha = cpu.build_module::<MultiHeadAttention<32, 4, 8, f32, Cpu>, f32>();
    let x: Tensor<(usize, usize, Const<32>), f32, Cpu> = cpu.sample_normal_like(&(2, 7, Const));
    let lengths = [7, 4];
    let mask = MaskSpec::causal(Some(&lengths));
    let on_cpu = mha.self_attention(x.clone(), &mask).unwrap().as_vec();
    let on_gpu = mha.to_device(&cuda).self_attention(x.to_device(&cuda), &mask).unwrap().as_vec();
    assert_close(&on_gpu, &on_cpu, "masked self-attention");
}

#[test]
fn an_encoder_decoder_forward_backward_and_training_step_match_the_cpu() {
    let Some(cuda) = gpu() else { return };
    let cpu = Cpu::seed_from_u64(2);
    let mut model = cpu.build_module::<TaskSmall<f32, Cpu>, f32>();
    typeformer::nn::set_dropout(&mut model, 0.0).unwrap();
    let mut model_gpu = model.to_device(&cuda);
    let (src, tgt, labels) = batch();
    assert_close(
        &model_gpu.forward(&src, &tgt).unwrap().as_vec(),
        &model.forward(&src, &tgt).unwrap().as_vec(),
        "logits",
    );

    let step = |m: &mut TaskSmall<f32, Cpu>| {
        let mut opt = Adam::new(AdamConfig::default()).unwrap();
        let loss =
            label_smoothed_cross_entropy(m.forward_traced(&src, &tgt, m.alloc_grads()).unwrap(), &labels, 0.1).unwrap();
        let grads = loss.backward();
        let g = grads.get(&m.encoder.layers[0].self_attn.w_q.weight).as_vec();
        opt.update(m, &grads, 1e-3).unwrap();
        g
    };
    let mut opt = Adam::<f32, Cuda>::new(AdamConfig::default()).unwrap();
    let loss = label_smoothed_cross_entropy(
        model_gpu.forward_traced(&src, &tgt, model_gpu.alloc_grads()).unwrap(),
        &labels,
        0.1,
    )
    .unwrap();
    let grads = loss.backward();
    let g_gpu = grads.get(&model_gpu.encoder.layers[0].self_attn.w_q.weight).as_vec();
    opt.update(&mut model_gpu, &grads, 1e-3).unwrap();
    let g_cpu = step(&mut model);
    assert_close(&g_gpu, &g_cpu, "gradient of encoder.layers.0.self_attn.w_q.weight");
    assert_close(&model_gpu.src_embed.weight.as_vec(), &model.src_embed.weight.as_vec(), "weights after one Adam step");
}

#[test]
fn cached_generation_matches_the_cpu() {
    let Some(cuda) = gpu() else { return };
    let cpu = Cpu::seed_from_u64(3);
    let model = cpu.build_module::<LmSmall<f32, Cpu>, f32>();
    let model_gpu = model.to_device(&cuda);
    let cfg = GenerateConfig { max_new_tokens: 20, stop_tokens: vec![] };
    let run = |out: &mut Vec<usize>, on_gpu: bool| {
        let mut sampler = Sampler::new(SamplingConfig::greedy()).unwrap();
        let prompt: Vec<usize> = b"Hello".iter().map(|&b| b as usize).collect();
        *out = if on_gpu {
            generate::<_, 256, f32, Cuda>(&model_gpu, &prompt, &cfg, &mut sampler, |_| {}).unwrap()
        } else {
            generate::<_, 256, f32, Cpu>(&model, &prompt, &cfg, &mut sampler, |_| {}).unwrap()
        };
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    run(&mut a, true);
    run(&mut b, false);
    assert_eq!(a, b, "greedy generation with the KV cache");
}
