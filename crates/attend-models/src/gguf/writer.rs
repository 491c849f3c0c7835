//! A small GGUF writer, for building test files and rewriting headers.
//!
//! It writes version 3 files in the layout the reader expects: metadata in
//! insertion order, tensor infos, padding to the alignment, then each
//! tensor's data at the next aligned offset.

use std::path::Path;

use super::error::GgufError;
use super::parse::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT};
use super::value::{MetadataValue, ValueType};
use crate::GgmlType;

/// Builds a GGUF file in memory.
///
/// ```
/// use attend_models::gguf::{Gguf, GgufWriter};
/// use attend_models::GgmlType;
///
/// let mut writer = GgufWriter::new();
/// writer.set_str("general.architecture", "llama");
/// writer.set_u32("llama.block_count", 2);
/// writer.add_tensor("output_norm.weight", &[4], GgmlType::F32, &[0; 16])?;
/// let gguf = Gguf::from_bytes(writer.to_bytes())?;
/// assert_eq!(gguf.get_u32("llama.block_count")?, 2);
/// # Ok::<(), attend_models::gguf::GgufError>(())
/// ```
#[derive(Clone, Debug)]
pub struct GgufWriter {
    /// Keys with their value type and encoded value, in insertion order.
    metadata: Vec<(String, ValueType, Vec<u8>)>,
    tensors: Vec<PendingTensor>,
}

#[derive(Clone, Debug)]
struct PendingTensor {
    name: String,
    dims: Vec<usize>,
    ggml_type: GgmlType,
    data: Vec<u8>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        GgufWriter::new()
    }
}

impl GgufWriter {
    /// Starts an empty file with the default alignment of 32 bytes.
    pub fn new() -> GgufWriter {
        GgufWriter {
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Sets `key` to `value`, replacing an earlier value of the same key in
    /// its original position. Arrays are copied from their encoded bytes, so
    /// a value read from another file is copied exactly.
    pub fn set_value(&mut self, key: &str, value: MetadataValue<'_>) -> &mut Self {
        let mut encoded = Vec::new();
        encode_value(&mut encoded, &value);
        self.set_encoded(key, value.value_type(), encoded)
    }

    fn set_encoded(&mut self, key: &str, value_type: ValueType, encoded: Vec<u8>) -> &mut Self {
        match self.metadata.iter_mut().find(|(k, _, _)| k == key) {
            Some(slot) => {
                slot.1 = value_type;
                slot.2 = encoded;
            }
            None => self.metadata.push((key.to_owned(), value_type, encoded)),
        }
        self
    }

    /// Sets `key` to a u32 value.
    pub fn set_u32(&mut self, key: &str, value: u32) -> &mut Self {
        self.set_value(key, MetadataValue::U32(value))
    }

    /// Sets `key` to a i32 value.
    pub fn set_i32(&mut self, key: &str, value: i32) -> &mut Self {
        self.set_value(key, MetadataValue::I32(value))
    }

    /// Sets `key` to a u64 value.
    pub fn set_u64(&mut self, key: &str, value: u64) -> &mut Self {
        self.set_value(key, MetadataValue::U64(value))
    }

    /// Sets `key` to a f32 value.
    pub fn set_f32(&mut self, key: &str, value: f32) -> &mut Self {
        self.set_value(key, MetadataValue::F32(value))
    }

    /// Sets `key` to a bool value.
    pub fn set_bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.set_value(key, MetadataValue::Bool(value))
    }

    /// Sets `key` to a string value.
    pub fn set_str(&mut self, key: &str, value: &str) -> &mut Self {
        self.set_value(key, MetadataValue::String(value))
    }

    /// Sets `general.alignment`, which moves the data section and every
    /// tensor offset to multiples of `alignment`.
    ///
    /// # Errors
    /// [`GgufError::InvalidAlignment`] when `alignment` is not a power of two
    /// that fits a u32.
    pub fn set_alignment(&mut self, alignment: usize) -> Result<&mut Self, GgufError> {
        match u32::try_from(alignment) {
            Ok(value) if value.is_power_of_two() => Ok(self.set_u32(ALIGNMENT_KEY, value)),
            _ => Err(GgufError::InvalidAlignment {
                offset: 0,
                found: format!("usize {alignment}"),
            }),
        }
    }

    /// Sets `key` to an array of strings.
    pub fn set_str_array(&mut self, key: &str, values: &[&str]) -> &mut Self {
        let mut encoded = array_header(ValueType::String, values.len());
        for value in values {
            encode_str(&mut encoded, value);
        }
        self.set_encoded(key, ValueType::Array, encoded)
    }

    /// Sets `key` to an array of f32 values.
    pub fn set_f32_array(&mut self, key: &str, values: &[f32]) -> &mut Self {
        let mut encoded = array_header(ValueType::F32, values.len());
        for value in values {
            encoded.extend_from_slice(&value.to_le_bytes());
        }
        self.set_encoded(key, ValueType::Array, encoded)
    }

    /// Sets `key` to an array of i32 values.
    pub fn set_i32_array(&mut self, key: &str, values: &[i32]) -> &mut Self {
        let mut encoded = array_header(ValueType::I32, values.len());
        for value in values {
            encoded.extend_from_slice(&value.to_le_bytes());
        }
        self.set_encoded(key, ValueType::Array, encoded)
    }

    /// Appends a tensor. `dims` are in ggml order (row length first) and
    /// `data` contains the encoded rows.
    ///
    /// # Shapes
    /// `data.len() == ggml_type.bytes_for(product of dims)`.
    ///
    /// # Errors
    /// [`GgufError::DuplicateTensor`] for a name already added,
    /// [`GgufError::TooManyDims`] for more than four dimensions,
    /// [`GgufError::RowNotBlockMultiple`] when `dims[0]` is not a whole
    /// number of blocks, [`GgufError::TensorDataSize`] when `data` has
    /// another length. Their `offset` fields are 0.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dims: &[usize],
        ggml_type: GgmlType,
        data: &[u8],
    ) -> Result<&mut Self, GgufError> {
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(GgufError::DuplicateTensor {
                name: name.to_owned(),
                offset: 0,
            });
        }
        if dims.len() > super::MAX_DIMS {
            return Err(GgufError::TooManyDims {
                tensor: name.to_owned(),
                offset: 0,
                n_dims: dims.len() as u32,
                max: super::MAX_DIMS,
            });
        }
        let row_len = dims.first().copied().unwrap_or(1);
        if !row_len.is_multiple_of(ggml_type.block_elems()) {
            return Err(GgufError::RowNotBlockMultiple {
                tensor: name.to_owned(),
                offset: 0,
                row_len: row_len as u64,
                ggml_type,
                block_elems: ggml_type.block_elems(),
            });
        }
        let expected = dims
            .iter()
            .try_fold(1usize, |acc, &dim| acc.checked_mul(dim))
            .and_then(|n| ggml_type.bytes_for(n));
        if expected != Some(data.len()) {
            return Err(GgufError::TensorDataSize {
                tensor: name.to_owned(),
                expected,
                found: data.len(),
            });
        }
        self.tensors.push(PendingTensor {
            name: name.to_owned(),
            dims: dims.to_vec(),
            ggml_type,
            data: data.to_vec(),
        });
        Ok(self)
    }

    /// Returns the alignment the data is laid out with. A `general.alignment`
    /// that is not a u32 power of two leaves the default in place, and the
    /// reader rejects such a file.
    fn alignment(&self) -> usize {
        self.metadata
            .iter()
            .find(|(key, value_type, _)| key == ALIGNMENT_KEY && *value_type == ValueType::U32)
            .and_then(|(_, _, value)| value.as_slice().try_into().ok())
            .map(|bytes: [u8; 4]| u32::from_le_bytes(bytes) as usize)
            .filter(|alignment| alignment.is_power_of_two())
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// Encodes the file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let alignment = self.alignment();
        let mut out = Vec::new();
        out.extend_from_slice(&super::parse::MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());

        for (key, value_type, encoded) in &self.metadata {
            encode_str(&mut out, key);
            out.extend_from_slice(&value_type.id().to_le_bytes());
            out.extend_from_slice(encoded);
        }

        let mut offset = 0usize;
        for tensor in &self.tensors {
            encode_str(&mut out, &tensor.name);
            out.extend_from_slice(&(tensor.dims.len() as u32).to_le_bytes());
            for &dim in &tensor.dims {
                out.extend_from_slice(&(dim as u64).to_le_bytes());
            }
            out.extend_from_slice(&tensor.ggml_type.id().to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + tensor.data.len()).next_multiple_of(alignment);
        }

        for tensor in &self.tensors {
            out.resize(out.len().next_multiple_of(alignment), 0);
            out.extend_from_slice(&tensor.data);
        }
        out
    }

    /// Writes the encoded file to `path`.
    ///
    /// # Errors
    /// [`GgufError::Io`] when the file cannot be written.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), GgufError> {
        let path = path.as_ref();
        std::fs::write(path, self.to_bytes()).map_err(|source| GgufError::Io {
            path: path.to_owned(),
            source,
        })
    }
}

fn encode_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn array_header(elem_type: ValueType, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&elem_type.id().to_le_bytes());
    out.extend_from_slice(&(len as u64).to_le_bytes());
    out
}

fn encode_value(out: &mut Vec<u8>, value: &MetadataValue<'_>) {
    match *value {
        MetadataValue::U8(v) => out.push(v),
        MetadataValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::Bool(v) => out.push(v.into()),
        MetadataValue::String(s) => encode_str(out, s),
        MetadataValue::Array(array) => {
            out.extend_from_slice(&array_header(array.elem_type(), array.len()));
            out.extend_from_slice(array.raw_bytes());
        }
    }
}
