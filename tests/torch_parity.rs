//! Weights imported from PyTorch (`nn.MultiheadAttention`, `nn.TransformerEncoderLayer`,
//! `nn.Transformer`) and Hugging Face GPT-2 and BERT (with task heads) give PyTorch's outputs
//! and gradients. The fixtures in
//! tests/fixtures/torch are written by scripts/make_torch_fixtures.py.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use typeformer::dfdx::nn::tensor_collection::TensorCollection;
use typeformer::io::{import_weights, load_hf_gpt2, load_torch, load_torch_under, load_vectors, torch_source};
use typeformer::prelude::*;

const TOL: f32 = 1e-5;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch").join(name)
}

fn tensors(name: &str) -> HashMap<String, Vec<f32>> {
    load_vectors::<f32>(&fixture(name)).unwrap().0
}

fn lengths(v: &[f32]) -> Vec<usize> {
    v.iter().map(|&x| x as usize).collect()
}

/// Fixture tensors that are not weights.
fn not_a_weight(name: &str) -> bool {
    ["input.", "output.", "grad."].iter().any(|p| name.starts_with(p))
}

#[track_caller]
fn assert_close(found: &[f32], expected: &[f32], what: &str) {
    assert_eq!(found.len(), expected.len(), "{what}: length");
    let (i, diff) = found.iter().zip(expected).map(|(a, b)| (a - b).abs()).enumerate().fold((0, 0.0), |m, (i, d)| {
        if d > m.1 {
            (i, d)
        } else {
            m
        }
    });
    assert!(diff <= TOL, "{what}: differs by {diff} at {i} ({} vs {})", found[i], expected[i]);
}

fn hidden<const D: usize>(dev: &Cpu, values: &[f32], b: usize, s: usize) -> Tensor<(usize, usize, Const<D>), f32, Cpu> {
    dev.tensor_from_vec(values.to_vec(), (b, s, Const::<D>))
}

/// Block `k` of `n` equal blocks of `v`.
fn block(v: &[f32], k: usize, n: usize) -> &[f32] {
    let len = v.len() / n;
    &v[k * len..(k + 1) * len]
}

/// A PyTorch `nn.Linear` weight `[out, in]` (row-major, `out` rows) in our `(in, out)` layout.
fn transposed(v: &[f32], out: usize) -> Vec<f32> {
    let inputs = v.len() / out;
    (0..v.len()).map(|i| v[(i % out) * inputs + i / out]).collect()
}

#[test]
fn multi_head_attention_matches_pytorch_with_causal_and_padding_masks() {
    let dev = Cpu::default();
    let mut mha = dev.build_module::<MultiHeadAttention<16, 4, 4, f32, Cpu>, f32>();
    import_weights(&mut mha, &fixture("mha.safetensors"), &torch_source, &not_a_weight).unwrap();
    let t = tensors("mha.safetensors");
    let x = hidden::<16>(&dev, &t["input.x"], 2, 5);
    let memory = hidden::<16>(&dev, &t["input.memory"], 2, 7);
    let y = mha.self_attention(x.clone(), &MaskSpec::causal(None)).unwrap();
    assert_close(&y.as_vec(), &t["output.self_causal"], "causal self-attention");
    let memory_lengths = lengths(&t["input.memory_lengths"]);
    let y = mha.cross_attention(x, &memory, &MaskSpec::padding(&memory_lengths)).unwrap();
    assert_close(&y.as_vec(), &t["output.cross_padded"], "padded cross-attention");
}

fn encoder_layer_matches<N: NormPlacement, A: Activation>(file: &str) {
    let dev = Cpu::default();
    let mut layer = dev.build_module::<EncoderLayer<16, 4, 4, 32, N, A, f32, Cpu>, f32>();
    import_weights(&mut layer, &fixture(file), &torch_source, &not_a_weight).unwrap();
    set_dropout(&mut layer, 0.0).unwrap();
    let t = tensors(file);
    let lengths = lengths(&t["input.lengths"]);
    let x = hidden::<16>(&dev, &t["input.x"], 2, 6);
    let probe = hidden::<16>(&dev, &t["input.probe"], 2, 6);

    let y = layer.forward(x.clone(), &MaskSpec::padding(&lengths)).unwrap();
    assert_close(&y.as_vec(), &t["output.y"], "output");

    // d/dθ of sum(y * probe), as the fixture's backward pass computed it.
    let grads = Gradients::leaky(); // keeps the input's gradient too
    let y = layer.forward(x.trace(grads), &MaskSpec::padding(&lengths)).unwrap();
    let grads = (y * probe).sum().backward();
    assert_close(&grads.get(&x).as_vec(), &t["grad.x"], "grad of the input");
    let in_proj = &t["grad.self_attn.in_proj_weight"];
    let w_q = transposed(block(in_proj, 0, 3), 16);
    assert_close(&grads.get(&layer.self_attn.w_q.weight).as_vec(), &w_q, "grad of W_q");
    let w_v = transposed(block(in_proj, 2, 3), 16);
    assert_close(&grads.get(&layer.self_attn.w_v.weight).as_vec(), &w_v, "grad of W_v");
    let w_o = transposed(&t["grad.self_attn.out_proj.weight"], 16);
    assert_close(&grads.get(&layer.self_attn.w_o.weight).as_vec(), &w_o, "grad of W_o");
    let linear1 = transposed(&t["grad.linear1.weight"], 32);
    assert_close(&grads.get(&layer.ffn.linear1.weight).as_vec(), &linear1, "grad of linear1");
    assert_close(&grads.get(&layer.norm1.norm.weight).as_vec(), &t["grad.norm1.weight"], "grad of norm1");
    if <N::Bias as BiasKind>::ON {
        let in_bias = &t["grad.self_attn.in_proj_bias"];
        assert_close(&grads.get(&layer.self_attn.w_k.bias).as_vec(), block(in_bias, 1, 3), "grad of b_k");
        assert_close(&grads.get(&layer.ffn.linear2.bias).as_vec(), &t["grad.linear2.bias"], "grad of linear2.bias");
        assert_close(&grads.get(&layer.norm2.norm.bias).as_vec(), &t["grad.norm2.bias"], "grad of norm2.bias");
    }
}

#[test]
fn post_norm_relu_encoder_layer_matches_pytorch_forward_and_backward() {
    encoder_layer_matches::<PostNorm, Relu>("encoder_layer_post_relu.safetensors");
}

#[test]
fn pre_norm_gelu_encoder_layer_matches_pytorch_forward_and_backward() {
    encoder_layer_matches::<PreNorm<false>, Gelu>("encoder_layer_pre_gelu.safetensors");
}

#[test]
fn a_layer_without_biases_matches_pytorch_bias_false() {
    encoder_layer_matches::<PreNorm<false, false>, Gelu>("encoder_layer_pre_gelu_nobias.safetensors");
    // Its biases are not parameters: not counted, not loaded, not saved.
    let layer = Cpu::default().build_module::<EncoderLayer<16, 4, 4, 32, PreNorm<false, false>, Gelu, f32, Cpu>, f32>();
    assert_eq!(layer.num_trainable_params(), 4 * 16 * 16 + 2 * 16 * 32 + 2 * 16);
}

fn transformer_matches<N: NormPlacement, A: Activation>(file: &str) {
    let dev = Cpu::default();
    let path = fixture(file);
    let mut encoder = dev.build_module::<Encoder<16, 4, 4, 32, 2, N, A, f32, Cpu>, f32>();
    let mut decoder = dev.build_module::<Decoder<16, 4, 4, 32, 2, N, A, f32, Cpu>, f32>();
    load_torch_under(&mut encoder, &path, "encoder.").unwrap();
    load_torch_under(&mut decoder, &path, "decoder.").unwrap();
    let t = tensors(file);
    let (src_lengths, tgt_lengths) = (lengths(&t["input.src_lengths"]), lengths(&t["input.tgt_lengths"]));
    let memory = encoder.forward(hidden::<16>(&dev, &t["input.src"], 2, 7), &MaskSpec::padding(&src_lengths)).unwrap();
    assert_close(&memory.as_vec(), &t["output.memory"], "encoder output");
    let masks =
        DecoderMasks { self_mask: MaskSpec::causal(Some(&tgt_lengths)), memory_mask: MaskSpec::padding(&src_lengths) };
    let y = decoder.forward(hidden::<16>(&dev, &t["input.tgt"], 2, 5), &memory, &masks).unwrap();
    assert_close(&y.as_vec(), &t["output.y"], "decoder output");
}

#[test]
fn post_norm_nn_transformer_matches_pytorch() {
    transformer_matches::<PostNorm<true>, Relu>("transformer_post.safetensors");
}

#[test]
fn pre_norm_gelu_nn_transformer_matches_pytorch() {
    transformer_matches::<PreNorm<true>, Gelu>("transformer_pre_gelu.safetensors");
}

type TinyGpt2 = DecoderOnly<50, 16, 4, 4, 64, 2, 16, PreNorm, GeluTanh, Learned, TiedOutput, f32, Cpu>;

#[test]
fn a_hugging_face_gpt2_checkpoint_loads_and_gives_its_logits() {
    let dev = Cpu::default();
    let mut model = dev.build_module::<TinyGpt2, f32>();
    let t = tensors("gpt2_tiny.safetensors");
    // The fixture carries its inputs and outputs too: copy the weights to a file of their own.
    let weights = std::env::temp_dir().join(format!("typeformer-gpt2-{}.safetensors", std::process::id()));
    write_weights_only(&fixture("gpt2_tiny.safetensors"), &weights);
    load_hf_gpt2(&mut model, &weights).unwrap();
    let ids: Vec<usize> = t["input.ids"].iter().map(|&v| v as usize).collect();
    let tokens = Tokens::<50>::new(ids, 2, 8, vec![8, 8]).unwrap();
    let logits = model.forward(&tokens).unwrap();
    assert_close(&logits.as_vec(), &t["output.logits"], "GPT-2 logits");
    std::fs::remove_file(weights).unwrap();
}

#[test]
fn an_untied_hugging_face_gpt2_loads_into_a_head_without_a_bias() {
    type Untied = DecoderOnly<50, 16, 4, 4, 64, 2, 16, PreNorm, GeluTanh, Learned, UntiedOutputNoBias, f32, Cpu>;
    let dev = Cpu::default();
    let t = tensors("gpt2_untied.safetensors");
    let weights = std::env::temp_dir().join(format!("typeformer-gpt2-untied-{}.safetensors", std::process::id()));
    write_weights_only(&fixture("gpt2_untied.safetensors"), &weights);
    let mut model = dev.build_module::<Untied, f32>();
    load_hf_gpt2(&mut model, &weights).unwrap();
    assert_eq!(Untied::NUM_PARAMS, model.num_trainable_params());
    assert_eq!(Untied::NUM_PARAMS, TinyGpt2::NUM_PARAMS + 50 * 16);
    let ids: Vec<usize> = t["input.ids"].iter().map(|&v| v as usize).collect();
    let logits = model.forward(&Tokens::<50>::new(ids, 2, 8, vec![8, 8]).unwrap()).unwrap();
    assert_close(&logits.as_vec(), &t["output.logits"], "untied GPT-2 logits");
    // A head with a bias has nothing in the file to load it from; a tied model reads wte.
    type WithBias = DecoderOnly<50, 16, 4, 4, 64, 2, 16, PreNorm, GeluTanh, Learned, UntiedOutput, f32, Cpu>;
    let err = load_hf_gpt2(&mut dev.build_module::<WithBias, f32>(), &weights).unwrap_err().to_string();
    assert!(err.contains("nothing in this format maps to head.bias"), "{err}");
    std::fs::remove_file(weights).unwrap();
}

/// Loads a `BertFor...` fixture into `M`, returning the tensors it left unused, and checks the
/// encoder's output (and, with a pooler, the pooled output) against transformers'.
fn bert_with_head_matches<M>(file: &str) -> Vec<String>
where
    M: BuildOnDevice<Cpu, f32, Built = M> + TensorCollection<f32, Cpu> + Clone + BertForward,
{
    let dev = Cpu::default();
    let t = tensors(file);
    let weights = std::env::temp_dir().join(format!("typeformer-{file}-{}", std::process::id()));
    write_weights_only(&fixture(file), &weights);
    let mut model = dev.build_module::<M, f32>();
    let unused = typeformer::io::load_hf_bert(&mut model, &weights).unwrap().unused;
    typeformer::nn::set_layer_norm_eps(&mut model, 1e-12).unwrap();
    std::fs::remove_file(weights).unwrap();
    let ids: Vec<usize> = t["input.ids"].iter().map(|&v| v as usize).collect();
    let tokens = Tokens::<30>::new(ids, 2, 6, lengths(&t["input.lengths"])).unwrap();
    let (hidden, pooled) = model.hidden_and_pooled(&tokens);
    // Padded positions' outputs are meaningless: compare the 6 + 4 real ones.
    let real = |v: &[f32]| [&v[..6 * 16], &v[6 * 16..10 * 16]].concat();
    assert_close(&real(&hidden), &real(&t["output.hidden"]), &format!("{file}: encoder output"));
    if let (Some(pooled), Some(expected)) = (pooled, t.get("output.pooled")) {
        assert_close(&pooled, expected, &format!("{file}: pooled output"));
    }
    unused
}

type TinyBert<Pool> = Bert<30, 16, 2, 8, 32, 2, 12, 2, PostNorm, Gelu, Learned, f32, Cpu, Pool>;

/// The outputs a BERT fixture is compared on.
trait BertForward {
    fn hidden_and_pooled(&self, tokens: &Tokens<30>) -> (Vec<f32>, Option<Vec<f32>>);
}

impl BertForward for TinyBert<WithPooler> {
    fn hidden_and_pooled(&self, tokens: &Tokens<30>) -> (Vec<f32>, Option<Vec<f32>>) {
        let hidden = self.forward(tokens, None).unwrap();
        (hidden.as_vec(), Some(self.pool(hidden).as_vec()))
    }
}

impl BertForward for TinyBert<NoPooler> {
    fn hidden_and_pooled(&self, tokens: &Tokens<30>) -> (Vec<f32>, Option<Vec<f32>>) {
        (self.forward(tokens, None).unwrap().as_vec(), None)
    }
}

#[test]
fn the_encoders_of_hugging_face_bert_task_models_load_and_report_their_heads() {
    let pretraining = bert_with_head_matches::<TinyBert<WithPooler>>("bert_for_pretraining.safetensors");
    assert!(pretraining.iter().all(|n| n.starts_with("cls.")) && pretraining.len() == 9, "{pretraining:?}");
    assert!(pretraining.contains(&"cls.seq_relationship.weight".to_string()));
    let classifier = bert_with_head_matches::<TinyBert<WithPooler>>("bert_for_sequence_classification.safetensors");
    assert_eq!(classifier, ["classifier.bias", "classifier.weight"]);
    // BertForMaskedLM has no pooler: a NoPooler type loads it, one with a pooler says what is missing.
    let masked = bert_with_head_matches::<TinyBert<NoPooler>>("bert_for_masked_lm.safetensors");
    assert!(masked.iter().all(|n| n.starts_with("cls.predictions.")), "{masked:?}");
    let weights = std::env::temp_dir().join(format!("typeformer-mlm-{}.safetensors", std::process::id()));
    write_weights_only(&fixture("bert_for_masked_lm.safetensors"), &weights);
    let mut with_pooler = Cpu::default().build_module::<TinyBert<WithPooler>, f32>();
    let err = typeformer::io::load_hf_bert(&mut with_pooler, &weights).unwrap_err().to_string();
    assert!(err.contains("missing: bert.pooler.dense.weight"), "{err}");
    // A pooler the type leaves out is skipped and reported.
    write_weights_only(&fixture("bert_for_sequence_classification.safetensors"), &weights);
    let mut without = Cpu::default().build_module::<TinyBert<NoPooler>, f32>();
    let unused = typeformer::io::load_hf_bert(&mut without, &weights).unwrap().unused;
    assert!(unused.contains(&"bert.pooler.dense.weight".to_string()), "{unused:?}");
    assert_eq!(TinyBert::<WithPooler>::NUM_PARAMS - TinyBert::<NoPooler>::NUM_PARAMS, 16 * 16 + 16);
    std::fs::remove_file(weights).unwrap();
}

/// Copies the weight tensors (not `input.*`/`output.*`) of a fixture to `to`, keeping shapes.
fn write_weights_only(from: &Path, to: &Path) {
    let bytes = std::fs::read(from).unwrap();
    let file = ::safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let views: Vec<_> = file.tensors().into_iter().filter(|(n, _)| !not_a_weight(n)).collect();
    std::fs::write(to, ::safetensors::serialize(views, &None).unwrap()).unwrap();
}

#[test]
fn import_problems_are_reported_by_name() {
    let dev = Cpu::default();
    // Width 8 instead of 16, and an encoder layer instead of an attention module.
    let mut wrong = dev.build_module::<MultiHeadAttention<8, 2, 4, f32, Cpu>, f32>();
    let err = import_weights(&mut wrong, &fixture("mha.safetensors"), &torch_source, &not_a_weight).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("wrong shape: in_proj_weight (block 1 of 3) (transposed), for w_q.weight is [16, 16]"),
        "{msg}"
    );
    let mut layer = dev.build_module::<EncoderLayer<16, 4, 4, 32, PostNorm, Relu, f32, Cpu>, f32>();
    let before = layer.norm1.norm.weight.as_vec();
    let msg = load_torch(&mut layer, &fixture("mha.safetensors")).unwrap_err().to_string();
    assert!(
        msg.contains("missing: self_attn.in_proj_weight (block 1 of 3) (transposed), for self_attn.w_q.weight"),
        "{msg}"
    );
    assert!(msg.contains("missing: linear1.weight (transposed), for ffn.linear1.weight [16, 32]"), "{msg}");
    assert!(msg.contains("unexpected: in_proj_weight"), "{msg}");
    assert!(msg.contains("unexpected: output.self_causal"), "{msg}");
    assert_eq!(layer.norm1.norm.weight.as_vec(), before, "a failed import leaves the model unchanged");
}

#[test]
fn truncated_and_corrupt_files_are_errors() {
    let dev = Cpu::default();
    let mut mha = dev.build_module::<MultiHeadAttention<16, 4, 4, f32, Cpu>, f32>();
    let bytes = std::fs::read(fixture("mha.safetensors")).unwrap();
    let dir = std::env::temp_dir();
    for (name, contents) in [
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("garbage", b"this is not a safetensors file at all".to_vec()),
    ] {
        let path = dir.join(format!("typeformer-{name}-{}.safetensors", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        let err = load_torch(&mut mha, &path).unwrap_err();
        assert!(matches!(err, Error::BadFile { .. }), "{name}: {err}");
        std::fs::remove_file(path).unwrap();
    }
    let err = load_torch(&mut mha, Path::new("/nonexistent/weights.safetensors")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/weights.safetensors"), "{err}");
}

#[test]
fn half_precision_checkpoints_load() {
    let dev = Cpu::default();
    let t = tensors("mha.safetensors");
    let mut shapes = HashMap::new();
    shapes.insert("in_proj_weight", vec![48, 16]);
    shapes.insert("in_proj_bias", vec![48]);
    shapes.insert("out_proj.weight", vec![16, 16]);
    shapes.insert("out_proj.bias", vec![16]);
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
        .iter()
        .map(|(n, s)| {
            (n.to_string(), s.clone(), t[*n].iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect())
        })
        .collect();
    let views: Vec<_> = data
        .iter()
        .map(|(n, s, b)| {
            (n.as_str(), ::safetensors::tensor::TensorView::new(::safetensors::Dtype::BF16, s.clone(), b).unwrap())
        })
        .collect();
    let path = std::env::temp_dir().join(format!("typeformer-bf16-{}.safetensors", std::process::id()));
    std::fs::write(&path, ::safetensors::serialize(views, &None).unwrap()).unwrap();
    let mut mha = dev.build_module::<MultiHeadAttention<16, 4, 4, f32, Cpu>, f32>();
    load_torch(&mut mha, &path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let expected: Vec<f32> =
        transposed(block(&t["in_proj_weight"], 0, 3), 16).iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect();
    assert_eq!(mha.w_q.weight.as_vec(), expected);
}

#[test]
fn a_tensor_of_the_wrong_dtype_is_reported_by_name() {
    let t = tensors("mha.safetensors");
    let ints: Vec<u8> = t["in_proj_weight"].iter().flat_map(|&v| (v as i32).to_le_bytes()).collect();
    let floats = |name: &str| -> Vec<u8> { t[name].iter().flat_map(|v| v.to_le_bytes()).collect() };
    let (bias, out_w, out_b) = (floats("in_proj_bias"), floats("out_proj.weight"), floats("out_proj.bias"));
    let views = vec![
        (
            "in_proj_weight",
            ::safetensors::tensor::TensorView::new(::safetensors::Dtype::I32, vec![48, 16], &ints).unwrap(),
        ),
        ("in_proj_bias", ::safetensors::tensor::TensorView::new(::safetensors::Dtype::F32, vec![48], &bias).unwrap()),
        (
            "out_proj.weight",
            ::safetensors::tensor::TensorView::new(::safetensors::Dtype::F32, vec![16, 16], &out_w).unwrap(),
        ),
        ("out_proj.bias", ::safetensors::tensor::TensorView::new(::safetensors::Dtype::F32, vec![16], &out_b).unwrap()),
    ];
    let path = std::env::temp_dir().join(format!("typeformer-i32-{}.safetensors", std::process::id()));
    std::fs::write(&path, ::safetensors::serialize(views, &None).unwrap()).unwrap();
    let mut mha = Cpu::default().build_module::<MultiHeadAttention<16, 4, 4, f32, Cpu>, f32>();
    let msg = load_torch(&mut mha, &path).unwrap_err().to_string();
    std::fs::remove_file(&path).unwrap();
    assert!(msg.contains("wrong dtype: in_proj_weight is I32 in the file, expected F32, F64, F16 or BF16"), "{msg}");
}
