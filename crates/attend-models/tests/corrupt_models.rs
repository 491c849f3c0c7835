//! The decoder and engine on corrupted copies of the real GGUF models. Each copy
//! changes one metadata value, tensor type or tensor's data, in memory or in a
//! file under the target directory's temporary space. Loading or running it must
//! fail with an error that names the value.

mod model_support;

use std::path::PathBuf;

use attend_models::gguf::{Gguf, GgufError, GgufWriter};
use attend_models::{Decoder, Engine, GenerateParams, GgmlType, ModelError};
use model_support::model_path;

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";

fn model_bytes(file: &str) -> Vec<u8> {
    std::fs::read(model_path(file)).unwrap()
}

/// Finds the metadata key or tensor name `name`, stored after its u64 length in
/// the header, and returns the offset of the field that follows it.
fn after_string(bytes: &[u8], name: &str) -> usize {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name.as_bytes());
    let start = bytes
        .windows(needle.len())
        .position(|window| window == needle)
        .unwrap_or_else(|| panic!("{name} is not in the file"));
    start + needle.len()
}

/// Overwrites the u32 value of metadata `key`.
fn set_u32(bytes: &mut [u8], key: &str, value: u32) {
    let type_at = after_string(bytes, key);
    assert_eq!(
        bytes[type_at..type_at + 4],
        4u32.to_le_bytes(),
        "{key} is a u32"
    );
    bytes[type_at + 4..type_at + 8].copy_from_slice(&value.to_le_bytes());
}

/// Overwrites the ggml type id of tensor `name` in the tensor table.
fn set_tensor_type(bytes: &mut [u8], name: &str, ty: GgmlType) {
    let n_dims_at = after_string(bytes, name);
    let n_dims = u32::from_le_bytes(bytes[n_dims_at..n_dims_at + 4].try_into().unwrap());
    let type_at = n_dims_at + 4 + 8 * n_dims as usize;
    bytes[type_at..type_at + 4].copy_from_slice(&ty.id().to_le_bytes());
}

/// Loads a decoder from `bytes` held in memory, as [`Decoder::open`] does from a path.
fn load(bytes: Vec<u8>) -> Result<Decoder, ModelError> {
    let file = Gguf::from_bytes(bytes)?;
    let config = match file.architecture()? {
        "llama" => attend_models::llama::config(&file)?,
        "gemma3" => attend_models::gemma3::config(&file)?,
        other => panic!("unexpected architecture {other}"),
    };
    Decoder::load(file, config)
}

/// Copies `source` through the writer, replacing the data of the tensors that
/// `replace` returns a type and bytes for, so the copy stays packed.
fn rebuild(
    source: &Gguf,
    replace: impl Fn(&str) -> Option<(GgmlType, Vec<u8>)>,
    edit_metadata: impl FnOnce(&mut GgufWriter),
) -> Vec<u8> {
    let mut writer = GgufWriter::new();
    for (key, value) in source.metadata() {
        writer.set_value(key, value);
    }
    edit_metadata(&mut writer);
    for tensor in source.tensor_refs() {
        match replace(tensor.name()) {
            Some((ty, data)) => writer.add_tensor(tensor.name(), tensor.dims(), ty, &data),
            None => writer.add_tensor(
                tensor.name(),
                tensor.dims(),
                tensor.ggml_type(),
                tensor.data(),
            ),
        }
        .unwrap();
    }
    writer.to_bytes()
}

/// Writes `bytes` to a file named `name` under the target's temporary space.
fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("corrupt_models");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn assert_invalid_config(result: Result<Decoder, ModelError>, expected_key: &str, value: &str) {
    let err = result.err().expect("the corrupted file should be rejected");
    assert!(
        matches!(&err, ModelError::InvalidConfig { key, value: found, .. }
            if key == expected_key && found == value),
        "{err}"
    );
}

#[test]
fn block_count_off_the_tensors_rejected() {
    let source = model_bytes(SMOLLM2);
    // 0xFF00001E layers would allocate about 100 GB of layer settings.
    for n_layers in [0xFF00_001E, 31, 29] {
        let mut bytes = source.clone();
        set_u32(&mut bytes, "llama.block_count", n_layers);
        assert_invalid_config(load(bytes), "llama.block_count", &n_layers.to_string());
    }
    let mut bytes = model_bytes(GEMMA3);
    set_u32(&mut bytes, "gemma3.block_count", 0xFF00_0012);
    assert_invalid_config(
        load(bytes),
        "gemma3.block_count",
        &0xFF00_0012u32.to_string(),
    );
}

#[test]
fn rope_metadata_rejected_at_load() {
    // A rotary dimension of 0 used to pass loading and fail at the first session,
    // where the message blamed the context length.
    let mut bytes = model_bytes(SMOLLM2);
    set_u32(&mut bytes, "llama.rope.dimension_count", 0);
    let err = load(bytes)
        .err()
        .expect("rotary dimension 0 should be rejected");
    assert!(
        matches!(err, ModelError::RopeMetadata(_)) && err.to_string().contains("RoPE metadata"),
        "{err}"
    );
}

#[test]
fn value_length_off_head_dim_rejected() {
    let mut bytes = model_bytes(GEMMA3);
    set_u32(&mut bytes, "gemma3.attention.value_length", 128);
    assert_invalid_config(load(bytes), "gemma3.attention.value_length", "128");
}

#[test]
fn flipped_tensor_type_rejected() {
    let source = model_bytes(SMOLLM2);
    for (name, ty) in [
        ("blk.0.attn_norm.weight", GgmlType::Q5_0),
        ("blk.23.attn_q.weight", GgmlType::Q4_0),
    ] {
        let mut bytes = source.clone();
        set_tensor_type(&mut bytes, name, ty);
        let err = Gguf::from_bytes(bytes).unwrap_err();
        // The changed size moves the expected offset of the tensor after it.
        assert!(
            matches!(err, GgufError::UnpackedTensor { .. }),
            "{name} as {ty}: {err}"
        );
    }
}

#[test]
fn quantized_norm_rejected() {
    let source = Gguf::open(model_path(SMOLLM2)).unwrap();
    // The 576 values of the output norm as Q8_0: 18 blocks of 34 bytes.
    let bytes = rebuild(
        &source,
        |name| (name == "output_norm.weight").then(|| (GgmlType::Q8_0, vec![0; 18 * 34])),
        |_| {},
    );
    let err = load(bytes)
        .err()
        .expect("a quantized norm should be rejected");
    assert!(
        matches!(&err, ModelError::TensorType { name, ty: GgmlType::Q8_0, .. }
            if name == "output_norm.weight"),
        "{err}"
    );
}

#[test]
fn token_list_off_the_vocabulary_rejected() {
    let source = Gguf::open(model_path(SMOLLM2)).unwrap();
    // One token more than token_embd.weight has rows. The arrays that run parallel
    // to the token list get an entry too, so that the tokenizer accepts the list.
    let mut tokens = source.get_str_array("tokenizer.ggml.tokens").unwrap();
    tokens.push("<extra>");
    let mut token_types = source.get_i32_array("tokenizer.ggml.token_type").ok();
    let mut scores = source.get_f32_array("tokenizer.ggml.scores").ok();
    let bytes = rebuild(
        &source,
        |_| None,
        |writer| {
            writer.set_str_array("tokenizer.ggml.tokens", &tokens);
            if let Some(types) = &mut token_types {
                types.push(1);
                writer.set_i32_array("tokenizer.ggml.token_type", types);
            }
            if let Some(scores) = &mut scores {
                scores.push(0.0);
                writer.set_f32_array("tokenizer.ggml.scores", scores);
            }
        },
    );
    let path = scratch_file("long_token_list.gguf", &bytes);
    let err = Engine::open(&path)
        .err()
        .expect("a token list longer than the vocabulary should be rejected");
    assert!(
        matches!(&err, ModelError::InvalidConfig { key, value, .. }
            if key == "tokenizer.ggml.tokens" && value == "49153 tokens"),
        "{err}"
    );
}

#[test]
fn nan_output_norm_fails_perplexity_and_generation() {
    let mut bytes = model_bytes(SMOLLM2);
    let (start, len) = {
        let file = Gguf::from_bytes(bytes.clone()).unwrap();
        let norm = file.tensor_info("output_norm.weight").unwrap();
        assert_eq!(norm.ggml_type(), GgmlType::F32);
        (file.data_offset() + norm.offset(), norm.size_bytes())
    };
    for value in bytes[start..start + len].chunks_exact_mut(4) {
        value.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    let path = scratch_file("nan_output_norm.gguf", &bytes);
    let engine = Engine::open(&path).unwrap();
    let tokens = engine.encode(&"The sky is blue. ".repeat(4)).unwrap();

    let ctx = tokens.len() / 2;
    let err = engine.perplexity(&tokens, ctx, |_, _| {}).unwrap_err();
    // The first scored row is the one after the first half of the first chunk.
    assert!(
        matches!(err, ModelError::NonFiniteLogits { token_idx, value } if token_idx == ctx / 2 && value.is_nan()),
        "{err}"
    );
    assert!(err.to_string().contains("may be corrupt"), "{err}");

    let mut session = engine
        .decoder()
        .new_session(64, attend_models::decoder::DEFAULT_KV_DTYPE)
        .unwrap();
    let params = GenerateParams {
        sampling: Default::default(),
        max_tokens: 4,
        stop_strings: Vec::new(),
    };
    let err = engine
        .generate(&mut session, &tokens[..4], &params, |_| {})
        .unwrap_err();
    assert!(err.to_string().contains("non-finite logit"), "{err}");
    assert!(err.to_string().contains("may be corrupt"), "{err}");
}
