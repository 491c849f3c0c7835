//! Unit tests over small files crafted byte by byte, one test per error.

use super::*;
use crate::GgmlType;

/// Writes GGUF fields in order; each method returns the file offset where
/// its field starts, so tests can check the offsets that errors report.
#[derive(Default)]
struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    fn new(version: u32, n_tensors: u64, n_entries: u64) -> Builder {
        let mut b = Builder::default();
        b.buf.extend_from_slice(b"GGUF");
        b.u32(version);
        b.u64(n_tensors);
        b.u64(n_entries);
        b
    }

    fn pos(&self) -> usize {
        self.buf.len()
    }

    fn u8(&mut self, v: u8) -> usize {
        let at = self.pos();
        self.buf.push(v);
        at
    }

    fn u32(&mut self, v: u32) -> usize {
        let at = self.pos();
        self.buf.extend_from_slice(&v.to_le_bytes());
        at
    }

    fn u64(&mut self, v: u64) -> usize {
        let at = self.pos();
        self.buf.extend_from_slice(&v.to_le_bytes());
        at
    }

    fn raw(&mut self, bytes: &[u8]) -> usize {
        let at = self.pos();
        self.buf.extend_from_slice(bytes);
        at
    }

    /// Writes a string from raw bytes, so tests can write invalid UTF-8.
    fn str_bytes(&mut self, s: &[u8]) -> usize {
        let at = self.u64(s.len() as u64);
        self.raw(s);
        at
    }

    fn str(&mut self, s: &str) -> usize {
        self.str_bytes(s.as_bytes())
    }

    /// Writes a key and value type, and returns the offset where the caller
    /// writes the value.
    fn key(&mut self, key: &str, value_type: ValueType) -> usize {
        self.str(key);
        self.u32(value_type.id());
        self.pos()
    }

    fn kv_u32(&mut self, key: &str, v: u32) -> usize {
        let at = self.key(key, ValueType::U32);
        self.u32(v);
        at
    }

    fn kv_str(&mut self, key: &str, v: &str) -> usize {
        let at = self.key(key, ValueType::String);
        self.str(v);
        at
    }

    /// A tensor info; returns the offset of its data offset field.
    fn tensor(&mut self, name: &str, dims: &[u64], type_id: u32, offset: u64) -> usize {
        self.str(name);
        self.u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(type_id);
        self.u64(offset)
    }

    fn pad_to(&mut self, alignment: usize) -> usize {
        while !self.buf.len().is_multiple_of(alignment) {
            self.buf.push(0);
        }
        self.pos()
    }

    fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Byte sizes of the tensors of [`valid_file`].
const F32_BYTES: usize = 4 * 2 * 4;
const Q8_BYTES: usize = 2 * 34;
const F16_BYTES: usize = 3 * 2;

/// Builds a file of the given version with one metadata entry of every type and three tensors
/// (F32 [4, 2], Q8_0 [32, 2], F16 [3]) whose bytes count up from 0.
fn valid_file(version: u32) -> Vec<u8> {
    let mut b = Builder::new(version, 3, 16);
    b.kv_str("general.architecture", "llama");
    b.key("u8", ValueType::U8);
    b.u8(200);
    b.key("i8", ValueType::I8);
    b.u8((-5i8) as u8);
    b.key("u16", ValueType::U16);
    b.raw(&60000u16.to_le_bytes());
    b.key("i16", ValueType::I16);
    b.raw(&(-300i16).to_le_bytes());
    b.kv_u32("llama.context_length", 8192);
    b.key("i32", ValueType::I32);
    b.raw(&(-70000i32).to_le_bytes());
    b.key("u64", ValueType::U64);
    b.u64(1 << 40);
    b.key("i64", ValueType::I64);
    b.raw(&(-(1i64 << 40)).to_le_bytes());
    b.key("llama.rope.freq_base", ValueType::F32);
    b.raw(&10000.5f32.to_le_bytes());
    b.key("f64", ValueType::F64);
    b.raw(&0.25f64.to_le_bytes());
    b.key("tokenizer.ggml.add_bos_token", ValueType::Bool);
    b.u8(1);
    b.key("tokenizer.ggml.tokens", ValueType::Array);
    b.u32(ValueType::String.id());
    b.u64(3);
    for token in ["<s>", "héllo", ""] {
        b.str(token);
    }
    b.key("tokenizer.ggml.scores", ValueType::Array);
    b.u32(ValueType::F32.id());
    b.u64(3);
    for score in [0.0f32, -1.5, 2.25] {
        b.raw(&score.to_le_bytes());
    }
    b.key("tokenizer.ggml.token_type", ValueType::Array);
    b.u32(ValueType::I32.id());
    b.u64(3);
    for ty in [3i32, 1, -1] {
        b.raw(&ty.to_le_bytes());
    }
    // An array of two arrays of u16.
    b.key("nested", ValueType::Array);
    b.u32(ValueType::Array.id());
    b.u64(2);
    b.u32(ValueType::U16.id());
    b.u64(1);
    b.raw(&7u16.to_le_bytes());
    b.u32(ValueType::U16.id());
    b.u64(0);

    b.tensor("a.f32", &[4, 2], GgmlType::F32.id(), 0);
    b.tensor("b.q8", &[32, 2], GgmlType::Q8_0.id(), 32);
    b.tensor("c.f16", &[3], GgmlType::F16.id(), 128);
    b.pad_to(DEFAULT_ALIGNMENT);
    let data_start = b.pos();
    let data_len = 128 + F16_BYTES;
    b.raw(&(0..data_len).map(|i| i as u8).collect::<Vec<_>>());
    assert_eq!(b.pos() - data_start, data_len);
    b.finish()
}

fn parse_err(bytes: Vec<u8>) -> GgufError {
    match Gguf::from_bytes(bytes) {
        Ok(gguf) => panic!("expected an error, parsed {gguf:?}"),
        Err(err) => err,
    }
}

/// Builds a file with no metadata and the given tensor infos, padded and
/// followed by `data_len` zero bytes.
fn file_with_tensors(
    tensors: &[(&str, &[u64], u32, u64)],
    data_len: usize,
) -> (Vec<u8>, Vec<usize>) {
    let mut b = Builder::new(3, tensors.len() as u64, 0);
    let offsets = tensors
        .iter()
        .map(|&(name, dims, ty, offset)| b.tensor(name, dims, ty, offset))
        .collect();
    b.pad_to(DEFAULT_ALIGNMENT);
    b.raw(&vec![0; data_len]);
    (b.finish(), offsets)
}

// ---- valid files ----

#[test]
fn valid_file_metadata() {
    let gguf = Gguf::from_bytes(valid_file(3)).unwrap();
    assert_eq!(gguf.version(), 3);
    assert_eq!(gguf.metadata_len(), 16);
    assert_eq!(gguf.architecture().unwrap(), "llama");
    assert_eq!(gguf.get_u8("u8").unwrap(), 200);
    assert_eq!(gguf.get_i8("i8").unwrap(), -5);
    assert_eq!(gguf.get_u16("u16").unwrap(), 60000);
    assert_eq!(gguf.get_i16("i16").unwrap(), -300);
    assert_eq!(gguf.get_u32("llama.context_length").unwrap(), 8192);
    assert_eq!(gguf.get_i32("i32").unwrap(), -70000);
    assert_eq!(gguf.get_u64("u64").unwrap(), 1 << 40);
    assert_eq!(gguf.get_i64("i64").unwrap(), -(1 << 40));
    assert_eq!(gguf.get_f32("llama.rope.freq_base").unwrap(), 10000.5);
    assert_eq!(gguf.get_f64("f64").unwrap(), 0.25);
    assert!(gguf.get_bool("tokenizer.ggml.add_bos_token").unwrap());
    assert_eq!(
        gguf.get_str_array("tokenizer.ggml.tokens").unwrap(),
        ["<s>", "héllo", ""]
    );
    assert_eq!(
        gguf.get_f32_array("tokenizer.ggml.scores").unwrap(),
        [0.0, -1.5, 2.25]
    );
    assert_eq!(
        gguf.get_i32_array("tokenizer.ggml.token_type").unwrap(),
        [3, 1, -1]
    );
    let keys: Vec<&str> = gguf.metadata().map(|(key, _)| key).collect();
    assert_eq!(keys.len(), 16);
    assert_eq!(keys[0], "general.architecture");
    assert_eq!(keys[15], "nested");
}

#[test]
fn valid_file_version_2() {
    let gguf = Gguf::from_bytes(valid_file(2)).unwrap();
    assert_eq!(gguf.version(), 2);
    assert_eq!(gguf.tensors().len(), 3);
}

#[test]
fn nested_array_values() {
    let gguf = Gguf::from_bytes(valid_file(3)).unwrap();
    let outer = gguf.get_array("nested").unwrap();
    assert_eq!(outer.elem_type(), ValueType::Array);
    assert_eq!(outer.len(), 2);
    let inner: Vec<MetadataValue<'_>> = outer.iter().collect();
    assert_eq!(inner.len(), 2);
    let MetadataValue::Array(first) = inner[0] else {
        panic!("expected an array, got {:?}", inner[0]);
    };
    assert_eq!(first.iter().collect::<Vec<_>>(), [MetadataValue::U16(7)]);
    let MetadataValue::Array(second) = inner[1] else {
        panic!("expected an array, got {:?}", inner[1]);
    };
    assert!(second.is_empty());
}

#[test]
fn integer_getter_converts() {
    let gguf = Gguf::from_bytes(valid_file(3)).unwrap();
    assert_eq!(
        gguf.get_integer::<usize>("llama.context_length").unwrap(),
        8192
    );
    assert_eq!(gguf.get_integer::<i64>("u8").unwrap(), 200);
    assert_eq!(gguf.get_integer::<i32>("i16").unwrap(), -300);
    assert_eq!(gguf.get_integer::<u64>("u64").unwrap(), 1 << 40);
    assert_eq!(
        gguf.get_integer_array::<i64>("tokenizer.ggml.token_type")
            .unwrap(),
        [3, 1, -1]
    );
}

#[test]
fn integer_getter_out_of_range() {
    let gguf = Gguf::from_bytes(valid_file(3)).unwrap();
    let err = gguf.get_integer::<u32>("i8").unwrap_err();
    assert!(
        matches!(&err, GgufError::OutOfRange { key, value: -5, .. } if key == "i8"),
        "{err}"
    );
    let err = gguf.get_integer::<u8>("u16").unwrap_err();
    assert!(
        matches!(err, GgufError::OutOfRange { value: 60000, .. }),
        "{err}"
    );
    let err = gguf
        .get_integer_array::<u32>("tokenizer.ggml.token_type")
        .unwrap_err();
    assert!(
        matches!(err, GgufError::OutOfRange { value: -1, .. }),
        "{err}"
    );
}

#[test]
fn getter_missing_key() {
    let gguf = Gguf::from_bytes(valid_file(3)).unwrap();
    let err = gguf.get_u32("llama.block_count").unwrap_err();
    assert!(
        matches!(&err, GgufError::MissingKey { key } if key == "llama.block_count"),
        "{err}"
    );
    assert!(err.to_string().contains("llama.block_count"), "{err}");
    assert!(err.is_missing_key());
    assert_eq!(gguf.get_u32("llama.block_count").optional().unwrap(), None);
    assert_eq!(
        gguf.get_u32("llama.context_length").optional().unwrap(),
        Some(8192)
    );
}

#[test]
fn getter_wrong_type() {
    let gguf = Gguf::from_bytes(valid_file(3)).unwrap();
    let err = gguf.get_u32("llama.rope.freq_base").unwrap_err();
    assert!(
        matches!(&err, GgufError::WrongType { key, expected, found }
            if key == "llama.rope.freq_base" && expected == "u32" && found == "f32"),
        "{err}"
    );
    // A wrong type is not a missing key, so `optional` passes it through.
    assert!(gguf.get_u32("llama.rope.freq_base").optional().is_err());

    let err = gguf.get_str_array("tokenizer.ggml.scores").unwrap_err();
    assert!(
        matches!(&err, GgufError::WrongType { expected, found, .. }
            if expected == "array of string" && found == "array of f32"),
        "{err}"
    );
    let err = gguf.get_integer::<u32>("general.architecture").unwrap_err();
    assert!(matches!(err, GgufError::WrongType { .. }), "{err}");
    let err = gguf.get_f32_array("u8").unwrap_err();
    assert!(matches!(err, GgufError::WrongType { .. }), "{err}");
    let err = gguf
        .get_integer_array::<u32>("tokenizer.ggml.tokens")
        .unwrap_err();
    assert!(matches!(err, GgufError::WrongType { .. }), "{err}");
}

#[test]
fn valid_file_tensors() {
    let gguf = Gguf::from_bytes(valid_file(3)).unwrap();
    assert_eq!(gguf.alignment(), DEFAULT_ALIGNMENT);
    assert!(gguf.data_offset().is_multiple_of(DEFAULT_ALIGNMENT));
    let names: Vec<&str> = gguf.tensors().iter().map(|t| t.name()).collect();
    assert_eq!(names, ["a.f32", "b.q8", "c.f16"]);

    let a = gguf.tensor("a.f32").unwrap();
    assert_eq!(a.dims(), [4, 2]);
    assert_eq!(a.ggml_type(), GgmlType::F32);
    assert_eq!((a.cols(), a.rows(), a.row_bytes()), (4, 2, 16));
    assert_eq!(a.n_elements(), 8);
    assert_eq!(a.data().len(), F32_BYTES);
    assert_eq!(a.data()[0], 0);

    let q = gguf.tensor("b.q8").unwrap();
    assert_eq!((q.cols(), q.rows(), q.row_bytes()), (32, 2, 34));
    assert_eq!(q.data().len(), Q8_BYTES);
    assert_eq!(q.data()[0], 32);
    assert_eq!(q.info().offset(), 32);

    let h = gguf.tensor("c.f16").unwrap();
    assert_eq!((h.cols(), h.rows()), (3, 1));
    assert_eq!(h.data(), [128, 129, 130, 131, 132, 133]);

    // The bytes are borrowed from the buffer, not copied.
    let base = gguf.bytes().as_ptr() as usize;
    assert_eq!(h.data().as_ptr() as usize, base + gguf.data_offset() + 128);
}

#[test]
fn tensor_not_found() {
    let gguf = Gguf::from_bytes(valid_file(3)).unwrap();
    let err = gguf.tensor("missing.weight").unwrap_err();
    assert!(
        matches!(&err, GgufError::TensorNotFound { name } if name == "missing.weight"),
        "{err}"
    );
    assert!(gguf.tensor_info("missing.weight").is_none());
}

#[test]
fn custom_alignment_moves_data() {
    let mut b = Builder::new(3, 1, 1);
    b.kv_u32("general.alignment", 64);
    b.tensor("t", &[2], GgmlType::F32.id(), 0);
    let data_start = b.pad_to(64);
    b.raw(&[1, 2, 3, 4, 5, 6, 7, 8]);
    let gguf = Gguf::from_bytes(b.finish()).unwrap();
    assert_eq!(gguf.alignment(), 64);
    assert_eq!(gguf.data_offset(), data_start);
    assert_eq!(gguf.tensor("t").unwrap().data(), [1, 2, 3, 4, 5, 6, 7, 8]);
}

#[test]
fn empty_file_without_tensors() {
    let gguf = Gguf::from_bytes(Builder::new(3, 0, 0).finish()).unwrap();
    assert_eq!(gguf.metadata_len(), 0);
    assert!(gguf.tensors().is_empty());
    assert!(gguf.architecture().unwrap_err().is_missing_key());
}

#[test]
fn scalar_and_zero_sized_tensors() {
    let (bytes, _) = file_with_tensors(
        &[
            ("scalar", &[], GgmlType::F32.id(), 0),
            ("empty", &[0, 5], GgmlType::Q4_K.id(), 32),
            ("empty.huge", &[0, u64::MAX / 8, 3], GgmlType::F32.id(), 32),
        ],
        36,
    );
    let gguf = Gguf::from_bytes(bytes).unwrap();
    let scalar = gguf.tensor("scalar").unwrap();
    assert_eq!(
        (scalar.n_elements(), scalar.cols(), scalar.rows()),
        (1, 1, 1)
    );
    assert_eq!(scalar.data().len(), 4);
    assert_eq!(gguf.tensor("empty").unwrap().data().len(), 0);
    assert_eq!(gguf.tensor("empty.huge").unwrap().n_elements(), 0);
}

#[test]
fn summary_lists_metadata_and_tensors() {
    let gguf = Gguf::from_bytes(valid_file(3)).unwrap();
    let summary = gguf.summary();
    assert!(summary.starts_with("GGUF v3"), "{summary}");
    assert!(
        summary.contains("general.architecture: string = \"llama\""),
        "{summary}"
    );
    assert!(
        summary.contains("tokenizer.ggml.tokens: array of string = [3 x string: \"<s>\""),
        "{summary}"
    );
    assert!(summary.contains("b.q8 Q8_0 [32, 2] at +32"), "{summary}");
    assert!(summary.contains("Q8_0: 1 tensors, 68 bytes"), "{summary}");
}

// ---- malformed files: one test per error ----

#[test]
fn bad_magic() {
    let mut bytes = valid_file(3);
    bytes[..4].copy_from_slice(b"GGML");
    let err = parse_err(bytes);
    assert!(
        matches!(&err, GgufError::BadMagic { found } if found == b"GGML"),
        "{err}"
    );
}

#[test]
fn short_magic_is_truncated() {
    let err = parse_err(b"GG".to_vec());
    assert!(
        matches!(
            &err,
            GgufError::Truncated {
                offset: 0,
                needed: 4,
                available: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn unsupported_versions() {
    for version in [0, 1, 4, u32::MAX] {
        let err = parse_err(valid_file(version));
        assert!(
            matches!(err, GgufError::UnsupportedVersion { version: v } if v == version),
            "{err}"
        );
    }
}

#[test]
fn big_endian_file() {
    let mut bytes = valid_file(3);
    bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
    let err = parse_err(bytes);
    assert!(matches!(err, GgufError::BigEndian { version: 3 }), "{err}");
}

#[test]
fn open_missing_file() {
    let path = std::env::temp_dir().join("attend-gguf-test-missing.gguf");
    let err = Gguf::open(&path).unwrap_err();
    assert!(
        matches!(&err, GgufError::Io { path: p, .. } if *p == path),
        "{err}"
    );
    assert!(
        err.to_string().contains("attend-gguf-test-missing.gguf"),
        "{err}"
    );
}

#[test]
fn open_maps_file() {
    let dir = std::env::temp_dir().join(format!("attend-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let valid = dir.join("valid.gguf");
    std::fs::write(&valid, valid_file(3)).unwrap();
    let gguf = Gguf::open(&valid).unwrap();
    assert_eq!(
        gguf.tensor("c.f16").unwrap().data(),
        [128, 129, 130, 131, 132, 133]
    );

    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let err = Gguf::open(&empty).unwrap_err();
    assert!(
        matches!(err, GgufError::Truncated { offset: 0, .. }),
        "{err}"
    );

    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn gguf_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Gguf>();
    assert_send_sync::<TensorRef<'_>>();
    assert_send_sync::<MetadataValue<'_>>();
}

#[test]
fn truncated_at_every_length() {
    let bytes = valid_file(3);
    let data_offset = Gguf::from_bytes(bytes.clone()).unwrap().data_offset();
    for len in 0..bytes.len() {
        let err = parse_err(bytes[..len].to_vec());
        if len < data_offset {
            // Inside the header a cut leaves a field or the padding short, or
            // a string length longer than what is left.
            assert!(
                matches!(
                    err,
                    GgufError::Truncated { .. } | GgufError::CountTooLarge { .. }
                ),
                "cut at {len}: {err}"
            );
        } else {
            assert!(
                matches!(err, GgufError::TensorOutOfBounds { .. }),
                "cut at {len}: {err}"
            );
        }
    }
}

#[test]
fn truncated_field_names_offset() {
    let mut b = Builder::new(3, 0, 1);
    b.key("general.alignment", ValueType::U32);
    let value_at = b.raw(&[1, 0]);
    let err = parse_err(b.finish());
    let GgufError::Truncated {
        field,
        offset,
        needed,
        available,
    } = &err
    else {
        panic!("expected Truncated, got {err}");
    };
    assert_eq!(*offset, value_at);
    assert_eq!((*needed, *available), (4, 2));
    assert!(field.contains("general.alignment"), "{field}");
}

#[test]
fn unknown_value_type() {
    let mut b = Builder::new(3, 0, 1);
    b.str("key");
    let type_at = b.u32(13);
    let err = parse_err(b.finish());
    assert!(
        matches!(&err, GgufError::UnknownValueType { type_id: 13, offset, field }
            if *offset == type_at && field.contains("'key'")),
        "{err}"
    );
}

#[test]
fn unknown_array_element_type() {
    let mut b = Builder::new(3, 0, 1);
    b.key("arr", ValueType::Array);
    let type_at = b.u32(99);
    b.u64(0);
    let err = parse_err(b.finish());
    assert!(
        matches!(err, GgufError::UnknownValueType { type_id: 99, offset, .. } if offset == type_at),
        "{err}"
    );
}

#[test]
fn string_length_past_end() {
    let mut b = Builder::new(3, 0, 1);
    b.key("name", ValueType::String);
    let len_at = b.u64(1 << 40);
    b.raw(b"short");
    let err = parse_err(b.finish());
    assert!(
        matches!(&err, GgufError::CountTooLarge { count, offset, remaining: 5, .. }
            if *count == 1 << 40 && *offset == len_at),
        "{err}"
    );
}

#[test]
fn array_count_past_end() {
    // u64::MAX elements of 4 bytes overflows; 1000 elements just do not fit.
    for count in [u64::MAX, 1000] {
        let mut b = Builder::new(3, 0, 1);
        b.key("tokenizer.ggml.scores", ValueType::Array);
        b.u32(ValueType::F32.id());
        let count_at = b.u64(count);
        b.raw(&[0; 16]);
        let err = parse_err(b.finish());
        assert!(
            matches!(&err, GgufError::CountTooLarge { count: c, offset, field, .. }
                if *c == count && *offset == count_at && field.contains("tokenizer.ggml.scores")),
            "{err}"
        );
    }
}

#[test]
fn string_array_count_past_end() {
    let mut b = Builder::new(3, 0, 1);
    b.key("tokenizer.ggml.tokens", ValueType::Array);
    b.u32(ValueType::String.id());
    // Each string needs at least its 8-byte length, and 3 bytes remain.
    let count_at = b.u64(1);
    b.raw(&[0; 3]);
    let err = parse_err(b.finish());
    assert!(
        matches!(err, GgufError::CountTooLarge { count: 1, min_bytes: 8, remaining: 3, offset, .. }
            if offset == count_at),
        "{err}"
    );
}

#[test]
fn entry_count_past_end() {
    let err = parse_err(Builder::new(3, 0, u64::MAX / 2).finish());
    assert!(
        matches!(
            err,
            GgufError::CountTooLarge {
                offset: 16,
                remaining: 0,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn tensor_count_past_end() {
    let mut b = Builder::new(3, 1000, 1);
    b.kv_u32("a", 1);
    let err = parse_err(b.finish());
    assert!(
        matches!(
            err,
            GgufError::CountTooLarge {
                count: 1000,
                offset: 8,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn array_nesting_too_deep() {
    let mut b = Builder::new(3, 0, 1);
    b.key("deep", ValueType::Array);
    for _ in 0..20 {
        b.u32(ValueType::Array.id());
        b.u64(1);
    }
    b.raw(&[0; 64]);
    let err = parse_err(b.finish());
    assert!(
        matches!(err, GgufError::ArrayTooDeep { max_depth: 8, .. }),
        "{err}"
    );
}

#[test]
fn invalid_bool() {
    let mut b = Builder::new(3, 0, 1);
    let at = b.key("flag", ValueType::Bool);
    b.u8(2);
    let err = parse_err(b.finish());
    assert!(
        matches!(err, GgufError::InvalidBool { value: 2, offset, .. } if offset == at),
        "{err}"
    );
}

#[test]
fn invalid_utf8_key() {
    let mut b = Builder::new(3, 0, 1);
    b.str_bytes(b"ke\xffy");
    b.u32(ValueType::U8.id());
    b.u8(0);
    let err = parse_err(b.finish());
    assert!(
        matches!(
            err,
            GgufError::InvalidUtf8 {
                offset: 32,
                valid_up_to: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn invalid_utf8_value_in_array() {
    let mut b = Builder::new(3, 0, 1);
    b.key("tokenizer.ggml.tokens", ValueType::Array);
    b.u32(ValueType::String.id());
    b.u64(2);
    b.str("ok");
    let bad_at = b.str_bytes(b"\xc3(");
    let err = parse_err(b.finish());
    assert!(
        matches!(&err, GgufError::InvalidUtf8 { offset, field, .. }
            if *offset == bad_at + 8 && field.contains("tokenizer.ggml.tokens")),
        "{err}"
    );
}

#[test]
fn invalid_utf8_tensor_name() {
    let mut b = Builder::new(3, 1, 0);
    b.str_bytes(b"\x80weight");
    b.raw(&[0; 16]);
    let err = parse_err(b.finish());
    assert!(
        matches!(err, GgufError::InvalidUtf8 { offset: 32, .. }),
        "{err}"
    );
}

#[test]
fn duplicate_key() {
    let mut b = Builder::new(3, 0, 2);
    b.kv_u32("general.alignment", 32);
    let second_at = b.pos();
    b.kv_u32("general.alignment", 64);
    let err = parse_err(b.finish());
    assert!(
        matches!(&err, GgufError::DuplicateKey { key, offset }
            if key == "general.alignment" && *offset == second_at),
        "{err}"
    );
}

#[test]
fn invalid_alignment() {
    let cases: [(ValueType, &[u8]); 4] = [
        (ValueType::U32, &0u32.to_le_bytes()),
        (ValueType::U32, &48u32.to_le_bytes()),
        (ValueType::U64, &32u64.to_le_bytes()),
        (ValueType::I32, &32i32.to_le_bytes()),
    ];
    for (value_type, value) in cases {
        let mut b = Builder::new(3, 0, 1);
        let at = b.key("general.alignment", value_type);
        b.raw(value);
        let err = parse_err(b.finish());
        assert!(
            matches!(err, GgufError::InvalidAlignment { offset, .. } if offset == at),
            "{value_type}: {err}"
        );
    }
}

#[test]
fn duplicate_tensor_name() {
    let mut b = Builder::new(3, 2, 0);
    b.tensor("w", &[4], GgmlType::F32.id(), 0);
    let second_at = b.pos();
    b.tensor("w", &[4], GgmlType::F32.id(), 32);
    b.pad_to(32);
    b.raw(&[0; 64]);
    let err = parse_err(b.finish());
    assert!(
        matches!(&err, GgufError::DuplicateTensor { name, offset } if name == "w" && *offset == second_at),
        "{err}"
    );
}

#[test]
fn too_many_dims() {
    let mut b = Builder::new(3, 1, 0);
    b.str("t");
    let n_dims_at = b.u32(5);
    for _ in 0..5 {
        b.u64(1);
    }
    b.u32(0);
    b.u64(0);
    let err = parse_err(b.finish());
    assert!(
        matches!(err, GgufError::TooManyDims { n_dims: 5, offset, .. } if offset == n_dims_at),
        "{err}"
    );
}

#[test]
fn huge_dim_count_allocates_nothing() {
    let mut b = Builder::new(3, 1, 0);
    b.str("t");
    b.u32(u32::MAX);
    b.raw(&[0; 16]);
    let err = parse_err(b.finish());
    assert!(
        matches!(
            err,
            GgufError::TooManyDims {
                n_dims: u32::MAX,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn empty_tensor_before_missing_padding() {
    // Found by libFuzzer: an empty tensor passed the bounds check while the
    // file ended before the data section, and slicing its data panicked.
    let mut b = Builder::new(3, 1, 0);
    b.tensor("", &[0x2e << 56, 0, 0], GgmlType::F32.id(), 0);
    let header_end = b.pos();
    b.raw(b"gg\0\0");
    let err = parse_err(b.finish());
    assert!(
        matches!(&err, GgufError::Truncated { field, offset, needed, available: 4 }
            if field.contains("padding") && *offset == header_end && *needed == 96 - header_end),
        "{err}"
    );
}

#[test]
fn element_count_overflow() {
    let (bytes, _) = file_with_tensors(&[("t", &[1 << 32, 1 << 32, 2], 0, 0)], 0);
    let err = parse_err(bytes);
    assert!(
        matches!(&err, GgufError::SizeOverflow { tensor, offset: 37, .. } if tensor == "t"),
        "{err}"
    );
}

#[test]
fn zero_sized_tensor_with_overflowing_dims() {
    // The product is 0, but the rows alone would overflow.
    let (bytes, _) = file_with_tensors(&[("t", &[32, 1 << 32, 1 << 32, 0], 0, 0)], 0);
    let err = parse_err(bytes);
    assert!(matches!(err, GgufError::SizeOverflow { .. }), "{err}");
    // A zero-row tensor whose row alone overflows the byte size.
    let (bytes, _) = file_with_tensors(&[("t", &[u64::MAX, 0], 0, 0)], 0);
    let err = parse_err(bytes);
    assert!(matches!(err, GgufError::SizeOverflow { .. }), "{err}");
}

#[test]
fn byte_size_overflow() {
    // The element count fits `usize`, but four bytes per element do not.
    let (bytes, _) = file_with_tensors(&[("t", &[1 << 62, 1], GgmlType::F32.id(), 0)], 0);
    let err = parse_err(bytes);
    assert!(matches!(err, GgufError::SizeOverflow { .. }), "{err}");
}

#[test]
fn unknown_tensor_type() {
    for type_id in [4, 5, 16, 31, u32::MAX] {
        let mut b = Builder::new(3, 1, 0);
        b.str("t");
        b.u32(1);
        b.u64(32);
        let type_at = b.u32(type_id);
        b.u64(0);
        let err = parse_err(b.finish());
        assert!(
            matches!(&err, GgufError::UnknownTensorType { tensor, type_id: id, offset }
                if tensor == "t" && *id == type_id && *offset == type_at),
            "{err}"
        );
    }
}

#[test]
fn row_not_block_multiple() {
    let (bytes, _) = file_with_tensors(&[("q", &[48, 2], GgmlType::Q4_K.id(), 0)], 1024);
    let err = parse_err(bytes);
    assert!(
        matches!(
            err,
            GgufError::RowNotBlockMultiple {
                row_len: 48,
                block_elems: 256,
                ggml_type: GgmlType::Q4_K,
                ..
            }
        ),
        "{err}"
    );
    // A quantized scalar has a row of one element.
    let (bytes, _) = file_with_tensors(&[("q", &[], GgmlType::Q8_0.id(), 0)], 1024);
    let err = parse_err(bytes);
    assert!(
        matches!(err, GgufError::RowNotBlockMultiple { row_len: 1, .. }),
        "{err}"
    );
}

#[test]
fn misaligned_tensor() {
    let (bytes, offsets) = file_with_tensors(&[("t", &[4], GgmlType::F32.id(), 16)], 64);
    let err = parse_err(bytes);
    assert!(
        matches!(err, GgufError::MisalignedTensor { data_offset: 16, alignment: 32, offset, .. }
            if offset == offsets[0]),
        "{err}"
    );
}

#[test]
fn tensor_outside_file() {
    let (bytes, offsets) = file_with_tensors(&[("t", &[16], GgmlType::F32.id(), 32)], 64);
    let err = parse_err(bytes);
    assert!(
        matches!(err, GgufError::TensorOutOfBounds { data_offset: 32, size_bytes: 64, data_len: 64, offset, .. }
            if offset == offsets[0]),
        "{err}"
    );
    // An aligned offset near `u64::MAX` must not wrap around.
    let far = u64::MAX - 31;
    let (bytes, _) = file_with_tensors(&[("t", &[16], GgmlType::F32.id(), far)], 64);
    let err = parse_err(bytes);
    assert!(matches!(err, GgufError::TensorOutOfBounds { .. }), "{err}");
}

#[test]
fn overlapping_tensors() {
    let (bytes, offsets) = file_with_tensors(
        &[
            ("a", &[16], GgmlType::F32.id(), 0),
            ("b", &[4], GgmlType::F32.id(), 96),
            ("c", &[16], GgmlType::F32.id(), 32),
        ],
        128,
    );
    let err = parse_err(bytes);
    assert!(
        matches!(&err, GgufError::OverlappingTensors { first, second, offset }
            if first == "a" && second == "c" && *offset == offsets[2]),
        "{err}"
    );
}

#[test]
fn identical_tensor_ranges_overlap() {
    let (bytes, _) = file_with_tensors(
        &[
            ("a", &[8], GgmlType::F32.id(), 0),
            ("b", &[8], GgmlType::F32.id(), 0),
        ],
        32,
    );
    let err = parse_err(bytes);
    assert!(matches!(err, GgufError::OverlappingTensors { .. }), "{err}");
}

#[test]
fn adjacent_tensors_do_not_overlap() {
    let (bytes, _) = file_with_tensors(
        &[
            ("a", &[8], GgmlType::F32.id(), 0),
            ("zero", &[0], GgmlType::F32.id(), 32),
            ("b", &[8], GgmlType::F32.id(), 32),
        ],
        64,
    );
    let gguf = Gguf::from_bytes(bytes).unwrap();
    assert_eq!(gguf.tensors().len(), 3);
}

#[test]
fn tensor_after_gap_is_rejected() {
    // `b` would fit after `a`, but llama.cpp packs tensors with no gap between them.
    let (bytes, offsets) = file_with_tensors(
        &[
            ("a", &[8], GgmlType::F32.id(), 0),
            ("b", &[8], GgmlType::F32.id(), 64),
        ],
        96,
    );
    let err = parse_err(bytes);
    assert!(
        matches!(&err, GgufError::UnpackedTensor { tensor, data_offset: 64, expected: 32, offset }
            if tensor == "b" && *offset == offsets[1]),
        "{err}"
    );
}

#[test]
fn tensors_out_of_table_order_are_rejected() {
    let (bytes, _) = file_with_tensors(
        &[
            ("b", &[8], GgmlType::F32.id(), 32),
            ("a", &[8], GgmlType::F32.id(), 0),
        ],
        64,
    );
    let err = parse_err(bytes);
    assert!(
        matches!(&err, GgufError::UnpackedTensor { tensor, data_offset: 32, expected: 0, .. }
            if tensor == "b"),
        "{err}"
    );
}

#[test]
fn changed_tensor_type_is_rejected() {
    // Two Q8_0 rows of 32 values are 68 bytes, padded to 96. As Q4_0 they are 36
    // bytes, padded to 64, so the next tensor no longer starts where it should.
    let mut writer = GgufWriter::new();
    writer
        .add_tensor("w", &[32, 2], GgmlType::Q8_0, &[1; 2 * 34])
        .unwrap()
        .add_tensor("norm", &[8], GgmlType::F32, &[0; 32])
        .unwrap();
    let mut bytes = writer.to_bytes();
    // The type field is the 4 bytes before the data offset field.
    let type_at = Gguf::from_bytes(bytes.clone())
        .unwrap()
        .tensor_info("w")
        .unwrap()
        .offset_field_pos
        - 4;
    bytes[type_at..type_at + 4].copy_from_slice(&GgmlType::Q4_0.id().to_le_bytes());
    let err = parse_err(bytes);
    assert!(
        matches!(&err, GgufError::UnpackedTensor { tensor, data_offset: 96, expected: 64, .. }
            if tensor == "norm"),
        "{err}"
    );
}

// ---- writer ----

#[test]
fn writer_round_trip() {
    let mut writer = GgufWriter::new();
    writer
        .set_str("general.architecture", "gemma3")
        .set_u32("gemma3.block_count", 18)
        .set_i32("i32", -3)
        .set_u64("u64", u64::MAX)
        .set_f32("f32", 0.5)
        .set_bool("flag", true)
        .set_value("i8", MetadataValue::I8(-8))
        .set_str_array("tokenizer.ggml.tokens", &["a", "", "ü"])
        .set_f32_array("tokenizer.ggml.scores", &[1.0, -2.0, 0.0])
        .set_i32_array("tokenizer.ggml.token_type", &[1, 2, 3]);
    let q8_data: Vec<u8> = (0..2 * 34).map(|i| i as u8).collect();
    writer
        .add_tensor("norm", &[3], GgmlType::F32, &[9; 12])
        .unwrap()
        .add_tensor("w", &[32, 2], GgmlType::Q8_0, &q8_data)
        .unwrap()
        .add_tensor("scalar", &[], GgmlType::F16, &[7, 7])
        .unwrap();

    let gguf = Gguf::from_bytes(writer.to_bytes()).unwrap();
    assert_eq!(gguf.version(), 3);
    assert_eq!(gguf.architecture().unwrap(), "gemma3");
    assert_eq!(gguf.get_u32("gemma3.block_count").unwrap(), 18);
    assert_eq!(gguf.get_i32("i32").unwrap(), -3);
    assert_eq!(gguf.get_u64("u64").unwrap(), u64::MAX);
    assert_eq!(gguf.get_f32("f32").unwrap(), 0.5);
    assert!(gguf.get_bool("flag").unwrap());
    assert_eq!(gguf.get_i8("i8").unwrap(), -8);
    assert_eq!(
        gguf.get_str_array("tokenizer.ggml.tokens").unwrap(),
        ["a", "", "ü"]
    );
    assert_eq!(
        gguf.get_f32_array("tokenizer.ggml.scores").unwrap(),
        [1.0, -2.0, 0.0]
    );
    assert_eq!(
        gguf.get_i32_array("tokenizer.ggml.token_type").unwrap(),
        [1, 2, 3]
    );
    assert_eq!(gguf.tensor("norm").unwrap().data(), [9; 12]);
    assert_eq!(gguf.tensor("w").unwrap().data(), q8_data.as_slice());
    assert_eq!(gguf.tensor("w").unwrap().info().offset(), 32);
    assert_eq!(gguf.tensor("scalar").unwrap().data(), [7, 7]);
}

#[test]
fn writer_replaces_keys_in_place() {
    let mut writer = GgufWriter::new();
    writer.set_u32("a", 1).set_u32("b", 2).set_str("a", "again");
    let gguf = Gguf::from_bytes(writer.to_bytes()).unwrap();
    let keys: Vec<&str> = gguf.metadata().map(|(key, _)| key).collect();
    assert_eq!(keys, ["a", "b"]);
    assert_eq!(gguf.get_str("a").unwrap(), "again");
}

#[test]
fn writer_alignment() {
    let mut writer = GgufWriter::new();
    writer.set_alignment(128).unwrap();
    writer
        .add_tensor("a", &[1], GgmlType::F32, &[1; 4])
        .unwrap()
        .add_tensor("b", &[1], GgmlType::F32, &[2; 4])
        .unwrap();
    let gguf = Gguf::from_bytes(writer.to_bytes()).unwrap();
    assert_eq!(gguf.alignment(), 128);
    assert!(gguf.data_offset().is_multiple_of(128));
    assert_eq!(gguf.tensor("b").unwrap().info().offset(), 128);
    assert_eq!(gguf.tensor("b").unwrap().data(), [2; 4]);

    for bad in [0, 3, 48, 1 << 40] {
        let err = GgufWriter::new().set_alignment(bad).unwrap_err();
        assert!(
            matches!(err, GgufError::InvalidAlignment { .. }),
            "{bad}: {err}"
        );
    }
}

#[test]
fn writer_with_invalid_alignment_key() {
    for value in [0, 48] {
        let mut writer = GgufWriter::new();
        writer.set_u32("general.alignment", value);
        writer
            .add_tensor("t", &[1], GgmlType::F32, &[0; 4])
            .unwrap();
        let err = Gguf::from_bytes(writer.to_bytes()).unwrap_err();
        assert!(
            matches!(err, GgufError::InvalidAlignment { .. }),
            "{value}: {err}"
        );
    }
}

#[test]
fn writer_rejects_bad_tensors() {
    let mut writer = GgufWriter::new();
    writer
        .add_tensor("t", &[4], GgmlType::F32, &[0; 16])
        .unwrap();
    let err = writer
        .add_tensor("t", &[4], GgmlType::F32, &[0; 16])
        .unwrap_err();
    assert!(matches!(err, GgufError::DuplicateTensor { .. }), "{err}");
    let err = writer
        .add_tensor("u", &[4], GgmlType::F32, &[0; 15])
        .unwrap_err();
    assert!(
        matches!(
            err,
            GgufError::TensorDataSize {
                expected: Some(16),
                found: 15,
                ..
            }
        ),
        "{err}"
    );
    let err = writer
        .add_tensor("q", &[16], GgmlType::Q4_0, &[0; 9])
        .unwrap_err();
    assert!(
        matches!(err, GgufError::RowNotBlockMultiple { .. }),
        "{err}"
    );
    let err = writer
        .add_tensor("d", &[1, 1, 1, 1, 1], GgmlType::F32, &[0; 4])
        .unwrap_err();
    assert!(
        matches!(err, GgufError::TooManyDims { n_dims: 5, .. }),
        "{err}"
    );
    let err = writer
        .add_tensor("big", &[usize::MAX, 2], GgmlType::F32, &[])
        .unwrap_err();
    assert!(
        matches!(err, GgufError::TensorDataSize { expected: None, .. }),
        "{err}"
    );
}

#[test]
fn writer_copies_values_exactly() {
    let source = Gguf::from_bytes(valid_file(3)).unwrap();
    let mut writer = GgufWriter::new();
    for (key, value) in source.metadata() {
        writer.set_value(key, value);
    }
    for tensor in source.tensor_refs() {
        writer
            .add_tensor(
                tensor.name(),
                tensor.dims(),
                tensor.ggml_type(),
                tensor.data(),
            )
            .unwrap();
    }
    let copy = Gguf::from_bytes(writer.to_bytes()).unwrap();
    let original: Vec<_> = source.metadata().collect();
    let copied: Vec<_> = copy.metadata().collect();
    assert_eq!(original, copied);
    for (a, b) in source.tensor_refs().zip(copy.tensor_refs()) {
        assert_eq!(a.info(), b.info());
        assert_eq!(a.data(), b.data());
    }
}

#[test]
fn errors_escape_and_cut_names_from_the_file() {
    use super::error::shown;
    assert_eq!(shown("general.name"), "general.name");
    assert_eq!(shown("a\nb\0"), "a\\nb\\0");
    let long = "k".repeat(300);
    let quoted = shown(&long);
    assert!(quoted.starts_with(&"k".repeat(80)), "{quoted}");
    assert!(quoted.ends_with("... (300 bytes)"), "{quoted}");
    let err = GgufError::DuplicateKey {
        key: "x\ny".into(),
        offset: 3,
    };
    assert_eq!(err.to_string(), "duplicate metadata key 'x\\ny' at byte 3");
}
