//! Reader for GGUF model files, versions 2 and 3.
//!
//! [`Gguf::open`] memory-maps a file and validates its whole header before it
//! returns: metadata values, tensor shapes and types, alignment, bounds and
//! overlaps. Afterwards metadata getters and [`Gguf::tensor`] read in place
//! from the mapping, so tensor data is never copied.
//!
//! ```no_run
//! use attend_models::gguf::{Gguf, OptionalKey};
//!
//! let gguf = Gguf::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let arch = gguf.architecture()?;
//! let n_layers: usize = gguf.get_integer(&format!("{arch}.block_count"))?;
//! let rope_base = gguf
//!     .get_f32(&format!("{arch}.rope.freq_base"))
//!     .optional()?
//!     .unwrap_or(10_000.0);
//! let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
//! let embed = gguf.tensor("token_embd.weight")?;
//! println!("{n_layers} layers, {} tokens, {:?} {}", tokens.len(), embed.dims(), embed.ggml_type());
//! # Ok::<(), attend_models::gguf::GgufError>(())
//! ```

mod cursor;
mod error;
mod parse;
mod summary;
mod tensor;
mod value;
mod writer;

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

pub use error::{GgufError, OptionalKey};
pub use parse::DEFAULT_ALIGNMENT;
pub use tensor::{TensorInfo, TensorRef, MAX_DIMS};
pub use value::{MetadataArray, MetadataArrayIter, MetadataValue, ValueType};
pub use writer::GgufWriter;

use cursor::{Cursor, Item};
use parse::{Entry, Header};

/// The file's bytes: a read-only mapping or an owned buffer.
enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(map) => map,
            Storage::Owned(vec) => vec,
        }
    }
}

/// A validated GGUF file: its metadata and tensor table, with the file's
/// bytes kept mapped (or owned) so tensors are read in place.
pub struct Gguf {
    storage: Storage,
    version: u32,
    entries: Vec<Entry>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: usize,
    data_offset: usize,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("version", &self.version)
            .field("file_bytes", &self.bytes().len())
            .field("metadata_entries", &self.entries.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

impl Gguf {
    /// Memory-maps the file at `path` and validates its header.
    ///
    /// # Errors
    /// [`GgufError::Io`] when the file cannot be opened or mapped, and any
    /// structural error of [`Gguf::from_bytes`].
    pub fn open(path: impl AsRef<Path>) -> Result<Gguf, GgufError> {
        let path = path.as_ref();
        let io_error = |source| GgufError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io_error)?;
        // SAFETY: the mapping is read-only and lives as long as `Gguf`. If
        // another process truncated or rewrote the file while it is mapped,
        // the bytes would change under the reader. Like other mmap-based
        // model loaders, this one requires that model files stay unmodified
        // while open.
        let map = unsafe { Mmap::map(&file) }.map_err(io_error)?;
        Gguf::from_storage(Storage::Mapped(map))
    }

    /// Validates a GGUF file held in memory, taking ownership of the buffer.
    ///
    /// # Errors
    /// A [`GgufError`] naming the field and byte offset of the first problem.
    /// The header checks cover bad magic, an unsupported version, truncated
    /// fields, counts larger than the bytes left, unknown value or tensor
    /// types, invalid UTF-8 and duplicate keys or tensor names. The tensor
    /// checks cover an invalid alignment, more than four dimensions, size
    /// overflow, a row length off the type's block size, and data that is
    /// misaligned, outside the file or overlapping another tensor.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Gguf, GgufError> {
        Gguf::from_storage(Storage::Owned(bytes))
    }

    fn from_storage(storage: Storage) -> Result<Gguf, GgufError> {
        let Header {
            version,
            entries,
            key_index,
            tensors,
            tensor_index,
            alignment,
            data_offset,
        } = parse::parse(storage.bytes())?;
        Ok(Gguf {
            storage,
            version,
            entries,
            key_index,
            tensors,
            tensor_index,
            alignment,
            data_offset,
        })
    }

    /// Returns the whole file.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// The GGUF format version, 2 or 3.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of the data section and of every tensor offset, in bytes.
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// File offset where the data section starts.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    // ---- metadata ----

    /// Number of metadata entries.
    pub fn metadata_len(&self) -> usize {
        self.entries.len()
    }

    /// Returns whether the metadata has an entry for `key`.
    pub fn contains_key(&self, key: &str) -> bool {
        self.key_index.contains_key(key)
    }

    /// Iterates over the metadata entries in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, MetadataValue<'_>)> + '_ {
        self.entries.iter().filter_map(|entry| {
            // Every entry was read once by the same parser, so this succeeds.
            self.read_entry(entry)
                .ok()
                .map(|value| (entry.key.as_str(), value))
        })
    }

    /// Reads the value stored under `key`.
    ///
    /// # Errors
    /// [`GgufError::MissingKey`] when the file has no such key.
    pub fn get(&self, key: &str) -> Result<MetadataValue<'_>, GgufError> {
        let entry = self
            .key_index
            .get(key)
            .map(|&idx| &self.entries[idx])
            .ok_or_else(|| GgufError::MissingKey {
                key: key.to_owned(),
            })?;
        self.read_entry(entry)
    }

    fn read_entry<'a>(&'a self, entry: &'a Entry) -> Result<MetadataValue<'a>, GgufError> {
        let value_bytes = &self.bytes()[entry.value_offset..entry.value_end];
        let mut cursor = Cursor::new(value_bytes, entry.value_offset);
        cursor.item = Item::Key(&entry.key);
        if entry.value_type == ValueType::Array {
            // The parser walked every element already; only the element type
            // and count are read again, so large arrays cost nothing here.
            return cursor.array_header_trusted().map(MetadataValue::Array);
        }
        cursor.value(entry.value_type, 0)
    }

    /// `general.architecture`, the prefix of the model's hyperparameter keys
    /// (`llama`, `gemma3`, ...).
    ///
    /// # Errors
    /// [`GgufError::MissingKey`] or [`GgufError::WrongType`] when the key is
    /// missing or not a string.
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.get_str("general.architecture")
    }

    /// Reads an integer of any of the eight integer types, converted to `T`.
    ///
    /// # Errors
    /// [`GgufError::MissingKey`], [`GgufError::WrongType`] for a value that is
    /// not an integer, [`GgufError::OutOfRange`] when it does not fit `T`.
    pub fn get_integer<T: TryFrom<i128>>(&self, key: &str) -> Result<T, GgufError> {
        let value = self.get(key)?;
        let int = value
            .as_integer()
            .ok_or_else(|| wrong_type(key, "integer", &value))?;
        T::try_from(int).map_err(|_| GgufError::OutOfRange {
            key: key.to_owned(),
            value: int,
            target: std::any::type_name::<T>(),
        })
    }

    /// Reads a string.
    ///
    /// # Errors
    /// [`GgufError::MissingKey`], or [`GgufError::WrongType`] when the value is
    /// not a string.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        match self.get(key)? {
            MetadataValue::String(s) => Ok(s),
            other => Err(wrong_type(key, "string", &other)),
        }
    }

    /// Reads an array of any element type.
    ///
    /// # Errors
    /// [`GgufError::MissingKey`], or [`GgufError::WrongType`] when the value is
    /// not an array.
    pub fn get_array(&self, key: &str) -> Result<MetadataArray<'_>, GgufError> {
        match self.get(key)? {
            MetadataValue::Array(array) => Ok(array),
            other => Err(wrong_type(key, "array", &other)),
        }
    }

    fn get_typed_array(
        &self,
        key: &str,
        elem_type: ValueType,
    ) -> Result<MetadataArray<'_>, GgufError> {
        let value = self.get(key)?;
        match value {
            MetadataValue::Array(array) if array.elem_type() == elem_type => Ok(array),
            other => Err(wrong_type(key, &format!("array of {elem_type}"), &other)),
        }
    }

    /// Reads an array of strings, borrowed from the file
    /// (`tokenizer.ggml.tokens`, `tokenizer.ggml.merges`).
    ///
    /// # Errors
    /// [`GgufError::MissingKey`], or [`GgufError::WrongType`] when the value is
    /// not an array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let array = self.get_typed_array(key, ValueType::String)?;
        Ok(array
            .iter()
            .filter_map(|value| match value {
                MetadataValue::String(s) => Some(s),
                _ => None,
            })
            .collect())
    }

    /// Reads an array of f32 (`tokenizer.ggml.scores`).
    ///
    /// # Errors
    /// [`GgufError::MissingKey`], or [`GgufError::WrongType`] when the value is
    /// not an array of f32.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>, GgufError> {
        let array = self.get_typed_array(key, ValueType::F32)?;
        Ok(array
            .raw_bytes()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// Reads an array of i32 (`tokenizer.ggml.token_type`).
    ///
    /// # Errors
    /// [`GgufError::MissingKey`], or [`GgufError::WrongType`] when the value is
    /// not an array of i32.
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>, GgufError> {
        let array = self.get_typed_array(key, ValueType::I32)?;
        Ok(array
            .raw_bytes()
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// Reads an array whose elements are of any integer type, each converted
    /// to `T`.
    ///
    /// # Errors
    /// [`GgufError::MissingKey`], [`GgufError::WrongType`] when the value is
    /// not an array of integers, [`GgufError::OutOfRange`] when an element
    /// does not fit `T`.
    pub fn get_integer_array<T: TryFrom<i128>>(&self, key: &str) -> Result<Vec<T>, GgufError> {
        let array = self.get_array(key)?;
        let mut out = Vec::with_capacity(array.len());
        for value in array.iter() {
            let int = value.as_integer().ok_or_else(|| GgufError::WrongType {
                key: key.to_owned(),
                expected: "array of integers".to_owned(),
                found: format!("array of {}", array.elem_type()),
            })?;
            out.push(T::try_from(int).map_err(|_| GgufError::OutOfRange {
                key: key.to_owned(),
                value: int,
                target: std::any::type_name::<T>(),
            })?);
        }
        Ok(out)
    }

    // ---- tensors ----

    /// Returns the tensor table in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Looks up the description of the tensor named `name`.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&idx| &self.tensors[idx])
    }

    /// Looks up the tensor named `name` with its bytes, borrowed in place.
    ///
    /// # Shapes
    /// `dims()` are in ggml order. The data contains `rows()` rows of
    /// `cols()` elements, `row_bytes()` bytes each.
    ///
    /// # Errors
    /// [`GgufError::TensorNotFound`] when no tensor has that name.
    pub fn tensor(&self, name: &str) -> Result<TensorRef<'_>, GgufError> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| GgufError::TensorNotFound {
                name: name.to_owned(),
            })?;
        Ok(self.tensor_ref(info))
    }

    /// Iterates over every tensor with its bytes, in file order.
    pub fn tensor_refs(&self) -> impl Iterator<Item = TensorRef<'_>> + '_ {
        self.tensors.iter().map(|info| self.tensor_ref(info))
    }

    fn tensor_ref<'a>(&'a self, info: &'a TensorInfo) -> TensorRef<'a> {
        // The parser checked `offset + size_bytes <= data section length`.
        let start = self.data_offset + info.offset;
        TensorRef::new(info, &self.bytes()[start..start + info.size_bytes])
    }
}

/// Generates the strict scalar getters, one per metadata value type.
macro_rules! scalar_getters {
    ($($(#[$doc:meta])* $name:ident => $variant:ident: $ty:ty, $type_name:literal;)*) => {
        impl Gguf {
            $(
                $(#[$doc])*
                ///
                /// # Errors
                /// [`GgufError::MissingKey`], or [`GgufError::WrongType`] when the
                /// value has another type.
                pub fn $name(&self, key: &str) -> Result<$ty, GgufError> {
                    match self.get(key)? {
                        MetadataValue::$variant(v) => Ok(v),
                        other => Err(wrong_type(key, $type_name, &other)),
                    }
                }
            )*
        }
    };
}

scalar_getters! {
    /// Reads a u8 value; [`Gguf::get_integer`] accepts any integer type.
    get_u8 => U8: u8, "u8";
    /// Reads an i8 value; [`Gguf::get_integer`] accepts any integer type.
    get_i8 => I8: i8, "i8";
    /// Reads a u16 value; [`Gguf::get_integer`] accepts any integer type.
    get_u16 => U16: u16, "u16";
    /// Reads an i16 value; [`Gguf::get_integer`] accepts any integer type.
    get_i16 => I16: i16, "i16";
    /// Reads a u32 value; [`Gguf::get_integer`] accepts any integer type.
    get_u32 => U32: u32, "u32";
    /// Reads an i32 value; [`Gguf::get_integer`] accepts any integer type.
    get_i32 => I32: i32, "i32";
    /// Reads a u64 value; [`Gguf::get_integer`] accepts any integer type.
    get_u64 => U64: u64, "u64";
    /// Reads an i64 value; [`Gguf::get_integer`] accepts any integer type.
    get_i64 => I64: i64, "i64";
    /// Reads an f32 value.
    get_f32 => F32: f32, "f32";
    /// Reads an f64 value.
    get_f64 => F64: f64, "f64";
    /// Reads a bool value.
    get_bool => Bool: bool, "bool";
}

fn wrong_type(key: &str, expected: &str, found: &MetadataValue<'_>) -> GgufError {
    GgufError::WrongType {
        key: key.to_owned(),
        expected: expected.to_owned(),
        found: found.type_description(),
    }
}

#[cfg(test)]
mod tests;
