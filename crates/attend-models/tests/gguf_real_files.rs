//! The reader against the project's real GGUF files, checked against the
//! fixture that `scripts/reference/gguf_metadata.py` writes with the `gguf`
//! Python package.

use std::path::PathBuf;

use attend_models::gguf::{Gguf, MetadataValue};
use serde_json::Value;

const FIXTURE: &str = include_str!("fixtures/gguf_models.json");

fn models_dir() -> PathBuf {
    match std::env::var_os("ATTEND_MODELS") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME").expect("HOME is not set; set ATTEND_MODELS");
            PathBuf::from(home).join(".cache/attend/models")
        }
    }
}

fn open_model(file: &str) -> Gguf {
    let path = models_dir().join(file);
    assert!(
        path.is_file(),
        "model file {} not found; run scripts/fetch-models.sh (or set ATTEND_MODELS)",
        path.display()
    );
    Gguf::open(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn fixture_model(file: &str) -> Value {
    let fixture: Value = serde_json::from_str(FIXTURE).expect("fixture is valid JSON");
    fixture["models"]
        .as_array()
        .expect("fixture has a models array")
        .iter()
        .find(|model| model["file"] == file)
        .unwrap_or_else(|| panic!("fixture has no entry for {file}"))
        .clone()
}

/// Checks that a scalar metadata value equals the fixture's, type included.
fn assert_scalar_matches(key: &str, value: MetadataValue<'_>, expected: &Value) {
    let expected_type = expected["type"].as_str().unwrap();
    assert_eq!(value.value_type().name(), expected_type, "type of {key}");
    let expected = &expected["value"];
    match value {
        MetadataValue::String(s) => assert_eq!(s, expected.as_str().unwrap(), "{key}"),
        MetadataValue::Bool(b) => assert_eq!(b, expected.as_bool().unwrap(), "{key}"),
        // The fixture stores f32 widened to f64, which is exact.
        MetadataValue::F32(f) => assert_eq!(f as f64, expected.as_f64().unwrap(), "{key}"),
        MetadataValue::F64(f) => assert_eq!(f, expected.as_f64().unwrap(), "{key}"),
        other => {
            let int = other
                .as_integer()
                .unwrap_or_else(|| panic!("{key}: {other:?}"));
            assert_eq!(int, expected.as_i64().unwrap() as i128, "{key}");
        }
    }
}

/// Checks an array's type, length and the elements the fixture keeps from
/// each end.
fn assert_array_matches(gguf: &Gguf, key: &str, expected: &Value) {
    let array = gguf.get_array(key).unwrap();
    let len = expected["len"].as_u64().unwrap() as usize;
    assert_eq!(array.len(), len, "length of {key}");
    assert_eq!(
        array.elem_type().name(),
        expected["elem_type"].as_str().unwrap(),
        "element type of {key}"
    );

    let items: Vec<Value> = match array.elem_type().name() {
        "string" => gguf
            .get_str_array(key)
            .unwrap()
            .into_iter()
            .map(Value::from)
            .collect(),
        "f32" => gguf
            .get_f32_array(key)
            .unwrap()
            .into_iter()
            .map(|f| Value::from(f as f64))
            .collect(),
        "i32" => gguf
            .get_i32_array(key)
            .unwrap()
            .into_iter()
            .map(Value::from)
            .collect(),
        other => {
            panic!("{key}: the fixture has an array of {other}, which this test does not read")
        }
    };
    assert_eq!(items.len(), len, "{key}");

    let head = expected["head"].as_array().unwrap();
    assert_eq!(
        &items[..head.len()],
        head.as_slice(),
        "first elements of {key}"
    );
    let tail = expected["tail"].as_array().unwrap();
    assert_eq!(
        &items[len - tail.len()..],
        tail.as_slice(),
        "last elements of {key}"
    );
}

fn check_against_fixture(file: &str) {
    let gguf = open_model(file);
    let expected = fixture_model(file);

    assert_eq!(
        gguf.bytes().len() as u64,
        expected["file_bytes"].as_u64().unwrap()
    );
    assert_eq!(gguf.version() as u64, expected["version"].as_u64().unwrap());
    assert_eq!(
        gguf.alignment() as u64,
        expected["alignment"].as_u64().unwrap()
    );
    assert_eq!(
        gguf.data_offset() as u64,
        expected["data_offset"].as_u64().unwrap()
    );

    let scalars = expected["metadata"].as_object().unwrap();
    let arrays = expected["arrays"].as_object().unwrap();
    assert_eq!(gguf.metadata_len(), scalars.len() + arrays.len());
    for (key, expected_value) in scalars {
        let value = gguf.get(key).unwrap();
        assert_scalar_matches(key, value, expected_value);
    }
    for (key, expected_array) in arrays {
        assert_array_matches(&gguf, key, expected_array);
    }

    let expected_tensors = expected["tensors"].as_array().unwrap();
    assert_eq!(gguf.tensors().len(), expected_tensors.len());
    for (info, expected) in gguf.tensors().iter().zip(expected_tensors) {
        let name = info.name();
        assert_eq!(name, expected["name"].as_str().unwrap());
        assert_eq!(
            info.ggml_type().name(),
            expected["type"].as_str().unwrap(),
            "{name}"
        );
        let dims: Vec<usize> = expected["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(info.dims(), dims.as_slice(), "{name}");
        assert_eq!(
            info.offset() as u64,
            expected["offset"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            info.size_bytes() as u64,
            expected["size_bytes"].as_u64().unwrap(),
            "{name}"
        );

        let tensor = gguf.tensor(name).unwrap();
        assert_eq!(tensor.data().len(), info.size_bytes(), "{name}");
        assert_eq!(
            tensor.rows() * tensor.row_bytes(),
            info.size_bytes(),
            "{name}"
        );
        let start = tensor.data().as_ptr() as usize - gguf.bytes().as_ptr() as usize;
        assert_eq!(start, gguf.data_offset() + info.offset(), "{name}");
    }
}

#[test]
fn smollm2_matches_reference() {
    check_against_fixture("SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
fn gemma3_matches_reference() {
    check_against_fixture("gemma-3-270m-q4_k_m.gguf");
}

/// The getters the model and tokenizer code use, on the values they need.
#[test]
fn smollm2_hyperparameters() {
    let gguf = open_model("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(gguf.architecture().unwrap(), "llama");
    assert_eq!(
        gguf.get_integer::<usize>("llama.context_length").unwrap(),
        8192
    );
    assert_eq!(gguf.get_integer::<usize>("llama.block_count").unwrap(), 30);
    assert_eq!(
        gguf.get_integer::<usize>("llama.embedding_length").unwrap(),
        576
    );
    assert_eq!(gguf.get_u32("llama.attention.head_count").unwrap(), 9);
    assert_eq!(gguf.get_u32("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(gguf.get_f32("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(
        gguf.get_f32("llama.attention.layer_norm_rms_epsilon")
            .unwrap(),
        1e-5
    );
    assert_eq!(gguf.get_u32("tokenizer.ggml.bos_token_id").unwrap(), 1);
    assert_eq!(gguf.get_u32("tokenizer.ggml.eos_token_id").unwrap(), 2);
    assert_eq!(gguf.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(gguf.get_str("tokenizer.ggml.pre").unwrap(), "smollm");
    assert_eq!(
        gguf.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        49152
    );
    assert_eq!(
        gguf.get_str_array("tokenizer.ggml.merges").unwrap().len(),
        48900
    );

    let embed = gguf.tensor("token_embd.weight").unwrap();
    assert_eq!((embed.cols(), embed.rows()), (576, 49152));
}

#[test]
fn gemma3_hyperparameters() {
    let gguf = open_model("gemma-3-270m-q4_k_m.gguf");
    assert_eq!(gguf.architecture().unwrap(), "gemma3");
    assert_eq!(
        gguf.get_integer::<usize>("gemma3.context_length").unwrap(),
        32768
    );
    assert_eq!(gguf.get_integer::<usize>("gemma3.block_count").unwrap(), 18);
    assert_eq!(
        gguf.get_integer::<usize>("gemma3.embedding_length")
            .unwrap(),
        640
    );
    assert_eq!(gguf.get_u32("gemma3.attention.head_count").unwrap(), 4);
    assert_eq!(gguf.get_u32("gemma3.attention.head_count_kv").unwrap(), 1);
    assert_eq!(
        gguf.get_u32("gemma3.attention.sliding_window").unwrap(),
        512
    );
    assert_eq!(gguf.get_f32("gemma3.rope.freq_base").unwrap(), 1_000_000.0);
    assert_eq!(
        gguf.get_f32("gemma3.attention.layer_norm_rms_epsilon")
            .unwrap(),
        1e-6
    );
    assert_eq!(gguf.get_u32("tokenizer.ggml.bos_token_id").unwrap(), 2);
    assert_eq!(gguf.get_u32("tokenizer.ggml.eos_token_id").unwrap(), 1);
    assert_eq!(gguf.get_str("tokenizer.ggml.model").unwrap(), "llama");
    assert_eq!(gguf.get_str("tokenizer.ggml.pre").unwrap(), "default");
    assert_eq!(
        gguf.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        262144
    );
    assert_eq!(
        gguf.get_f32_array("tokenizer.ggml.scores").unwrap().len(),
        262144
    );
    assert_eq!(
        gguf.get_i32_array("tokenizer.ggml.token_type")
            .unwrap()
            .len(),
        262144
    );

    let embed = gguf.tensor("token_embd.weight").unwrap();
    assert_eq!((embed.cols(), embed.rows()), (640, 262144));
}

#[test]
fn summary_of_real_file() {
    let gguf = open_model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let summary = gguf.summary();
    assert!(
        summary.starts_with("GGUF v3, 98362432 bytes, 33 metadata entries, 272 tensors"),
        "{summary}"
    );
    assert!(
        summary.contains("tokenizer.ggml.tokens: array of string = [49152 x string: "),
        "{summary}"
    );
    assert!(
        summary.contains("token_embd.weight Q8_0 [576, 49152] at +0"),
        "{summary}"
    );
}
