//! The BERT encoder on small model folders written by the test: a float64 slow twin
//! of the forward pass, and the errors for bad folders and files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use attend_models::bert::{BertConfig, BertError, BertModel, SentenceEncoder};
use attend_models::linear::LinearKernel;
use attend_models::safetensors_file::{SafetensorsError, SafetensorsFile};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

const VOCAB: usize = 11;
const HIDDEN: usize = 8;
const LAYERS: usize = 2;
const HEADS: usize = 2;
const INTER: usize = 12;
/// More than one query tile of the attention kernel (64), so a long sequence spans two.
const MAX_POSITIONS: usize = 80;
const EPS: f64 = 1e-12;

/// Tolerance of the f32 forward against the f64 twin, per hidden-state component.
/// Hidden states after LayerNorm are O(1), and f32 rounding through two layers with
/// sums of at most 80 terms stays below 2e-6 here (measured), so 1e-5 leaves a
/// margin of 5 while still failing on any wrong operation.
const TWIN_TOLERANCE: f64 = 1e-5;

fn config_json(model_type: &str) -> String {
    format!(
        r#"{{"model_type": "{model_type}", "vocab_size": {VOCAB}, "hidden_size": {HIDDEN},
        "num_hidden_layers": {LAYERS}, "num_attention_heads": {HEADS},
        "intermediate_size": {INTER}, "max_position_embeddings": {MAX_POSITIONS},
        "type_vocab_size": 2, "layer_norm_eps": {EPS:e}, "hidden_act": "gelu"}}"#
    )
}

/// Deterministic values in [-scale, scale) from a 64-bit xorshift.
struct Values(u64);

impl Values {
    fn take(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }
}

/// Returns every tensor of the tiny model, `(name, shape, values)`, in Hugging Face names.
fn tiny_tensors() -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let mut values = Values(0x9e37_79b9_7f4a_7c15);
    let mut tensors = BTreeMap::new();
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n = shape.iter().product();
        let data = values.take(n, scale).iter().map(|v| v + offset).collect();
        tensors.insert(name, (shape, data));
    };
    add(
        "embeddings.word_embeddings.weight".into(),
        vec![VOCAB, HIDDEN],
        1.0,
        0.0,
    );
    add(
        "embeddings.position_embeddings.weight".into(),
        vec![MAX_POSITIONS, HIDDEN],
        0.5,
        0.0,
    );
    add(
        "embeddings.token_type_embeddings.weight".into(),
        vec![2, HIDDEN],
        0.5,
        0.0,
    );
    add("embeddings.LayerNorm.weight".into(), vec![HIDDEN], 0.2, 1.0);
    add("embeddings.LayerNorm.bias".into(), vec![HIDDEN], 0.1, 0.0);
    for layer in 0..LAYERS {
        let name = |suffix: &str| format!("encoder.layer.{layer}.{suffix}");
        for part in ["query", "key", "value"] {
            add(
                name(&format!("attention.self.{part}.weight")),
                vec![HIDDEN, HIDDEN],
                0.6,
                0.0,
            );
            add(
                name(&format!("attention.self.{part}.bias")),
                vec![HIDDEN],
                0.1,
                0.0,
            );
        }
        add(
            name("attention.output.dense.weight"),
            vec![HIDDEN, HIDDEN],
            0.4,
            0.0,
        );
        add(name("attention.output.dense.bias"), vec![HIDDEN], 0.1, 0.0);
        add(
            name("attention.output.LayerNorm.weight"),
            vec![HIDDEN],
            0.2,
            1.0,
        );
        add(
            name("attention.output.LayerNorm.bias"),
            vec![HIDDEN],
            0.1,
            0.0,
        );
        add(
            name("intermediate.dense.weight"),
            vec![INTER, HIDDEN],
            0.5,
            0.0,
        );
        add(name("intermediate.dense.bias"), vec![INTER], 0.1, 0.0);
        add(name("output.dense.weight"), vec![HIDDEN, INTER], 0.3, 0.0);
        add(name("output.dense.bias"), vec![HIDDEN], 0.1, 0.0);
        add(name("output.LayerNorm.weight"), vec![HIDDEN], 0.2, 1.0);
        add(name("output.LayerNorm.bias"), vec![HIDDEN], 0.1, 0.0);
    }
    tensors
}

/// Serializes tensors with the safetensors crate; `dtype_of` picks each one's dtype
/// (F32 values, or F16 zeros of the same shape).
fn safetensors_bytes(
    tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    dtype_of: impl Fn(&str) -> Dtype,
) -> Vec<u8> {
    let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, (shape, data))| {
            let dtype = dtype_of(name);
            let raw = match dtype {
                Dtype::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                _ => vec![0u8; data.len() * dtype.bitsize() / 8],
            };
            (name.clone(), dtype, shape.clone(), raw)
        })
        .collect();
    let views = bytes.iter().map(|(name, dtype, shape, raw)| {
        (
            name.as_str(),
            TensorView::new(*dtype, shape.clone(), raw).unwrap(),
        )
    });
    safetensors::serialize(views, None).unwrap()
}

/// Returns the JSON of a WordLevel tokenizer over `[UNK] [CLS] [SEP] a b c ...` with BERT's template;
/// `extra` adds words whose ids may lie past the model's vocabulary.
fn tokenizer_json(extra: &[(&str, u32)]) -> String {
    let mut vocab = serde_json::json!({"[UNK]": 0, "[CLS]": 1, "[SEP]": 2});
    for (i, word) in ["a", "b", "c", "d", "e", "f", "g", "h"].iter().enumerate() {
        vocab[word] = serde_json::json!(i + 3);
    }
    for (word, id) in extra {
        vocab[word] = serde_json::json!(id);
    }
    let special =
        |name: &str, id: u32| serde_json::json!({"id": name, "ids": [id], "tokens": [name]});
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 0}}
            ],
            "pair": [
                {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 1}}
            ],
            "special_tokens": {"[CLS]": special("[CLS]", 1), "[SEP]": special("[SEP]", 2)}
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    })
    .to_string()
}

/// Creates a fresh, empty folder under the target directory's temporary space.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("minilm_crafted_{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a complete tiny sentence-transformers folder and returns its path.
fn write_folder(name: &str, weights: &[u8], tokenizer: &str) -> PathBuf {
    let dir = scratch_dir(name);
    std::fs::write(dir.join("config.json"), config_json("bert")).unwrap();
    std::fs::write(dir.join("model.safetensors"), weights).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer).unwrap();
    std::fs::write(
        dir.join("sentence_bert_config.json"),
        r#"{"max_seq_length": 16}"#,
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    std::fs::write(
        dir.join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 8, "pooling_mode_mean_tokens": true}"#,
    )
    .unwrap();
    dir
}

fn good_weights() -> Vec<u8> {
    safetensors_bytes(&tiny_tensors(), |_| Dtype::F32)
}

fn load_error(dir: &Path) -> BertError {
    SentenceEncoder::load(dir).expect_err("the folder is invalid")
}

// ---------------------------------------------------------------------------------
// The float64 slow twin: Hugging Face BertModel written out for one sequence.

fn erf(x: f64) -> f64 {
    // Maclaurin series; for |x| < 6 the largest term is below e^36 and 120 terms
    // reach 1e-16 relative, and past 6 erf is 1 to f64 precision.
    if x.abs() >= 6.0 {
        return x.signum();
    }
    let mut term = x;
    let mut sum = x;
    for n in 1..120 {
        term *= -x * x / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

fn get(tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>, name: &str) -> Vec<f64> {
    tensors[name].1.iter().map(|&v| f64::from(v)).collect()
}

fn layer_norm_f64(x: &mut [f64], weight: &[f64], bias: &[f64]) {
    for row in x.chunks_mut(weight.len()) {
        let mean = row.iter().sum::<f64>() / row.len() as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / row.len() as f64;
        for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
            *v = (*v - mean) / (var + EPS).sqrt() * w + b;
        }
    }
}

/// `x · weight^T + bias` for `x: [rows, in_dim]`, `weight: [out_dim, in_dim]`.
fn linear_f64(x: &[f64], in_dim: usize, weight: &[f64], bias: &[f64]) -> Vec<f64> {
    let out_dim = bias.len();
    let mut out = Vec::with_capacity(x.len() / in_dim * out_dim);
    for row in x.chunks(in_dim) {
        for (o, b) in bias.iter().enumerate() {
            let w = &weight[o * in_dim..(o + 1) * in_dim];
            out.push(row.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() + b);
        }
    }
    out
}

/// Last hidden states of one sequence, `[ids.len(), HIDDEN]`.
fn twin_forward(tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>, ids: &[u32]) -> Vec<f64> {
    let word = get(tensors, "embeddings.word_embeddings.weight");
    let pos = get(tensors, "embeddings.position_embeddings.weight");
    let token_type = get(tensors, "embeddings.token_type_embeddings.weight");
    let mut x = Vec::new();
    for (p, &id) in ids.iter().enumerate() {
        for d in 0..HIDDEN {
            x.push(word[id as usize * HIDDEN + d] + token_type[d] + pos[p * HIDDEN + d]);
        }
    }
    layer_norm_f64(
        &mut x,
        &get(tensors, "embeddings.LayerNorm.weight"),
        &get(tensors, "embeddings.LayerNorm.bias"),
    );

    let len = ids.len();
    let head_dim = HIDDEN / HEADS;
    for layer in 0..LAYERS {
        let t = |suffix: &str| get(tensors, &format!("encoder.layer.{layer}.{suffix}"));
        let q = linear_f64(
            &x,
            HIDDEN,
            &t("attention.self.query.weight"),
            &t("attention.self.query.bias"),
        );
        let k = linear_f64(
            &x,
            HIDDEN,
            &t("attention.self.key.weight"),
            &t("attention.self.key.bias"),
        );
        let v = linear_f64(
            &x,
            HIDDEN,
            &t("attention.self.value.weight"),
            &t("attention.self.value.bias"),
        );
        let mut context = vec![0.0; len * HIDDEN];
        for h in 0..HEADS {
            for i in 0..len {
                let qi = &q[i * HIDDEN + h * head_dim..][..head_dim];
                let scores: Vec<f64> = (0..len)
                    .map(|j| {
                        let kj = &k[j * HIDDEN + h * head_dim..][..head_dim];
                        qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>()
                            / (head_dim as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for (j, w) in weights.iter().enumerate() {
                    for d in 0..head_dim {
                        context[i * HIDDEN + h * head_dim + d] +=
                            w / total * v[j * HIDDEN + h * head_dim + d];
                    }
                }
            }
        }
        let attn = linear_f64(
            &context,
            HIDDEN,
            &t("attention.output.dense.weight"),
            &t("attention.output.dense.bias"),
        );
        x.iter_mut().zip(&attn).for_each(|(a, b)| *a += b);
        layer_norm_f64(
            &mut x,
            &t("attention.output.LayerNorm.weight"),
            &t("attention.output.LayerNorm.bias"),
        );

        let mut up = linear_f64(
            &x,
            HIDDEN,
            &t("intermediate.dense.weight"),
            &t("intermediate.dense.bias"),
        );
        up.iter_mut()
            .for_each(|v| *v = 0.5 * *v * (1.0 + erf(*v / std::f64::consts::SQRT_2)));
        let down = linear_f64(
            &up,
            INTER,
            &t("output.dense.weight"),
            &t("output.dense.bias"),
        );
        x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
        layer_norm_f64(
            &mut x,
            &t("output.LayerNorm.weight"),
            &t("output.LayerNorm.bias"),
        );
    }
    x
}

/// Mean over the rows, then L2 normalisation.
fn twin_pool(hidden_states: &[f64]) -> Vec<f64> {
    let rows = hidden_states.len() / HIDDEN;
    let mut mean = [0.0; HIDDEN];
    for row in hidden_states.chunks(HIDDEN) {
        mean.iter_mut()
            .zip(row)
            .for_each(|(m, v)| *m += v / rows as f64);
    }
    let norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
    mean.iter().map(|v| v / norm).collect()
}

fn tiny_model(dir_name: &str) -> BertModel {
    tiny_model_on(dir_name, None)
}

fn tiny_model_on(dir_name: &str, kernel: Option<LinearKernel>) -> BertModel {
    let dir = scratch_dir(dir_name);
    let path = dir.join("model.safetensors");
    std::fs::write(&path, good_weights()).unwrap();
    std::fs::write(dir.join("config.json"), config_json("bert")).unwrap();
    let config = BertConfig::load(&dir.join("config.json")).unwrap();
    BertModel::load(config, &SafetensorsFile::open(&path).unwrap(), kernel).unwrap()
}

#[test]
fn forward_matches_f64_twin() {
    let tensors = tiny_tensors();
    for kernel in [LinearKernel::Gemm, LinearKernel::Avx512] {
        if !kernel.is_available() {
            eprintln!("{kernel:?} is not available on this CPU");
            continue;
        }
        let model = tiny_model_on(&format!("twin_{kernel:?}"), Some(kernel));
        // Lengths 0, 1, 2, 70 (two query tiles) and 5, packed in one call.
        let lengths = [0usize, 1, 2, 70, 5];
        let mut ids = Vec::new();
        let mut cu_seqlens = vec![0];
        for (seq_idx, &len) in lengths.iter().enumerate() {
            ids.extend((0..len).map(|i| ((i * 7 + seq_idx * 3) % VOCAB) as u32));
            cu_seqlens.push(ids.len());
        }
        let hidden_states = model.forward(&ids, &cu_seqlens).unwrap();
        assert_eq!(hidden_states.len(), ids.len() * HIDDEN);

        for (seq_idx, bounds) in cu_seqlens.windows(2).enumerate() {
            let expected = twin_forward(&tensors, &ids[bounds[0]..bounds[1]]);
            let got = &hidden_states[bounds[0] * HIDDEN..bounds[1] * HIDDEN];
            for (idx, (&g, &e)) in got.iter().zip(&expected).enumerate() {
                assert!(
                    (f64::from(g) - e).abs() <= TWIN_TOLERANCE,
                    "{kernel:?}: sequence {seq_idx}, token {}, dim {}: {g} against twin {e}",
                    idx / HIDDEN,
                    idx % HIDDEN
                );
            }
        }
    }
}

#[test]
fn encoder_matches_twin_pooling() {
    let dir = write_folder("encoder", &good_weights(), &tokenizer_json(&[]));
    let encoder = SentenceEncoder::load(&dir).unwrap();
    assert_eq!(
        encoder.max_tokens(),
        16,
        "max_seq_length from sentence_bert_config.json"
    );
    let texts = ["a b c", "", "h g f e d c b a a b c d e f g h"];
    let embeddings = encoder.embed(&texts).unwrap();
    let tensors = tiny_tensors();
    for (text, embedding) in texts.iter().zip(&embeddings) {
        let tokens = encoder.tokenize(text).unwrap();
        assert!(tokens.ids.len() <= 16);
        let expected = twin_pool(&twin_forward(&tensors, &tokens.ids));
        for (dim_idx, (&g, &e)) in embedding.iter().zip(&expected).enumerate() {
            assert!(
                (f64::from(g) - e).abs() <= TWIN_TOLERANCE,
                "`{text}` dim {dim_idx}: {g} against twin {e}"
            );
        }
    }
    let long = encoder.tokenize(texts[2]).unwrap();
    assert!(long.truncated, "18 tokens truncated to 16");
    assert_eq!(long.ids.len(), 16);
    assert_eq!(long.ids[15], 2, "[SEP] stays last");
}

#[test]
fn folder_without_config_rejected() {
    let dir = write_folder("no_config", &good_weights(), &tokenizer_json(&[]));
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let err = load_error(&dir);
    assert!(
        matches!(&err, BertError::MissingFile { path } if path.ends_with("config.json")),
        "{err}"
    );
    assert!(err.to_string().contains("config.json"), "{err}");
}

#[test]
fn missing_tensor_rejected() {
    let mut tensors = tiny_tensors();
    tensors.remove("encoder.layer.1.output.dense.bias");
    let dir = write_folder(
        "missing_tensor",
        &safetensors_bytes(&tensors, |_| Dtype::F32),
        &tokenizer_json(&[]),
    );
    let err = load_error(&dir);
    assert!(
        matches!(&err, BertError::Weights(SafetensorsError::MissingTensor { name, .. }) if name == "encoder.layer.1.output.dense.bias"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("encoder.layer.1.output.dense.bias"),
        "{err}"
    );
}

#[test]
fn misshapen_tensor_rejected() {
    let mut tensors = tiny_tensors();
    let name = "encoder.layer.0.intermediate.dense.weight";
    tensors.insert(
        name.to_string(),
        (vec![HIDDEN, INTER], vec![0.0; HIDDEN * INTER]),
    );
    let dir = write_folder(
        "misshapen",
        &safetensors_bytes(&tensors, |_| Dtype::F32),
        &tokenizer_json(&[]),
    );
    let err = load_error(&dir);
    match &err {
        BertError::Weights(SafetensorsError::WrongShape {
            name: found_name,
            expected,
            found,
            ..
        }) => {
            assert_eq!(found_name, name);
            assert_eq!(expected, &vec![INTER, HIDDEN]);
            assert_eq!(found, &vec![HIDDEN, INTER]);
        }
        other => panic!("expected WrongShape, got {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("[12, 8]") && message.contains("[8, 12]"),
        "{message}"
    );
}

#[test]
fn wrong_dtype_rejected() {
    let name = "embeddings.LayerNorm.bias";
    let bytes = safetensors_bytes(&tiny_tensors(), |n| {
        if n == name {
            Dtype::F16
        } else {
            Dtype::F32
        }
    });
    let dir = write_folder("dtype", &bytes, &tokenizer_json(&[]));
    let err = load_error(&dir);
    assert!(
        matches!(&err, BertError::Weights(SafetensorsError::WrongDtype { name: n, found: Dtype::F16, .. }) if n == name),
        "{err}"
    );
}

#[test]
fn truncated_safetensors_rejected() {
    let bytes = good_weights();
    let dir = write_folder("cut", &bytes[..bytes.len() - 4], &tokenizer_json(&[]));
    let err = load_error(&dir);
    assert!(
        matches!(&err, BertError::Weights(SafetensorsError::Header { .. })),
        "{err}"
    );
    // A file shorter than the 8-byte header length.
    std::fs::write(dir.join("model.safetensors"), b"abc").unwrap();
    let err = load_error(&dir);
    assert!(
        matches!(&err, BertError::Weights(SafetensorsError::Header { .. })),
        "{err}"
    );
}

#[test]
fn gguf_file_rejected() {
    let dir = scratch_dir("gguf");
    let file = dir.join("model.gguf");
    // GGUF magic, version 3, zero tensors and zero metadata entries.
    let mut header = b"GGUF".to_vec();
    header.extend(3u32.to_le_bytes());
    header.extend(0u64.to_le_bytes());
    header.extend(0u64.to_le_bytes());
    std::fs::write(&file, &header).unwrap();
    let err = load_error(&file);
    assert!(
        matches!(&err, BertError::GgufGiven { path } if path == &file),
        "{err}"
    );
    assert!(err.to_string().contains("GGUF"), "{err}");

    // The same bytes under the safetensors name inside a folder.
    let folder = write_folder("gguf_in_folder", &header, &tokenizer_json(&[]));
    let err = load_error(&folder);
    assert!(matches!(&err, BertError::GgufGiven { .. }), "{err}");
}

#[test]
fn other_architecture_rejected() {
    let dir = write_folder("llama", &good_weights(), &tokenizer_json(&[]));
    std::fs::write(dir.join("config.json"), config_json("llama")).unwrap();
    let err = load_error(&dir);
    assert!(
        matches!(
            &err,
            BertError::ConfigValue {
                field: "model_type",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("llama"), "{err}");
}

#[test]
fn token_outside_vocabulary_rejected() {
    let dir = write_folder(
        "vocab",
        &good_weights(),
        &tokenizer_json(&[("zebra", VOCAB as u32)]),
    );
    let encoder = SentenceEncoder::load(&dir).unwrap();
    let err = encoder.embed(&["a zebra"]).unwrap_err();
    assert!(
        matches!(err, BertError::TokenOutOfRange { id, vocab_size: VOCAB } if id == VOCAB as u32),
        "{err}"
    );
}

#[test]
fn invalid_offsets_rejected() {
    let model = tiny_model("offsets");
    let ids = [1u32, 2, 3];
    for cu_seqlens in [vec![], vec![1, 3], vec![0, 2], vec![0, 2, 1, 3], vec![0, 4]] {
        let err = model.forward(&ids, &cu_seqlens).unwrap_err();
        assert!(
            matches!(err, BertError::InvalidOffsets { .. }),
            "{cu_seqlens:?}: {err}"
        );
    }
    assert!(model.forward(&[], &[0]).unwrap().is_empty());
}

#[test]
fn sequence_longer_than_positions_rejected() {
    let model = tiny_model("positions");
    let ids = vec![3u32; MAX_POSITIONS + 1];
    let err = model.forward(&ids, &[0, ids.len()]).unwrap_err();
    assert!(
        matches!(err, BertError::MaxTokens { requested, .. } if requested == MAX_POSITIONS + 1),
        "{err}"
    );
}

#[test]
fn layer_count_off_the_weights_rejected() {
    // 4e9 layers would allocate terabytes, and u64::MAX overflows a capacity, so
    // the count must be checked against the weights before anything is allocated.
    for layers in [
        "4000000000".to_string(),
        u64::MAX.to_string(),
        (LAYERS + 1).to_string(),
        (LAYERS - 1).to_string(),
    ] {
        let dir = write_folder("layer_count", &good_weights(), &tokenizer_json(&[]));
        let config = config_json("bert").replace(
            &format!("\"num_hidden_layers\": {LAYERS}"),
            &format!("\"num_hidden_layers\": {layers}"),
        );
        std::fs::write(dir.join("config.json"), config).unwrap();
        let err = load_error(&dir);
        assert!(
            matches!(
                err,
                BertError::LayerCount {
                    layers_in_file: LAYERS,
                    ..
                }
            ),
            "{layers}: {err}"
        );
        assert!(err.to_string().contains("num_hidden_layers"), "{err}");
        assert!(err.to_string().contains(&layers), "{err}");
    }
}

#[test]
fn nan_embedding_rejected() {
    let mut tensors = tiny_tensors();
    tensors
        .get_mut("embeddings.LayerNorm.weight")
        .expect("the tiny model has an embedding LayerNorm")
        .1[0] = f32::NAN;
    let weights = safetensors_bytes(&tensors, |_| Dtype::F32);
    let dir = write_folder("nan_embedding", &weights, &tokenizer_json(&[]));
    let encoder = SentenceEncoder::load(&dir).unwrap();
    let err = encoder.embed(&["a b", "c"]).unwrap_err();
    assert!(
        matches!(err, BertError::NonFiniteEmbedding { index: 0 }),
        "{err}"
    );
    assert!(err.to_string().contains("input 0"), "{err}");
}
