//! Mutation fuzzing of the GGUF reader: bytes of a crafted file and of real
//! model headers are flipped, overwritten, inserted, deleted and cut, and
//! the reader must return `Ok` or `Err` without panicking. Files that still
//! parse are read through every accessor, which must not panic either.
//!
//! The number of cases per seed is proptest's default (256); set
//! `PROPTEST_CASES` for a longer run.

use std::path::PathBuf;
use std::sync::OnceLock;

use attend_models::gguf::{Gguf, GgufWriter, MetadataValue, ValueType};
use attend_models::GgmlType;
use proptest::prelude::*;
use proptest::sample::Index;

/// Bytes of a real file's start that the raw-prefix seed keeps; the cut
/// lands inside the tokenizer's token array.
const REAL_PREFIX_BYTES: usize = 64 * 1024;

/// Elements kept of each metadata array when a real header is shrunk.
const KEPT_ARRAY_ITEMS: usize = 64;

#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    /// Overwrites 8 bytes with a value that is likely to be a boundary of a
    /// count, length or offset.
    SetU64(Index, u64),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let boundary = prop_oneof![
        Just(0u64),
        Just(1),
        Just(31),
        Just(32),
        Just(255),
        Just(u32::MAX as u64),
        Just(u64::MAX),
        Just(u64::MAX / 2),
        Just(1 << 40),
        any::<u64>(),
    ];
    prop_oneof![
        4 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::SetByte(at, byte)),
        2 => (any::<Index>(), boundary).prop_map(|(at, value)| Mutation::SetU64(at, value)),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(at, len)| Mutation::Delete(at, len)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match mutation {
        Mutation::FlipBit(at, bit) => {
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        Mutation::SetByte(at, byte) => {
            let i = at.index(bytes.len());
            bytes[i] = *byte;
        }
        Mutation::SetU64(at, value) => {
            let i = at.index(bytes.len());
            let end = (i + 8).min(bytes.len());
            bytes[i..end].copy_from_slice(&value.to_le_bytes()[..end - i]);
        }
        Mutation::Insert(at, inserted) => {
            let i = at.index(bytes.len() + 1);
            bytes.splice(i..i, inserted.iter().copied());
        }
        Mutation::Delete(at, len) => {
            let i = at.index(bytes.len());
            let end = (i + len).min(bytes.len());
            bytes.drain(i..end);
        }
        Mutation::Truncate(at) => {
            let len = at.index(bytes.len());
            bytes.truncate(len);
        }
    }
}

/// Parses `bytes` and, when that succeeds, reads everything the API offers.
fn parse_and_read_all(bytes: Vec<u8>) {
    let Ok(gguf) = Gguf::from_bytes(bytes) else {
        return;
    };
    let _ = gguf.summary();
    let keys: Vec<String> = gguf.metadata().map(|(key, _)| key.to_owned()).collect();
    for key in &keys {
        let _ = gguf.get_u8(key);
        let _ = gguf.get_u32(key);
        let _ = gguf.get_i64(key);
        let _ = gguf.get_f32(key);
        let _ = gguf.get_f64(key);
        let _ = gguf.get_bool(key);
        let _ = gguf.get_str(key);
        let _ = gguf.get_integer::<usize>(key);
        let _ = gguf.get_integer::<i8>(key);
        let _ = gguf.get_str_array(key);
        let _ = gguf.get_f32_array(key);
        let _ = gguf.get_i32_array(key);
        let _ = gguf.get_integer_array::<u16>(key);
        if let Ok(MetadataValue::Array(array)) = gguf.get(key) {
            assert!(array.iter().count() <= array.len());
        }
    }
    for tensor in gguf.tensor_refs() {
        assert_eq!(tensor.data().len(), tensor.info().size_bytes());
        assert_eq!(tensor.rows() * tensor.row_bytes(), tensor.data().len());
        let found = gguf.tensor(tensor.name()).unwrap();
        assert_eq!(found.info(), tensor.info());
    }
}

/// Builds a small file with metadata of every type, a nested array and
/// three tensors of different types.
fn crafted_seed() -> Vec<u8> {
    let nested_source = Gguf::from_bytes(nested_array_file()).unwrap();
    let nested = nested_source.get("nested").unwrap();

    let mut writer = GgufWriter::new();
    writer.set_value("nested", nested);
    writer
        .set_str("general.architecture", "llama")
        .set_u32("llama.context_length", 2048)
        .set_f32("llama.rope.freq_base", 10000.0)
        .set_bool("tokenizer.ggml.add_bos_token", true)
        .set_value("u8", MetadataValue::U8(7))
        .set_value("i8", MetadataValue::I8(-7))
        .set_value("u16", MetadataValue::U16(7))
        .set_value("i16", MetadataValue::I16(-7))
        .set_i32("i32", -7)
        .set_u64("u64", 7)
        .set_value("i64", MetadataValue::I64(-9))
        .set_value("f64", MetadataValue::F64(0.5))
        .set_str_array("tokenizer.ggml.tokens", &["<s>", "a", "bc", "é"])
        .set_f32_array("tokenizer.ggml.scores", &[0.0, -1.0, -2.0, -3.0])
        .set_i32_array("tokenizer.ggml.token_type", &[3, 1, 1, 1]);
    writer
        .add_tensor("token_embd.weight", &[32, 4], GgmlType::Q8_0, &[1; 4 * 34])
        .unwrap()
        .add_tensor("output_norm.weight", &[32], GgmlType::F32, &[2; 128])
        .unwrap()
        .add_tensor(
            "blk.0.ffn_down.weight",
            &[256, 1],
            GgmlType::Q4_K,
            &[3; 144],
        )
        .unwrap();
    writer.to_bytes()
}

/// Builds a file whose tensors are all empty, so a cut in the padding
/// before the data section leaves no tensor data to catch it.
fn empty_tensors_seed() -> Vec<u8> {
    let mut writer = GgufWriter::new();
    writer.set_str("general.architecture", "llama");
    writer
        .add_tensor("rows.empty", &[32, 0], GgmlType::F32, &[])
        .unwrap()
        .add_tensor("cols.empty", &[0, 5], GgmlType::Q8_0, &[])
        .unwrap();
    writer.to_bytes()
}

/// Encodes a file whose only entry, `nested`, is an array of two arrays of
/// bools, which the writer cannot build from its typed setters.
fn nested_array_file() -> Vec<u8> {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.extend_from_slice(&6u64.to_le_bytes());
    bytes.extend_from_slice(b"nested");
    bytes.extend_from_slice(&ValueType::Array.id().to_le_bytes());
    bytes.extend_from_slice(&ValueType::Array.id().to_le_bytes());
    bytes.extend_from_slice(&2u64.to_le_bytes());
    for inner in [[1u8, 0].as_slice(), &[1]] {
        bytes.extend_from_slice(&ValueType::Bool.id().to_le_bytes());
        bytes.extend_from_slice(&(inner.len() as u64).to_le_bytes());
        bytes.extend_from_slice(inner);
    }
    bytes
}

fn real_model(file: &str) -> Gguf {
    let dir = match std::env::var_os("ATTEND_MODELS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is not set"))
            .join(".cache/attend/models"),
    };
    let path = dir.join(file);
    assert!(
        path.is_file(),
        "model file {} not found; run scripts/fetch-models.sh (or set ATTEND_MODELS)",
        path.display()
    );
    Gguf::open(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Rebuilds a real model's header small. Every metadata entry is kept with
/// arrays cut to their first elements, and every tensor keeps its name and
/// type but shrinks to one block. The file is about 30 KB yet has the real
/// keys, names and mix of types.
fn shrunk_real_seed(file: &str) -> Vec<u8> {
    let source = real_model(file);
    let mut writer = GgufWriter::new();
    for (key, value) in source.metadata() {
        match value {
            MetadataValue::Array(array) if array.len() > KEPT_ARRAY_ITEMS => {
                if let Ok(tokens) = source.get_str_array(key) {
                    writer.set_str_array(key, &tokens[..KEPT_ARRAY_ITEMS]);
                } else if let Ok(scores) = source.get_f32_array(key) {
                    writer.set_f32_array(key, &scores[..KEPT_ARRAY_ITEMS]);
                } else if let Ok(types) = source.get_i32_array(key) {
                    writer.set_i32_array(key, &types[..KEPT_ARRAY_ITEMS]);
                } else {
                    panic!("{file}: {key} is an array of {}", array.elem_type());
                }
            }
            other => {
                writer.set_value(key, other);
            }
        }
    }
    for info in source.tensors() {
        let ggml_type = info.ggml_type();
        let mut dims = vec![1; info.dims().len().max(1)];
        dims[0] = ggml_type.block_elems();
        let data = vec![0x55; ggml_type.block_bytes()];
        writer
            .add_tensor(info.name(), &dims, ggml_type, &data)
            .unwrap();
    }
    writer.to_bytes()
}

/// Copies the first bytes of a real file, cut inside its metadata.
fn real_prefix_seed(file: &str) -> Vec<u8> {
    real_model(file).bytes()[..REAL_PREFIX_BYTES].to_vec()
}

fn seeds() -> &'static [(&'static str, Vec<u8>)] {
    static SEEDS: OnceLock<Vec<(&'static str, Vec<u8>)>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        vec![
            (
                "smollm2 shrunk",
                shrunk_real_seed("SmolLM2-135M-Instruct.Q4_1.gguf"),
            ),
            (
                "gemma3 shrunk",
                shrunk_real_seed("gemma-3-270m-q4_k_m.gguf"),
            ),
            (
                "smollm2 prefix",
                real_prefix_seed("SmolLM2-135M-Instruct.Q4_1.gguf"),
            ),
            (
                "gemma3 prefix",
                real_prefix_seed("gemma-3-270m-q4_k_m.gguf"),
            ),
        ]
    })
}

#[test]
fn seeds_parse_as_expected() {
    let empty = Gguf::from_bytes(empty_tensors_seed()).unwrap();
    assert!(empty.tensor_refs().all(|t| t.data().is_empty()));

    let crafted = Gguf::from_bytes(crafted_seed()).unwrap();
    assert_eq!(crafted.tensors().len(), 3);
    assert_eq!(crafted.metadata_len(), 16);
    let nested = crafted.get_array("nested").unwrap();
    assert_eq!(nested.elem_type(), ValueType::Array);
    assert_eq!(
        MetadataValue::Array(nested).to_string(),
        "[2 x array: [2 x bool: true, false], [1 x bool: true]]"
    );
    for (name, bytes) in seeds() {
        let result = Gguf::from_bytes(bytes.clone());
        if name.ends_with("shrunk") {
            let gguf = result.unwrap_or_else(|err| panic!("{name}: {err}"));
            assert!(gguf.tensors().len() > 200, "{name}");
        } else {
            assert!(result.is_err(), "{name} should be truncated");
        }
    }
}

proptest! {
    #[test]
    fn crafted_file_mutations(mutations in prop::collection::vec(mutation(), 1..8)) {
        let mut bytes = crafted_seed();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        parse_and_read_all(bytes);
    }

    #[test]
    fn empty_tensors_mutations(mutations in prop::collection::vec(mutation(), 1..4)) {
        let mut bytes = empty_tensors_seed();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        parse_and_read_all(bytes);
    }

    #[test]
    fn real_header_mutations(
        seed in any::<Index>(),
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let seeds = seeds();
        let mut bytes = seeds[seed.index(seeds.len())].1.clone();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        parse_and_read_all(bytes);
    }
}
