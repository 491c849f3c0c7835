//! The decoder on corrupted copies of the real GGUF models. Each copy changes one
//! metadata value or tensor type in memory, and loading it must fail with an
//! error that names the value.

mod model_support;

use attend_models::gguf::{Gguf, GgufError, GgufWriter};
use attend_models::{Decoder, GgmlType, ModelError};
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
