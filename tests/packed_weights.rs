//! `PackedWeights`: inside `run`, the model computes what it computes without it, from packed
//! copies of its weights that are made only there, only for products split into column blocks.

use proptest::prelude::*;
use typeformer::prelude::*;

/// Widths that leave a partial 64-column block (96 = 64 + 32, 200 = 3 * 64 + 8).
type Enc = Encoder<96, 4, 24, 200, 2, PostNorm, Relu, f32, Cpu>;
/// A tied output head: the logits read the `(V, D)` embedding table transposed.
type Lm = DecoderOnly<300, 96, 4, 24, 200, 2, 160, PreNorm, GeluTanh, Learned, TiedOutput, f64, Cpu>;

/// Products are split into column blocks only with at least two threads.
fn on_two_threads<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a rayon pool").install(f)
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(1f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn a_packed_encoder_computes_what_the_encoder_computes(seed in any::<u64>(), b in 1usize..3, s in 60usize..130, pad in any::<bool>()) {
        on_two_threads(|| {
            let dev = Cpu::seed_from_u64(seed);
            let encoder = dev.build_module::<Enc, f32>();
            let x: Tensor<(usize, usize, Const<96>), f32, Cpu> = dev.sample_normal_like(&(b, s, Const));
            let lens: Vec<usize> = (0..b).map(|i| s - (seed as usize + i) % s).collect();
            let mask = MaskSpec { causal: false, query_offset: 0, key_lengths: pad.then_some(lens.as_slice()), key_starts: None };
            let plain = encoder.forward(x.clone(), &mask).unwrap().as_vec();
            let packed = PackedWeights::of(&encoder);
            let fast = packed.run(|| encoder.forward(x, &mask)).unwrap().as_vec();
            prop_assert!(packed.copies() > 0, "the products took the packed path");
            prop_assert!(max_rel_diff(&plain, &fast) < 1e-5);
            Ok(())
        })?;
    }

    #[test]
    fn a_packed_language_model_with_a_tied_head_computes_the_same_logits(seed in any::<u64>(), s in 120usize..160) {
        on_two_threads(|| {
            let dev = Cpu::seed_from_u64(seed);
            let model = dev.build_module::<Lm, f64>();
            let seq: Vec<usize> = (0..s).map(|p| (p * 31 + seed as usize) % 300).collect();
            let tokens = Tokens::<300>::from_sequences(&[seq]).unwrap();
            let plain = model.forward(&tokens).unwrap().as_vec();
            let packed = PackedWeights::of(&model);
            let fast = packed.run(|| model.forward(&tokens)).unwrap().as_vec();
            // Q, K, V, output and both feed-forward weights of 2 layers, and the transposed table.
            prop_assert_eq!(packed.copies(), 2 * 6 + 1);
            let diff = plain.iter().zip(&fast).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
            prop_assert!(diff < 1e-12, "max difference {}", diff);
            Ok(())
        })?;
    }
}

#[test]
fn copies_are_made_only_inside_run_and_only_for_split_products() {
    on_two_threads(|| {
        let dev = Cpu::seed_from_u64(1);
        let encoder = dev.build_module::<Enc, f32>();
        let packed = PackedWeights::of(&encoder);
        assert!(packed.tensors() >= 2 * 6, "every weight is listed: {packed:?}");
        let long: Tensor<(usize, usize, Const<96>), f32, Cpu> = dev.sample_normal_like(&(1, 128, Const));
        encoder.forward(long.clone(), &MaskSpec::none()).unwrap();
        assert_eq!(packed.copies(), 0, "outside `run` the weights are read in place");
        let one: Tensor<(usize, usize, Const<96>), f32, Cpu> = dev.sample_normal_like(&(1, 1, Const));
        packed.run(|| encoder.forward(one, &MaskSpec::none())).unwrap();
        assert_eq!(packed.copies(), 0, "a one-token product runs in one piece, on the weights in place");
        packed.run(|| encoder.forward(long.clone(), &MaskSpec::none())).unwrap();
        let copies = packed.copies();
        assert!(copies > 0);
        packed.run(|| encoder.forward(long.clone(), &MaskSpec::none())).unwrap();
        assert_eq!(packed.copies(), copies, "each weight is copied once");

        let elsewhere = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let fresh = PackedWeights::of(&encoder);
        fresh.run(|| elsewhere.install(|| encoder.forward(long, &MaskSpec::none()))).unwrap();
        assert_eq!(fresh.copies(), 0, "`install`'s closure runs on another thread, outside `run`");
    });
}

#[test]
fn tasks_of_several_blocks_compute_the_same() {
    on_two_threads(|| {
        // 64 rows: the feed-forward's 4 blocks of 200 columns have work for 2 tasks of 2 blocks.
        let dev = Cpu::seed_from_u64(3);
        let encoder = dev.build_module::<Enc, f32>();
        let x: Tensor<(usize, usize, Const<96>), f32, Cpu> = dev.sample_normal_like(&(1, 64, Const));
        let plain = encoder.forward(x.clone(), &MaskSpec::none()).unwrap().as_vec();
        let packed = PackedWeights::of(&encoder);
        let fast = packed.run(|| encoder.forward(x, &MaskSpec::none())).unwrap().as_vec();
        assert!(packed.copies() > 0);
        assert!(max_rel_diff(&plain, &fast) < 1e-5);
    });
}

#[test]
fn gradients_inside_run_are_the_gradients_outside() {
    on_two_threads(|| {
        let dev = Cpu::seed_from_u64(2);
        let encoder = dev.build_module::<Enc, f32>();
        let x: Tensor<(usize, usize, Const<96>), f32, Cpu> = dev.sample_normal_like(&(1, 128, Const));
        let grads_of = |y: Tensor<(usize, usize, Const<96>), f32, Cpu, OwnedTape<f32, Cpu>>| {
            let g = y.sum().backward();
            let w = &encoder.layers.modules[0].self_attn.w_q.weight;
            g.get(w).as_vec()
        };
        let plain = grads_of(encoder.forward(x.clone().traced(encoder.alloc_grads()), &MaskSpec::none()).unwrap());
        let packed = PackedWeights::of(&encoder);
        packed.run(|| encoder.forward(x.clone(), &MaskSpec::none())).unwrap();
        let forward_copies = packed.copies();
        let fast =
            packed.run(|| grads_of(encoder.forward(x.traced(encoder.alloc_grads()), &MaskSpec::none()).unwrap()));
        assert!(packed.copies() > forward_copies, "the backward pass read the weights transposed, from copies");
        assert!(max_rel_diff(&plain, &fast) < 1e-5);
    });
}
