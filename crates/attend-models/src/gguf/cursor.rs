//! A bounds-checked little-endian reader over the bytes of a GGUF file.
//!
//! Every read checks the bytes left before it slices, and every length or
//! count is checked against the bytes left before anything is allocated or
//! looped over, so a corrupt file yields a [`GgufError`] and never a panic.

use std::fmt;

use super::error::{shown, GgufError};
use super::value::{MetadataArray, MetadataValue, ValueType};

/// Maximum nesting of arrays inside arrays. The GGUF format allows arrays of
/// arrays, and this limit bounds the parser's recursion over them.
pub(super) const MAX_ARRAY_DEPTH: usize = 8;

/// The part of the file being read, named in error messages.
#[derive(Clone, Copy, Debug)]
pub(super) enum Item<'a> {
    Header,
    /// The metadata entry with this index, before its key is known.
    EntryIndex(u64),
    Key(&'a str),
    /// The tensor info with this index, before its name is known.
    TensorIndex(u64),
    Tensor(&'a str),
}

impl fmt::Display for Item<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Header => f.write_str("header"),
            Item::EntryIndex(i) => write!(f, "metadata entry {i}"),
            Item::Key(key) => write!(f, "metadata key '{}'", shown(key)),
            Item::TensorIndex(i) => write!(f, "tensor info {i}"),
            Item::Tensor(name) => write!(f, "tensor info '{}'", shown(name)),
        }
    }
}

#[derive(Clone)]
pub(super) struct Cursor<'a> {
    bytes: &'a [u8],
    /// Index into `bytes` of the next unread byte.
    pos: usize,
    /// File offset of `bytes[0]`, so errors report positions in the file.
    base: usize,
    pub(super) item: Item<'a>,
}

/// Prints the position, not the bytes.
impl fmt::Debug for Cursor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cursor")
            .field("offset", &self.offset())
            .field("remaining", &self.remaining())
            .field("item", &self.item)
            .finish()
    }
}

impl<'a> Cursor<'a> {
    pub(super) fn new(bytes: &'a [u8], base: usize) -> Cursor<'a> {
        Cursor {
            bytes,
            pos: 0,
            base,
            item: Item::Header,
        }
    }

    /// File offset of the next unread byte.
    pub(super) fn offset(&self) -> usize {
        self.base + self.pos
    }

    pub(super) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn field(&self, field: &str) -> String {
        format!("{field} of {}", self.item)
    }

    /// Takes the next `n` bytes.
    pub(super) fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                field: self.field(field),
                offset: self.offset(),
                needed: n,
                available: self.remaining(),
            });
        }
        let taken = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub(super) fn u8(&mut self, field: &str) -> Result<u8, GgufError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(super) fn u32(&mut self, field: &str) -> Result<u32, GgufError> {
        self.array(field).map(u32::from_le_bytes)
    }

    pub(super) fn u64(&mut self, field: &str) -> Result<u64, GgufError> {
        self.array(field).map(u64::from_le_bytes)
    }

    /// Checks that `count` items of at least `min_size` bytes each fit in the
    /// bytes left, and returns `count` as a `usize`. `offset` is where the
    /// count field starts.
    pub(super) fn check_count(
        &self,
        count: u64,
        min_size: usize,
        field: &str,
        offset: usize,
    ) -> Result<usize, GgufError> {
        let min_bytes = count.checked_mul(min_size as u64);
        match min_bytes {
            Some(min_bytes) if min_bytes <= self.remaining() as u64 => Ok(count as usize),
            _ => Err(GgufError::CountTooLarge {
                field: self.field(field),
                offset,
                count,
                min_bytes: min_bytes.unwrap_or(u64::MAX),
                remaining: self.remaining(),
            }),
        }
    }

    /// Reads a GGUF string: a u64 byte length, then that many UTF-8 bytes.
    /// `len_field` names the length field in errors.
    pub(super) fn string(&mut self, field: &str, len_field: &str) -> Result<&'a str, GgufError> {
        let len_offset = self.offset();
        let len = self.u64(len_field)?;
        let len = self.check_count(len, 1, len_field, len_offset)?;
        let start = self.offset();
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes).map_err(|err| GgufError::InvalidUtf8 {
            field: self.field(field),
            offset: start,
            valid_up_to: err.valid_up_to(),
        })
    }

    /// Reads a value type id.
    pub(super) fn value_type(&mut self, field: &str) -> Result<ValueType, GgufError> {
        let offset = self.offset();
        let type_id = self.u32(field)?;
        ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
            field: self.field(field),
            offset,
            type_id,
        })
    }

    /// Reads and validates one value of type `ty`. `depth` is the array
    /// nesting level of the value, 0 for a top-level value.
    pub(super) fn value(
        &mut self,
        ty: ValueType,
        depth: usize,
    ) -> Result<MetadataValue<'a>, GgufError> {
        const FIELD: &str = "value";
        Ok(match ty {
            ValueType::U8 => MetadataValue::U8(self.u8(FIELD)?),
            ValueType::I8 => MetadataValue::I8(i8::from_le_bytes(self.array(FIELD)?)),
            ValueType::U16 => MetadataValue::U16(u16::from_le_bytes(self.array(FIELD)?)),
            ValueType::I16 => MetadataValue::I16(i16::from_le_bytes(self.array(FIELD)?)),
            ValueType::U32 => MetadataValue::U32(self.u32(FIELD)?),
            ValueType::I32 => MetadataValue::I32(i32::from_le_bytes(self.array(FIELD)?)),
            ValueType::U64 => MetadataValue::U64(self.u64(FIELD)?),
            ValueType::I64 => MetadataValue::I64(i64::from_le_bytes(self.array(FIELD)?)),
            ValueType::F32 => MetadataValue::F32(f32::from_le_bytes(self.array(FIELD)?)),
            ValueType::F64 => MetadataValue::F64(f64::from_le_bytes(self.array(FIELD)?)),
            ValueType::Bool => MetadataValue::Bool(self.bool(FIELD)?),
            ValueType::String => MetadataValue::String(self.string("string", "string length")?),
            ValueType::Array => MetadataValue::Array(self.array_value(depth)?),
        })
    }

    fn bool(&mut self, field: &str) -> Result<bool, GgufError> {
        let offset = self.offset();
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(GgufError::InvalidBool {
                field: self.field(field),
                offset,
                value,
            }),
        }
    }

    /// Reads the element type and count of an array that [`Cursor::value`]
    /// has validated before, and takes the rest of the cursor's bytes as its
    /// elements without walking them. The cursor must span exactly the array.
    pub(super) fn array_header_trusted(&mut self) -> Result<MetadataArray<'a>, GgufError> {
        let elem_type = self.value_type("array element type")?;
        let len = self.u64("array length")?;
        let data_offset = self.offset();
        let data = self.take(self.remaining(), "array elements")?;
        Ok(MetadataArray {
            elem_type,
            // The parser checked that `len` elements fit in the file.
            len: len as usize,
            data,
            data_offset,
        })
    }

    /// Reads an array's element type and count, then walks its elements to
    /// validate them and find where the array ends.
    fn array_value(&mut self, depth: usize) -> Result<MetadataArray<'a>, GgufError> {
        let header_offset = self.offset();
        if depth >= MAX_ARRAY_DEPTH {
            return Err(GgufError::ArrayTooDeep {
                field: self.field("array value"),
                offset: header_offset,
                max_depth: MAX_ARRAY_DEPTH,
            });
        }
        let elem_type = self.value_type("array element type")?;
        let count_offset = self.offset();
        let count = self.u64("array length")?;
        let len = self.check_count(count, elem_type.min_size(), "array length", count_offset)?;

        let data_start = self.pos;
        match elem_type.fixed_size() {
            Some(size) if elem_type != ValueType::Bool => {
                // `check_count` showed that `len * size` bytes remain.
                self.take(len * size, "array elements")?;
            }
            _ => {
                for _ in 0..len {
                    self.value(elem_type, depth + 1)?;
                }
            }
        }
        Ok(MetadataArray {
            elem_type,
            len,
            data: &self.bytes[data_start..self.pos],
            data_offset: self.base + data_start,
        })
    }
}
