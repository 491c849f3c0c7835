//! Feeds arbitrary bytes to the GGUF reader. Parsing must return `Ok` or
//! `Err` without panicking, and a file that parses must be readable through
//! every accessor without panicking.
//!
//! A useful starting corpus is a few small GGUF files, for example the
//! header of a real model cut to its first 64 KiB:
//!   head -c 65536 model.gguf > fuzz/corpus/gguf_parse/real_prefix

#![no_main]

use attend_models::gguf::{Gguf, MetadataValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(gguf) = Gguf::from_bytes(data.to_vec()) else {
        return;
    };
    let _ = gguf.summary();

    let keys: Vec<String> = gguf.metadata().map(|(key, _)| key.to_owned()).collect();
    for key in &keys {
        let _ = gguf.get_u32(key);
        let _ = gguf.get_f32(key);
        let _ = gguf.get_str(key);
        let _ = gguf.get_bool(key);
        let _ = gguf.get_integer::<usize>(key);
        let _ = gguf.get_str_array(key);
        let _ = gguf.get_f32_array(key);
        let _ = gguf.get_i32_array(key);
        let _ = gguf.get_integer_array::<i64>(key);
        if let Ok(MetadataValue::Array(array)) = gguf.get(key) {
            assert!(array.iter().count() <= array.len());
        }
    }

    for tensor in gguf.tensor_refs() {
        assert_eq!(tensor.data().len(), tensor.info().size_bytes());
        assert_eq!(tensor.rows() * tensor.row_bytes(), tensor.data().len());
    }
});
