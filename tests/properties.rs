//! The mathematics of the building blocks, stated as properties over random sizes and inputs.

use proptest::prelude::*;
use typeformer::prelude::*;

const D: usize = 8;
const H: usize = 2;
const HD: usize = 4;

/// 24 cases per property in the suite; `PROPTEST_CASES=N` runs a deeper search.
fn cases() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(24);
    ProptestConfig { cases, ..ProptestConfig::default() }
}

fn normal(dev: &Cpu, shape: (usize, usize, usize)) -> Tensor<(usize, usize, Const<D>), f64, Cpu> {
    dev.sample_normal_like(&(shape.0, shape.1, Const::<D>))
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// `lengths[b]` valid keys per batch item, each at least 1.
fn lengths(batch: usize, max: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1..=max, batch)
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn attention_rows_sum_to_one(seed in any::<u64>(), b in 1usize..4, sq in 1usize..7, sk in 1usize..7, causal in any::<bool>(), pad in any::<bool>()) {
        let dev = Cpu::seed_from_u64(seed);
        let q: Tensor<(usize, Const<H>, usize, Const<HD>), f64, _> = dev.sample_normal_like(&(b, Const, sq, Const));
        let k: Tensor<(usize, Const<H>, usize, Const<HD>), f64, _> = dev.sample_normal_like(&(b, Const, sk, Const));
        let lens: Vec<usize> = (0..b).map(|i| 1 + (seed as usize + i) % sk).collect();
        let spec = MaskSpec { causal, query_offset: 0, key_lengths: pad.then_some(lens.as_slice()), key_starts: None };
        let bias = spec.bias::<usize, usize, usize, f64, Cpu>(&dev, (b, sq, sk));
        let w = attention_weights(q, k, bias.as_ref()).as_vec();
        for row in w.chunks(sk) {
            prop_assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            prop_assert!(row.iter().all(|x| x.is_finite() && *x >= 0.0));
        }
    }

    #[test]
    fn a_fully_padded_row_is_finite(seed in any::<u64>(), sq in 1usize..5, sk in 1usize..5) {
        let dev = Cpu::seed_from_u64(seed);
        let mha = dev.build_module::<MultiHeadAttention<D, H, HD, f64, Cpu>, f64>();
        let x = normal(&dev, (1, sq, 0));
        let memory = normal(&dev, (1, sk, 0));
        let y = mha.cross_attention(x, &memory, &MaskSpec::padding(&[0])).unwrap();
        prop_assert!(y.as_vec().iter().all(|v| v.is_finite()));
    }

    #[test]
    fn causal_outputs_ignore_later_tokens(seed in any::<u64>(), s in 2usize..8, cut in 0usize..7) {
        let cut = cut % (s - 1); // positions 0..=cut stay, later ones change
        let dev = Cpu::seed_from_u64(seed);
        let mha = dev.build_module::<MultiHeadAttention<D, H, HD, f64, Cpu>, f64>();
        let x = normal(&dev, (2, s, 0));
        let mut changed = x.as_vec();
        for item in 0..2 {
            for v in &mut changed[(item * s + cut + 1) * D..(item + 1) * s * D] {
                *v += 3.0;
            }
        }
        let changed = dev.tensor_from_vec(changed, (2, s, Const::<D>));
        let a = mha.self_attention(x, &MaskSpec::causal(None)).unwrap().as_vec();
        let b = mha.self_attention(changed, &MaskSpec::causal(None)).unwrap().as_vec();
        for item in 0..2 {
            let keep = (item * s) * D..(item * s + cut + 1) * D;
            prop_assert!(max_abs_diff(&a[keep.clone()], &b[keep]) < 1e-12);
        }
    }

    #[test]
    fn causal_decoder_logits_ignore_later_target_tokens(seed in any::<u64>(), s in 2usize..7, cut in 0usize..6) {
        let cut = cut % (s - 1);
        let dev = Cpu::seed_from_u64(seed);
        let model = dev.build_module::<TaskSmall<f64, Cpu>, f64>();
        let src = Tokens::<TASK_VOCAB>::from_sequences(&[vec![3, 4, 5], vec![6, 7]]).unwrap();
        let tgt: Vec<Vec<usize>> = (0..2).map(|i| (0..s).map(|p| 3 + (i + p) % 10).collect()).collect();
        let mut later = tgt.clone();
        for seq in &mut later {
            for t in &mut seq[cut + 1..] {
                *t = 3 + (*t + 5) % 10;
            }
        }
        let a = model.forward(&src, &Tokens::from_sequences(&tgt).unwrap()).unwrap().as_vec();
        let b = model.forward(&src, &Tokens::from_sequences(&later).unwrap()).unwrap().as_vec();
        for item in 0..2 {
            let keep = (item * s) * TASK_VOCAB..(item * s + cut + 1) * TASK_VOCAB;
            prop_assert!(max_abs_diff(&a[keep.clone()], &b[keep]) < 1e-10);
        }
    }

    #[test]
    fn recorded_attention_maps_are_distributions_that_respect_the_masks(
        seed in any::<u64>(), src_lens in lengths(2, 6), tgt_lens in lengths(2, 5),
    ) {
        let dev = Cpu::seed_from_u64(seed);
        let model = dev.build_module::<TaskSmall<f64, Cpu>, f64>();
        let seqs = |lens: &[usize]| -> Vec<Vec<usize>> {
            lens.iter().enumerate().map(|(i, &n)| (0..n).map(|p| 3 + (i + 2 * p) % 10).collect()).collect()
        };
        let src = Tokens::<TASK_VOCAB>::from_sequences(&seqs(&src_lens)).unwrap();
        let tgt = Tokens::<TASK_VOCAB>::from_sequences(&seqs(&tgt_lens)).unwrap();
        let maps = model.attention(&src, &tgt).unwrap();
        prop_assert_eq!(maps.encoder.len(), TaskSmallSpec::ENCODER_LAYERS);
        prop_assert_eq!(maps.decoder.len(), TaskSmallSpec::DECODER_LAYERS);
        // Rows are distributions; a key past its sequence's length, or after the query in the
        // decoder's self-attention, gets no weight.
        let check = |w: &AttentionWeights, key_lens: &[usize], causal: bool| -> Result<(), TestCaseError> {
            for (item, &len) in key_lens.iter().enumerate() {
                for head in 0..w.heads() {
                    for (q, row) in w.map(item, head).unwrap().iter().enumerate() {
                        prop_assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
                        for (k, &x) in row.iter().enumerate() {
                            if k >= len || (causal && k > q) {
                                prop_assert_eq!(x, 0.0);
                            }
                        }
                    }
                }
            }
            Ok(())
        };
        for layer in &maps.encoder {
            prop_assert!(layer.cross_attn.is_none());
            check(&layer.self_attn, &src_lens, false)?;
        }
        for layer in &maps.decoder {
            check(&layer.self_attn, &tgt_lens, true)?;
            check(layer.cross_attn.as_ref().unwrap(), &src_lens, false)?;
            prop_assert_eq!(layer.cross_attn.as_ref().unwrap().shape, [2, TaskSmallSpec::HEADS, tgt.seq_len(), src.seq_len()]);
        }
    }

    #[test]
    fn recording_attention_leaves_a_layer_output_unchanged(seed in any::<u64>(), s in 1usize..6) {
        let dev = Cpu::seed_from_u64(seed);
        let layer = dev.build_module::<EncoderLayer<D, H, HD, 16, PreNorm, Gelu, f64, Cpu>, f64>();
        let x = normal(&dev, (2, s, 0));
        let mask = MaskSpec::causal(None);
        let mut record = Vec::new();
        let recorded = layer.forward_recording(x.clone(), &mask, Some(&mut record)).unwrap().as_vec();
        prop_assert_eq!(recorded, layer.forward(x, &mask).unwrap().as_vec());
        prop_assert_eq!(record.len(), 1);
        prop_assert_eq!(record[0].self_attn.shape, [2, H, s, s]);
    }

    #[test]
    fn padded_keys_change_nothing(seed in any::<u64>(), b in 1usize..4, s in 2usize..7, lens in lengths(3, 6)) {
        let lens: Vec<usize> = lens.into_iter().take(b).map(|l| l.min(s)).collect();
        let dev = Cpu::seed_from_u64(seed);
        let encoder = dev.build_module::<Encoder<D, H, HD, 16, 2, PreNorm, Gelu, f64, Cpu>, f64>();
        let x = normal(&dev, (b, s, 0));
        let mut noisy = x.as_vec();
        for (item, &len) in lens.iter().enumerate() {
            for v in &mut noisy[(item * s + len) * D..(item + 1) * s * D] {
                *v = 100.0;
            }
        }
        let noisy = dev.tensor_from_vec(noisy, (b, s, Const::<D>));
        let a = encoder.forward(x.clone(), &MaskSpec::padding(&lens)).unwrap().as_vec();
        let c = encoder.forward(noisy, &MaskSpec::padding(&lens)).unwrap().as_vec();
        let xs = x.as_vec();
        for (item, &len) in lens.iter().enumerate() {
            let valid = item * s * D..(item * s + len) * D;
            prop_assert!(max_abs_diff(&a[valid.clone()], &c[valid.clone()]) < 1e-10);
            // The same as running the unpadded sequence alone.
            let alone = dev.tensor_from_vec(xs[valid.clone()].to_vec(), (1, len, Const::<D>));
            let alone = encoder.forward(alone, &MaskSpec::none()).unwrap().as_vec();
            prop_assert!(max_abs_diff(&a[valid], &alone) < 1e-10);
        }
    }

    #[test]
    fn encoder_without_positions_is_permutation_equivariant(seed in any::<u64>(), s in 1usize..7, shift in 0usize..7) {
        let dev = Cpu::seed_from_u64(seed);
        let encoder = dev.build_module::<Encoder<D, H, HD, 16, 2, PostNorm, Relu, f64, Cpu>, f64>();
        let x = normal(&dev, (1, s, 0)).as_vec();
        // A rotation followed by a reversal: every permutation is a product of such moves.
        let perm: Vec<usize> = (0..s).map(|i| (s - 1 - i + shift) % s).collect();
        let permuted: Vec<f64> = perm.iter().flat_map(|&p| x[p * D..(p + 1) * D].to_vec()).collect();
        let y = encoder.forward(dev.tensor_from_vec(x, (1, s, Const::<D>)), &MaskSpec::none()).unwrap().as_vec();
        let yp = encoder.forward(dev.tensor_from_vec(permuted, (1, s, Const::<D>)), &MaskSpec::none()).unwrap().as_vec();
        for (i, &p) in perm.iter().enumerate() {
            prop_assert!(max_abs_diff(&yp[i * D..(i + 1) * D], &y[p * D..(p + 1) * D]) < 1e-10);
        }
    }

    #[test]
    fn layer_norm_has_mean_zero_and_variance_one(seed in any::<u64>(), b in 1usize..4, s in 1usize..6, scale in 0.1f64..100.0) {
        let dev = Cpu::seed_from_u64(seed);
        let norm = dev.build_module::<LayerNorm<D, f64, Cpu>, f64>();
        let x = normal(&dev, (b, s, 0)) * scale + 3.0;
        let xs = x.as_vec();
        let y = norm.forward(x).as_vec();
        for (row, input) in y.chunks(D).zip(xs.chunks(D)) {
            let mean = row.iter().sum::<f64>() / D as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / D as f64;
            prop_assert!(mean.abs() < 1e-9);
            // Exactly 1 but for eps: the output variance is v / (v + eps), v the input's.
            let m = input.iter().sum::<f64>() / D as f64;
            let v = input.iter().map(|x| (x - m).powi(2)).sum::<f64>() / D as f64;
            prop_assert!((var - v / (v + norm.eps)).abs() < 1e-9, "variance {} for input variance {}", var, v);
            prop_assert!(v < 0.01 || (var - 1.0).abs() < 1e-3);
        }
    }

    #[test]
    fn sinusoidal_encoding_is_the_papers_formula(offset in 0usize..10, s in 1usize..10) {
        let dev = Cpu::default();
        const P: usize = 20;
        const W: usize = 6;
        let pe = dev.build_module::<PositionalEncoding<P, W, Sinusoidal, f64, Cpu>, f64>();
        let zeros: Tensor<(usize, usize, Const<W>), f64, _> = dev.zeros_like(&(1, s, Const));
        let result = pe.forward(zeros, offset);
        if offset + s > P {
            prop_assert!(result.is_err());
        } else {
            let table = result.unwrap().as_vec();
            for pos in 0..s {
                for i in 0..W / 2 {
                    let angle = (offset + pos) as f64 / 10000f64.powf(2.0 * i as f64 / W as f64);
                    prop_assert!((table[pos * W + 2 * i] - angle.sin()).abs() < 1e-12);
                    prop_assert!((table[pos * W + 2 * i + 1] - angle.cos()).abs() < 1e-12);
                }
            }
        }
    }
}

#[test]
fn a_sequence_longer_than_the_table_is_an_error() {
    let dev = Cpu::default();
    let pe = dev.build_module::<PositionalEncoding<4, 8, Learned, f32, Cpu>, f32>();
    let x: Tensor<(usize, usize, Const<8>), f32, _> = dev.zeros_like(&(1, 5, Const));
    let err = pe.forward(x, 0).unwrap_err().to_string();
    assert!(err.contains("5 positions") && err.contains("table of 4 positions"), "{err}");
}

/// Central finite differences of `loss` at `values[index]`.
fn numeric_grad(values: &[f64], index: usize, loss: impl Fn(Vec<f64>) -> f64) -> f64 {
    let h = 1e-6;
    let mut plus = values.to_vec();
    plus[index] += h;
    let mut minus = values.to_vec();
    minus[index] -= h;
    (loss(plus) - loss(minus)) / (2.0 * h)
}

fn assert_close(analytic: f64, numeric: f64, what: &str) {
    let tol = 1e-6 * (1.0 + numeric.abs());
    assert!((analytic - numeric).abs() < tol, "{what}: analytic {analytic} vs numeric {numeric}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn attention_gradients_match_finite_differences(seed in any::<u64>(), s in 1usize..5, causal in any::<bool>()) {
        let dev = Cpu::seed_from_u64(seed);
        let mut mha = dev.build_module::<MultiHeadAttention<D, H, HD, f64, Cpu>, f64>();
        mha.dropout = 0.0;
        let x = normal(&dev, (2, s, 0));
        let probe = normal(&dev, (2, s, 0));
        let lens = [s, 1.max(s / 2)];
        let mask = MaskSpec { causal, query_offset: 0, key_lengths: Some(&lens), key_starts: None };
        let loss_of = |mha: &MultiHeadAttention<D, H, HD, f64, Cpu>, x: Tensor<(usize, usize, Const<D>), f64, Cpu>| {
            (mha.self_attention(x, &mask).unwrap() * probe.clone()).sum::<Rank0, _>().as_vec()[0]
        };
        let y = mha.self_attention(x.leaky_trace(), &mask).unwrap();
        let grads = (y * probe.clone()).sum::<Rank0, _>().backward();
        let xs = x.as_vec();
        let dx = grads.get(&x).as_vec();
        for i in (0..xs.len()).step_by(5) {
            let num = numeric_grad(&xs, i, |v| loss_of(&mha, dev.tensor_from_vec(v, (2, s, Const::<D>))));
            assert_close(dx[i], num, "d loss / d x");
        }
        let wq = mha.w_q.weight.as_vec();
        let dwq = grads.get(&mha.w_q.weight).as_vec();
        for i in (0..wq.len()).step_by(7) {
            let num = numeric_grad(&wq, i, |v| {
                let mut m = mha.clone();
                m.w_q.weight.copy_from(&v);
                loss_of(&m, x.clone())
            });
            assert_close(dwq[i], num, "d loss / d w_q");
        }
    }

    #[test]
    fn decoder_layer_gradients_match_finite_differences(seed in any::<u64>(), st in 1usize..4, ss in 1usize..4) {
        let dev = Cpu::seed_from_u64(seed);
        let mut layer = dev.build_module::<DecoderLayer<D, H, HD, 16, PostNorm, Gelu, f64, Cpu>, f64>();
        typeformer::nn::set_dropout(&mut layer, 0.0).unwrap();
        let x = normal(&dev, (1, st, 0));
        let memory = normal(&dev, (1, ss, 0));
        let probe = normal(&dev, (1, st, 0));
        let masks = DecoderMasks { self_mask: MaskSpec::causal(None), memory_mask: MaskSpec::none() };
        let loss_of = |layer: &DecoderLayer<D, H, HD, 16, PostNorm, Gelu, f64, Cpu>, x: Tensor<(usize, usize, Const<D>), f64, Cpu>, memory: &Tensor<(usize, usize, Const<D>), f64, Cpu>| {
            (layer.forward(x, memory, &masks).unwrap() * probe.clone()).sum::<Rank0, _>().as_vec()[0]
        };
        let y = layer.forward(x.leaky_trace(), &memory, &masks).unwrap();
        let grads = (y * probe.clone()).sum::<Rank0, _>().backward();
        let (xs, ms) = (x.as_vec(), memory.as_vec());
        let (dx, dm) = (grads.get(&x).as_vec(), grads.get(&memory).as_vec());
        for (i, &analytic) in dx.iter().enumerate() {
            let num = numeric_grad(&xs, i, |v| loss_of(&layer, dev.tensor_from_vec(v, (1, st, Const::<D>)), &memory));
            assert_close(analytic, num, "d loss / d x");
        }
        for (i, &analytic) in dm.iter().enumerate() {
            let num = numeric_grad(&ms, i, |v| loss_of(&layer, x.clone(), &dev.tensor_from_vec(v, (1, ss, Const::<D>))));
            assert_close(analytic, num, "d loss / d memory");
        }
        let w1 = layer.ffn.linear1.weight.as_vec();
        let dw1 = grads.get(&layer.ffn.linear1.weight).as_vec();
        for i in (0..w1.len()).step_by(11) {
            let num = numeric_grad(&w1, i, |v| {
                let mut l = layer.clone();
                l.ffn.linear1.weight.copy_from(&v);
                loss_of(&l, x.clone(), &memory)
            });
            assert_close(dw1[i], num, "d loss / d ffn.linear1.weight");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// Each activation's gradient, and layer norm's, against central differences (this caught
    /// dfdx 0.13's wrong `accurate_gelu` derivative, which `Gelu` corrects).
    #[test]
    fn activation_and_norm_gradients_match_finite_differences(seed in any::<u64>(), s in 1usize..4) {
        let dev = Cpu::seed_from_u64(seed);
        let norm = dev.build_module::<LayerNorm<D, f64, Cpu>, f64>();
        let x = normal(&dev, (1, s, 0)) * 2.0;
        let probe = normal(&dev, (1, s, 0));
        let xs = x.as_vec();
        type F = fn(&LayerNorm<D, f64, Cpu>, Tensor<(usize, usize, Const<D>), f64, Cpu, OwnedTape<f64, Cpu>>) -> Tensor<(usize, usize, Const<D>), f64, Cpu, OwnedTape<f64, Cpu>>;
        type G = fn(&LayerNorm<D, f64, Cpu>, Tensor<(usize, usize, Const<D>), f64, Cpu>) -> Tensor<(usize, usize, Const<D>), f64, Cpu>;
        let cases: [(&str, F, G); 4] = [
            ("relu", |_, x| Relu::apply(x), |_, x| Relu::apply(x)),
            ("gelu", |_, x| Gelu::apply(x), |_, x| Gelu::apply(x)),
            ("gelu_tanh", |_, x| GeluTanh::apply(x), |_, x| GeluTanh::apply(x)),
            ("layer_norm", |n, x| n.forward(x), |n, x| n.forward(x)),
        ];
        for (name, traced, plain) in cases {
            let grads = (traced(&norm, x.leaky_trace()) * probe.clone()).sum::<Rank0, _>().backward();
            let dx = grads.get(&x).as_vec();
            for (i, &analytic) in dx.iter().enumerate() {
                let num = numeric_grad(&xs, i, |v| (plain(&norm, dev.tensor_from_vec(v, (1, s, Const::<D>))) * probe.clone()).sum::<Rank0, _>().as_vec()[0]);
                assert_close(analytic, num, name);
            }
        }
    }
}

#[test]
fn gelu_is_the_exact_gelu() {
    // Reference values of x·Φ(x) = 0.5·x·(1 + erf(x/√2)), computed with Python's math.erf.
    let dev = Cpu::default();
    let x: Tensor<Rank1<4>, f64, _> = dev.tensor([-2.0, -0.5, 0.5, 3.0]);
    let expected = [-0.04550026389635842, -0.15426876936299344, 0.34573123063700656, 2.99595030590511];
    for (y, e) in Gelu::apply(x).as_vec().iter().zip(expected) {
        assert!((y - e).abs() < 1e-12, "{y} vs {e}");
    }
}

proptest! {
    #![proptest_config(cases())]

    /// Incremental decoding with the key/value cache computes what a full pass over the prefix
    /// computes, whether the prefix arrives at once or token by token.
    #[test]
    fn cached_decoding_equals_full_recompute(seed in any::<u64>(), s in 1usize..8, first in 1usize..8, src_len in 1usize..6) {
        let first = first.min(s);
        let dev = Cpu::seed_from_u64(seed);
        let model = dev.build_module::<TaskSmall<f64, Cpu>, f64>();
        let src = Tokens::<TASK_VOCAB>::from_sequences(&[(0..src_len).map(|i| 3 + (i * 7 + seed as usize) % 10).collect(), vec![5, 6]]).unwrap();
        let tgt: Vec<Vec<usize>> = (0..2).map(|b| (0..s).map(|p| 3 + (b + 3 * p + seed as usize) % 12).collect()).collect();
        let full = model.forward(&src, &Tokens::from_sequences(&tgt).unwrap()).unwrap().as_vec(); // (2, s, V)

        let memory = model.encode(&src, NoneTape).unwrap();
        let mut state = model.start_decoding(&memory, src.lengths()).unwrap();
        let mut steps = vec![(0, first)];
        steps.extend((first..s).map(|p| (p, p + 1)));
        for (from, to) in steps {
            let chunk: Vec<Vec<usize>> = tgt.iter().map(|t| t[from..to].to_vec()).collect();
            let logits = model.decode_step(&mut state, &Tokens::from_sequences(&chunk).unwrap()).unwrap().as_vec();
            let n = to - from;
            for b in 0..2 {
                let cached = &logits[b * n * TASK_VOCAB..(b + 1) * n * TASK_VOCAB];
                let reference = &full[(b * s + from) * TASK_VOCAB..(b * s + to) * TASK_VOCAB];
                prop_assert!(max_abs_diff(cached, reference) < 1e-10);
            }
        }
        prop_assert_eq!(state.position, s);
    }
}

type TinyLm = DecoderOnly<20, D, H, HD, 16, 2, 12, PreNorm, GeluTanh, Learned, TiedOutput, f64, Cpu>;
/// The same pipeline with Llama's parts: rotary positions, 2 query heads sharing 1 key/value
/// head, SwiGLU, RMSNorm.
type TinyLlama = typeformer::models::Llama<20, D, H, 1, HD, 16, 2, 12, 10_000, TiedOutput, f64, Cpu>;

/// A language model's logits at positions up to `cut` do not depend on the tokens after it.
fn logits_ignore_later_tokens<M: LanguageModel<20, f64, Cpu>>(
    model: &M,
    seed: u64,
    s: usize,
    cut: usize,
) -> Result<(), TestCaseError> {
    let seq: Vec<usize> = (0..s).map(|p| (p * 7 + seed as usize) % 20).collect();
    let mut later = seq.clone();
    for t in &mut later[cut + 1..] {
        *t = (*t + 3) % 20;
    }
    let a = model.logits(&Tokens::from_sequences(&[seq]).unwrap()).unwrap().as_vec();
    let b = model.logits(&Tokens::from_sequences(&[later]).unwrap()).unwrap().as_vec();
    prop_assert!(max_abs_diff(&a[..(cut + 1) * 20], &b[..(cut + 1) * 20]) < 1e-10);
    Ok(())
}

/// A prompt of `prompt` tokens, then one token per step, through the KV cache, gives the
/// logits of one pass over the whole sequence.
fn cached_steps_equal_full_recompute<M: LanguageModel<20, f64, Cpu>>(
    model: &M,
    seed: u64,
    s: usize,
    prompt: usize,
) -> Result<(), TestCaseError> {
    let seqs: Vec<Vec<usize>> =
        (0..2).map(|b| (0..s).map(|p| (b * 5 + p * 3 + seed as usize) % 20).collect()).collect();
    let full = model.logits(&Tokens::from_sequences(&seqs).unwrap()).unwrap().as_vec(); // (2, s, V)
    let mut state = model.start();
    let mut steps = vec![(0, prompt)];
    steps.extend((prompt..s).map(|p| (p, p + 1)));
    for (from, to) in steps {
        let chunk: Vec<Vec<usize>> = seqs.iter().map(|t| t[from..to].to_vec()).collect();
        let logits = model.step(&mut state, &Tokens::from_sequences(&chunk).unwrap()).unwrap().as_vec();
        let n = to - from;
        for b in 0..2 {
            prop_assert!(
                max_abs_diff(&logits[b * n * 20..(b + 1) * n * 20], &full[(b * s + from) * 20..(b * s + to) * 20])
                    < 1e-10
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn language_model_logits_ignore_later_tokens(seed in any::<u64>(), s in 2usize..9, cut in 0usize..8) {
        let dev = Cpu::seed_from_u64(seed);
        logits_ignore_later_tokens(&dev.build_module::<TinyLm, f64>(), seed, s, cut % (s - 1))?;
        logits_ignore_later_tokens(&dev.build_module::<TinyLlama, f64>(), seed, s, cut % (s - 1))?;
    }

    #[test]
    fn language_model_cached_steps_equal_full_recompute(seed in any::<u64>(), s in 1usize..10, prompt in 1usize..10) {
        let dev = Cpu::seed_from_u64(seed);
        cached_steps_equal_full_recompute(&dev.build_module::<TinyLm, f64>(), seed, s, prompt.min(s))?;
        cached_steps_equal_full_recompute(&dev.build_module::<TinyLlama, f64>(), seed, s, prompt.min(s))?;
    }

    /// Padding on the right changes nothing for the real tokens, in both families.
    #[test]
    fn language_model_padding_changes_nothing(seed in any::<u64>(), s in 2usize..8, short in 1usize..8) {
        let short = short.min(s - 1);
        let dev = Cpu::seed_from_u64(seed);
        let llama = dev.build_module::<TinyLlama, f64>();
        let long: Vec<usize> = (0..s).map(|p| (p * 3 + 1) % 20).collect();
        let alone = llama.forward(&Tokens::from_sequences(&[long[..short].to_vec()]).unwrap()).unwrap().as_vec();
        let batched = llama.forward(&Tokens::from_sequences(&[long.clone(), long[..short].to_vec()]).unwrap()).unwrap().as_vec();
        prop_assert!(max_abs_diff(&alone, &batched[s * 20..(s + short) * 20]) < 1e-10);
    }
}

#[test]
fn a_llama_trains_through_the_shared_pipeline() {
    // One Adam step on a tiny Llama lowers its loss on the batch it saw: the gradients reach
    // every part (rotary attention, SwiGLU, RMSNorm) through the same training pass as GPT's.
    let dev = Cpu::seed_from_u64(3);
    let mut model = dev.build_module::<TinyLlama, f64>();
    let seqs: Vec<Vec<usize>> =
        vec![(0..10).map(|p| (p * 3) % 20).collect(), (0..10).map(|p| (p * 7 + 1) % 20).collect()];
    let tokens = Tokens::<20>::from_sequences(&seqs).unwrap();
    let loss_of = |m: &TinyLlama| {
        let logits = m.forward(&tokens).unwrap().as_vec();
        let mut total = 0.0;
        for (b, seq) in seqs.iter().enumerate() {
            for p in 0..seq.len() - 1 {
                let row = &logits[(b * 10 + p) * 20..(b * 10 + p + 1) * 20];
                let max = row.iter().cloned().fold(f64::MIN, f64::max);
                let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                total += lse - row[seq[p + 1]];
            }
        }
        total
    };
    let before = loss_of(&model);
    let mut sgd =
        dfdx::optim::Sgd::new(&model, dfdx::optim::SgdConfig { lr: 0.05, momentum: None, weight_decay: None });
    let mut target = vec![0.0; 2 * 10 * 20];
    for (b, seq) in seqs.iter().enumerate() {
        for p in 0..seq.len() - 1 {
            target[(b * 10 + p) * 20 + seq[p + 1]] = -1.0;
        }
    }
    let target: Tensor<(usize, usize, Const<20>), f64, Cpu> = dev.tensor_from_vec(target, (2, 10, Const));
    let mut grads = model.alloc_grads();
    for _ in 0..5 {
        let logits = model.forward_traced(&tokens, grads).unwrap(); // (2, 10, 20)
        let loss = (logits.log_softmax::<Axis<2>>() * target.clone()).sum();
        grads = loss.backward();
        dfdx::optim::Optimizer::update(&mut sgd, &mut model, &grads).unwrap();
        model.zero_grads(&mut grads);
    }
    assert!(loss_of(&model) < before * 0.95, "{} -> {}", before, loss_of(&model));
}

proptest! {
    #![proptest_config(cases())]

    /// With its weight at ones, every position comes out with a root mean square of 1, and
    /// scaling a position by any c > 0 does not change it. Both hold exactly only without eps
    /// (with eps, a position scaled by 0.01 moves by about eps / (c^2 * mean square), which
    /// 1e-12 makes larger than the 1e-9 tolerance), so eps is 0 here; the rows are random
    /// normals, never all zero.
    #[test]
    fn rms_norm_gives_unit_rms_and_ignores_scale(seed in any::<u64>(), b in 1usize..3, s in 1usize..5, c in 0.01f64..100.0) {
        let dev = Cpu::seed_from_u64(seed);
        let mut norm = dev.build_module::<RmsNorm<D, f64, Cpu>, f64>();
        norm.eps = 0.0;
        let x = normal(&dev, (b, s, 0));
        let y = norm.forward(x.clone()).as_vec();
        for row in y.chunks(D) {
            let rms = (row.iter().map(|v| v * v).sum::<f64>() / D as f64).sqrt();
            prop_assert!((rms - 1.0).abs() < 1e-9, "rms {rms}");
        }
        let scaled = norm.forward(x * c).as_vec();
        prop_assert!(max_abs_diff(&y, &scaled) < 1e-9);
    }

    /// The weight scales each feature after normalising.
    #[test]
    fn rms_norm_weight_scales_each_feature(seed in any::<u64>()) {
        let dev = Cpu::seed_from_u64(seed);
        let mut norm = dev.build_module::<RmsNorm<D, f64, Cpu>, f64>();
        let x = normal(&dev, (1, 3, 0));
        let plain = norm.forward(x.clone()).as_vec();
        let w: Vec<f64> = (0..D).map(|i| i as f64 - 2.5).collect();
        norm.weight = dev.tensor_from_vec(w.clone(), (Const::<D>,));
        let weighted = norm.forward(x).as_vec();
        for (i, (p, q)) in plain.iter().zip(&weighted).enumerate() {
            prop_assert!((p * w[i % D] - q).abs() < 1e-12);
        }
    }
}

#[test]
fn rms_norm_gradients_match_finite_differences() {
    let dev = Cpu::seed_from_u64(5);
    let norm = dev.build_module::<RmsNorm<D, f64, Cpu>, f64>();
    let x = normal(&dev, (2, 3, 0));
    let probe = normal(&dev, (2, 3, 0));
    let y = norm.forward(x.leaky_trace());
    let grads = (y * probe.clone()).sum::<Rank0, _>().backward();
    let (xs, dx) = (x.as_vec(), grads.get(&x).as_vec());
    let loss = |v: Vec<f64>| {
        let x: Tensor<(usize, usize, Const<D>), f64, Cpu> = dev.tensor_from_vec(v, (2, 3, Const));
        (norm.forward(x) * probe.clone()).sum::<Rank0, _>().as_vec()[0]
    };
    for (i, &analytic) in dx.iter().enumerate() {
        assert_close(analytic, numeric_grad(&xs, i, loss), &format!("dx[{i}]"));
    }
}

type Rope = RotaryEmbedding<HD, f64, Cpu>;

fn heads(dev: &Cpu, b: usize, s: usize) -> Tensor<(usize, Const<H>, usize, Const<HD>), f64, Cpu> {
    dev.sample_normal_like(&(b, Const, s, Const))
}

/// Dot products of matching (b, h, s) vectors of two `(B, H, S, HD)` tensors.
fn dots(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.chunks(HD).zip(b.chunks(HD)).map(|(x, y)| x.iter().zip(y).map(|(p, q)| p * q).sum()).collect()
}

proptest! {
    #![proptest_config(cases())]

    /// A rotation: every head vector keeps its length, and position 0 is not moved.
    #[test]
    fn rotary_embeddings_rotate(seed in any::<u64>(), s in 1usize..6, offset in 0usize..10, base in 2.0f64..1e6) {
        let dev = Cpu::seed_from_u64(seed);
        let rope = Rope::new(&dev, 16, base).unwrap();
        let x = heads(&dev, 2, s);
        let y = rope.apply(x.clone(), offset).unwrap().as_vec();
        let xs = x.as_vec();
        let (nx, ny) = (dots(&xs, &xs), dots(&y, &y));
        prop_assert!(max_abs_diff(&nx, &ny) < 1e-9);
        let at0 = Rope::new(&dev, 1, base).unwrap().apply(x.clone().slice((.., .., 0..1, ..)).reshape_like(&(2, Const::<H>, 1, Const::<HD>)), 0).unwrap().as_vec();
        let x0 = x.slice((.., .., 0..1, ..)).reshape_like(&(2, Const::<H>, 1, Const::<HD>)).as_vec();
        prop_assert!(max_abs_diff(&at0, &x0) < 1e-12);
    }

    /// The score of a query at position m and a key at position n depends on m - n alone.
    #[test]
    fn rotary_scores_depend_on_the_distance_only(seed in any::<u64>(), m in 0usize..8, n in 0usize..8, shift in 0usize..8) {
        let dev = Cpu::seed_from_u64(seed);
        let rope = Rope::new(&dev, 24, 10_000.0).unwrap();
        let (q, k) = (heads(&dev, 1, 1), heads(&dev, 1, 1));
        let score = |m: usize, n: usize| dots(&rope.apply(q.clone(), m).unwrap().as_vec(), &rope.apply(k.clone(), n).unwrap().as_vec());
        prop_assert!(max_abs_diff(&score(m, n), &score(m + shift, n + shift)) < 1e-9);
    }

    /// Rotating the last positions of a sequence at their offset equals rotating the whole
    /// sequence: what a KV-cached step computes is what the full pass computes.
    #[test]
    fn rotary_offsets_match_the_full_sequence(seed in any::<u64>(), s in 2usize..7, cut in 1usize..6) {
        let cut = cut % s;
        let dev = Cpu::seed_from_u64(seed);
        let rope = Rope::new(&dev, 8, 500_000.0).unwrap();
        let x = heads(&dev, 2, s);
        let full = rope.apply(x.clone(), 0).unwrap().slice((.., .., cut.., ..)).as_vec();
        let tail = x.slice((.., .., cut.., ..)).reshape_like(&(2, Const::<H>, s - cut, Const::<HD>));
        prop_assert!(max_abs_diff(&full, &rope.apply(tail, cut).unwrap().as_vec()) < 1e-12);
    }
}

#[test]
fn rotary_embeddings_follow_the_rotate_half_layout_and_refuse_what_they_cannot_do() {
    let dev = Cpu::default();
    // One pair (features 0 and HD/2) rotated by p * base^0 = p radians at position p.
    let rope = Rope::new(&dev, 4, 10_000.0).unwrap();
    let mut v = vec![0.0; H * HD];
    v[0] = 1.0;
    let x: Tensor<(usize, Const<H>, usize, Const<HD>), f64, Cpu> = dev.tensor_from_vec(v, (1, Const, 1, Const));
    let y = rope.apply(x.clone(), 3).unwrap().as_vec();
    assert!((y[0] - 3f64.cos()).abs() < 1e-12 && (y[HD / 2] - 3f64.sin()).abs() < 1e-12, "{y:?}");
    let err = rope.apply(x, 4).unwrap_err().to_string();
    assert!(err.contains("starting at offset 4") && err.contains("table of 4 positions"), "{err}");
    assert!(RotaryEmbedding::<5, f64, Cpu>::new(&dev, 4, 10_000.0).is_err());
    assert!(Rope::new(&dev, 4, f64::NAN).is_err() && Rope::new(&dev, 0, 10_000.0).is_err());
}

#[test]
fn rotary_gradients_match_finite_differences() {
    let dev = Cpu::seed_from_u64(6);
    let rope = Rope::new(&dev, 8, 10_000.0).unwrap();
    let x = heads(&dev, 1, 3);
    let probe = heads(&dev, 1, 3);
    let grads = (rope.apply(x.leaky_trace(), 2).unwrap() * probe.clone()).sum::<Rank0, _>().backward();
    let (xs, dx) = (x.as_vec(), grads.get(&x).as_vec());
    let loss = |v: Vec<f64>| {
        let x: Tensor<(usize, Const<H>, usize, Const<HD>), f64, Cpu> = dev.tensor_from_vec(v, (1, Const, 3, Const));
        (rope.apply(x, 2).unwrap() * probe.clone()).sum::<Rank0, _>().as_vec()[0]
    };
    for (i, &analytic) in dx.iter().enumerate() {
        assert_close(analytic, numeric_grad(&xs, i, loss), &format!("dx[{i}]"));
    }
}

/// `down(silu(gate(x)) * up(x))`, from the weights, one position at a time.
fn swiglu_by_hand(mlp: &SwiGlu<D, 16, f64, Cpu>, x: &[f64]) -> Vec<f64> {
    let (g, u, d) = (mlp.gate.weight.as_vec(), mlp.up.weight.as_vec(), mlp.down.weight.as_vec());
    x.chunks(D)
        .flat_map(|x| {
            let h: Vec<f64> = (0..16)
                .map(|f| {
                    let gate: f64 = (0..D).map(|i| x[i] * g[i * 16 + f]).sum();
                    let up: f64 = (0..D).map(|i| x[i] * u[i * 16 + f]).sum();
                    gate / (1.0 + (-gate).exp()) * up
                })
                .collect();
            let d = &d;
            (0..D).map(move |o| (0..16).map(|f| h[f] * d[f * D + o]).sum::<f64>()).collect::<Vec<_>>()
        })
        .collect()
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn swiglu_is_down_of_silu_gate_times_up(seed in any::<u64>(), b in 1usize..3, s in 1usize..5) {
        let dev = Cpu::seed_from_u64(seed);
        let mlp = dev.build_module::<SwiGlu<D, 16, f64, Cpu>, f64>();
        let x = normal(&dev, (b, s, 0));
        let want = swiglu_by_hand(&mlp, &x.as_vec());
        prop_assert!(max_abs_diff(&mlp.forward(x).as_vec(), &want) < 1e-12);
    }
}

#[test]
fn swiglu_gradients_match_finite_differences_and_it_has_no_biases() {
    let dev = Cpu::seed_from_u64(7);
    let mlp = dev.build_module::<SwiGlu<D, 16, f64, Cpu>, f64>();
    // What a checkpoint holds and Adam trains: the three weights.
    let names: Vec<String> = typeformer::io::parameter_shapes(&mlp).unwrap().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["gate.weight", "up.weight", "down.weight"]);
    assert_eq!(mlp.num_trainable_params(), 3 * D * 16);
    let x = normal(&dev, (2, 2, 0));
    let probe = normal(&dev, (2, 2, 0));
    let grads = (mlp.forward(x.leaky_trace()) * probe.clone()).sum::<Rank0, _>().backward();
    let (xs, dx) = (x.as_vec(), grads.get(&x).as_vec());
    let loss = |v: Vec<f64>| {
        let x: Tensor<(usize, usize, Const<D>), f64, Cpu> = dev.tensor_from_vec(v, (2, 2, Const));
        (mlp.forward(x) * probe.clone()).sum::<Rank0, _>().as_vec()[0]
    };
    for (i, &analytic) in dx.iter().enumerate() {
        assert_close(analytic, numeric_grad(&xs, i, loss), &format!("dx[{i}]"));
    }
}

type Gqa<const KVH: usize> = GroupedQueryAttention<D, H, KVH, HD, f64, Cpu>;

/// `model` with its key and value heads repeated so that each query head has its own: the
/// multi-head attention that grouped-query attention stands for.
fn ungrouped(dev: &Cpu, model: &Gqa<1>) -> Gqa<H> {
    let mut full = dev.build_module::<Gqa<H>, f64>();
    full.w_q.weight = model.w_q.weight.clone();
    full.w_o.weight = model.w_o.weight.clone();
    let repeat = |w: &Tensor<Rank3<D, 1, HD>, f64, Cpu>| {
        let v = w.as_vec(); // (D, 1, HD)
        let out: Vec<f64> = (0..D)
            .flat_map(|d| (0..H).flat_map(move |_| (0..HD).map(move |j| (d, j))))
            .map(|(d, j)| v[d * HD + j])
            .collect();
        dev.tensor_from_vec(out, (Const::<D>, Const::<H>, Const::<HD>))
    };
    full.w_k.weight = repeat(&model.w_k.weight);
    full.w_v.weight = repeat(&model.w_v.weight);
    full
}

proptest! {
    #![proptest_config(cases())]

    /// Query heads that share one key/value head compute what heads with copies of it compute.
    #[test]
    fn grouped_query_attention_is_attention_with_shared_keys_and_values(seed in any::<u64>(), s in 1usize..6, offset in 0usize..4) {
        let dev = Cpu::seed_from_u64(seed);
        let rope = Rope::new(&dev, 16, 10_000.0).unwrap();
        let shared = dev.build_module::<Gqa<1>, f64>();
        let full = ungrouped(&dev, &shared);
        let x = normal(&dev, (2, s, 0));
        let lens = [s, 1.max(s / 2)];
        let mask = MaskSpec { causal: true, query_offset: 0, key_lengths: Some(&lens), key_starts: None };
        let a = shared.forward(x.clone(), &rope, offset, &mask).unwrap().as_vec();
        let b = full.forward(x, &rope, offset, &mask).unwrap().as_vec();
        prop_assert!(max_abs_diff(&a, &b) < 1e-12);
    }

    #[test]
    fn grouped_query_attention_is_causal(seed in any::<u64>(), s in 2usize..7, cut in 0usize..6) {
        let cut = cut % (s - 1);
        let dev = Cpu::seed_from_u64(seed);
        let rope = Rope::new(&dev, 8, 10_000.0).unwrap();
        let attn = dev.build_module::<Gqa<1>, f64>();
        let x = normal(&dev, (1, s, 0));
        let mut changed = x.as_vec();
        for v in &mut changed[(cut + 1) * D..] {
            *v += 1.0;
        }
        let changed: Tensor<(usize, usize, Const<D>), f64, Cpu> = dev.tensor_from_vec(changed, (1, s, Const));
        let mask = MaskSpec::causal(None);
        let a = attn.forward(x, &rope, 0, &mask).unwrap().as_vec();
        let b = attn.forward(changed, &rope, 0, &mask).unwrap().as_vec();
        prop_assert!(max_abs_diff(&a[..(cut + 1) * D], &b[..(cut + 1) * D]) < 1e-12);
    }
}

#[test]
fn grouped_query_attention_gradients_match_finite_differences() {
    let dev = Cpu::seed_from_u64(8);
    let rope = Rope::new(&dev, 8, 10_000.0).unwrap();
    let attn = dev.build_module::<Gqa<1>, f64>();
    let x = normal(&dev, (1, 3, 0));
    let probe = normal(&dev, (1, 3, 0));
    let mask = MaskSpec::causal(None);
    let grads = (attn.forward(x.leaky_trace(), &rope, 1, &mask).unwrap() * probe.clone()).sum::<Rank0, _>().backward();
    let (xs, dx) = (x.as_vec(), grads.get(&x).as_vec());
    let loss = |v: Vec<f64>| {
        let x: Tensor<(usize, usize, Const<D>), f64, Cpu> = dev.tensor_from_vec(v, (1, 3, Const));
        (attn.forward(x, &rope, 1, &mask).unwrap() * probe.clone()).sum::<Rank0, _>().as_vec()[0]
    };
    for (i, &analytic) in dx.iter().enumerate() {
        assert_close(analytic, numeric_grad(&xs, i, loss), &format!("dx[{i}]"));
    }
}
