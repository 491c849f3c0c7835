//! The typed errors of the GGUF reader.

use std::path::PathBuf;

use crate::GgmlType;

/// Errors from reading a GGUF file or looking up its metadata and tensors.
///
/// Errors about the file's structure name the field that failed and the
/// byte offset in the file where that field starts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file could not be opened or memory-mapped.
    #[error("failed to read GGUF file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The first four bytes are not `GGUF`.
    #[error("invalid GGUF magic {found:02x?} at byte 0 (expected the bytes of \"GGUF\"); the input is not a GGUF file")]
    BadMagic { found: Vec<u8> },

    /// The version field is a version this reader does not parse.
    #[error("unsupported GGUF version {version} at byte 4; only versions 2 and 3 are supported (convert version 1 files with a current llama.cpp)")]
    UnsupportedVersion { version: u32 },

    /// The version field reads as 2 or 3 only with its bytes swapped, so the
    /// file is a big-endian GGUF.
    #[error("GGUF file is big-endian (version {version} with swapped bytes at byte 4); only little-endian files are supported, so convert it with llama.cpp's gguf tools")]
    BigEndian { version: u32 },

    /// The file ends inside a field.
    #[error(
        "file truncated in {field} at byte {offset}: {needed} bytes needed, {available} available"
    )]
    Truncated {
        field: String,
        offset: usize,
        needed: usize,
        available: usize,
    },

    /// A length or count read from the file needs more bytes than remain, so
    /// the file is corrupt and nothing is allocated for it.
    #[error("{field} at byte {offset} is {count}, which needs at least {min_bytes} bytes, but only {remaining} bytes remain")]
    CountTooLarge {
        field: String,
        offset: usize,
        count: u64,
        /// Smallest number of bytes `count` items occupy, saturated at `u64::MAX`.
        min_bytes: u64,
        remaining: usize,
    },

    /// A metadata value type id is not one of the 13 GGUF value types.
    #[error("unknown GGUF value type {type_id} in {field} at byte {offset}")]
    UnknownValueType {
        field: String,
        offset: usize,
        type_id: u32,
    },

    /// Arrays nest deeper than the reader accepts.
    #[error("{field} at byte {offset} nests arrays deeper than {max_depth} levels")]
    ArrayTooDeep {
        field: String,
        offset: usize,
        max_depth: usize,
    },

    /// A bool value is neither 0 nor 1.
    #[error("invalid bool byte {value} in {field} at byte {offset} (expected 0 or 1)")]
    InvalidBool {
        field: String,
        offset: usize,
        value: u8,
    },

    /// A string is not valid UTF-8.
    #[error("{field} at byte {offset} is not valid UTF-8 (invalid byte at string position {valid_up_to})")]
    InvalidUtf8 {
        field: String,
        offset: usize,
        valid_up_to: usize,
    },

    /// Two metadata entries share a key.
    #[error("duplicate metadata key '{}' at byte {offset}", shown(key))]
    DuplicateKey { key: String, offset: usize },

    /// `general.alignment` is not a nonzero power of two stored as a u32.
    #[error("invalid general.alignment at byte {offset}: {found}; expected a u32 power of two")]
    InvalidAlignment { offset: usize, found: String },

    /// Two tensors share a name.
    #[error("duplicate tensor name '{}' at byte {offset}", shown(name))]
    DuplicateTensor { name: String, offset: usize },

    /// A tensor has more dimensions than ggml supports.
    #[error("tensor '{tensor}' has {n_dims} dimensions (field at byte {offset}); at most {max} are supported")]
    TooManyDims {
        tensor: String,
        offset: usize,
        n_dims: u32,
        max: usize,
    },

    /// The product of a tensor's dimensions, or its byte size, overflows.
    #[error("tensor '{tensor}' dimensions {dims:?} (at byte {offset}) overflow the element count or byte size")]
    SizeOverflow {
        tensor: String,
        offset: usize,
        dims: Vec<u64>,
    },

    /// A tensor type id is not one of the ggml types in [`GgmlType`].
    #[error("tensor '{tensor}' has unknown ggml type id {type_id} (field at byte {offset})")]
    UnknownTensorType {
        tensor: String,
        offset: usize,
        type_id: u32,
    },

    /// A tensor's row length is not a whole number of its type's blocks.
    #[error("tensor '{tensor}' row length {row_len} (dims at byte {offset}) is not a multiple of the {ggml_type} block size {block_elems}")]
    RowNotBlockMultiple {
        tensor: String,
        offset: usize,
        row_len: u64,
        ggml_type: GgmlType,
        block_elems: usize,
    },

    /// A tensor's data offset is not a multiple of the file's alignment.
    #[error("tensor '{tensor}' data offset {data_offset} (field at byte {offset}) is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        tensor: String,
        offset: usize,
        data_offset: u64,
        alignment: usize,
    },

    /// A tensor's bytes extend past the end of the file.
    #[error("tensor '{tensor}' data [{data_offset}, {data_offset} + {size_bytes}) (offset field at byte {offset}) lies outside the {data_len}-byte data section")]
    TensorOutOfBounds {
        tensor: String,
        offset: usize,
        data_offset: u64,
        size_bytes: usize,
        data_len: usize,
    },

    /// Two tensors' byte ranges overlap.
    #[error("tensor '{second}' (offset field at byte {offset}) overlaps tensor '{first}' in the data section")]
    OverlappingTensors {
        first: String,
        second: String,
        offset: usize,
    },

    /// A tensor does not start where the tensors before it end, padded to the
    /// alignment. Usually a type or dimension in the tensor table was changed.
    #[error("tensor '{tensor}' data offset {data_offset} (field at byte {offset}) should be {expected}, the padded end of the tensors before it; the tensor table is corrupt (a tensor's type or dimensions were changed), so download or convert the file again")]
    UnpackedTensor {
        tensor: String,
        offset: usize,
        data_offset: u64,
        expected: usize,
    },

    /// Tensor data given to the writer has another length than its
    /// dimensions and type need.
    #[error("tensor '{tensor}' data has {found} bytes, expected {expected:?} for its dimensions and type")]
    TensorDataSize {
        tensor: String,
        /// `None` when the size overflows or the row is not whole blocks.
        expected: Option<usize>,
        found: usize,
    },

    /// A metadata key is not in the file.
    #[error("metadata key '{key}' not found")]
    MissingKey { key: String },

    /// A metadata value has another type than the getter reads.
    #[error("metadata key '{key}' has type {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: String,
        found: String,
    },

    /// An integer value does not fit the requested integer type.
    #[error("metadata key '{key}' value {value} does not fit in {target}")]
    OutOfRange {
        key: String,
        value: i128,
        target: &'static str,
    },

    /// No tensor has the requested name.
    #[error("tensor '{name}' not found")]
    TensorNotFound { name: String },
}

impl GgufError {
    /// Whether this error reports a missing metadata key.
    pub fn is_missing_key(&self) -> bool {
        matches!(self, GgufError::MissingKey { .. })
    }
}

/// Turns a [`GgufError::MissingKey`] into `Ok(None)`, for metadata keys that
/// have a default.
pub trait OptionalKey<T> {
    /// Maps `Err(MissingKey)` to `Ok(None)` and `Ok(v)` to `Ok(Some(v))`;
    /// other errors pass through.
    fn optional(self) -> Result<Option<T>, GgufError>;
}

impl<T> OptionalKey<T> for Result<T, GgufError> {
    fn optional(self) -> Result<Option<T>, GgufError> {
        match self {
            Ok(value) => Ok(Some(value)),
            Err(GgufError::MissingKey { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }
}

/// Maximum length, in characters, of a key or tensor name quoted in an error.
const SHOWN_CHARS: usize = 80;

/// Formats a key or tensor name read from a file for an error message. Control
/// characters are escaped, so a corrupt length cannot print raw bytes, and the
/// text is cut after [`SHOWN_CHARS`] characters.
pub(super) fn shown(name: &str) -> String {
    let escaped: String = name.escape_debug().collect();
    match escaped.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{}... ({} bytes)", &escaped[..cut], name.len()),
        None => escaped,
    }
}
