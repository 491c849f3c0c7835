//! Metadata value types and borrowed views of metadata values.

use std::fmt;

use super::cursor::Cursor;

/// The type tag of a GGUF metadata value, with the id the file stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    /// Maps a GGUF value type id to the type, or `None` for an unknown id.
    pub fn from_id(id: u32) -> Option<ValueType> {
        Some(match id {
            0 => ValueType::U8,
            1 => ValueType::I8,
            2 => ValueType::U16,
            3 => ValueType::I16,
            4 => ValueType::U32,
            5 => ValueType::I32,
            6 => ValueType::F32,
            7 => ValueType::Bool,
            8 => ValueType::String,
            9 => ValueType::Array,
            10 => ValueType::U64,
            11 => ValueType::I64,
            12 => ValueType::F64,
            _ => return None,
        })
    }

    /// Returns the id that GGUF files store for this type.
    pub fn id(self) -> u32 {
        match self {
            ValueType::U8 => 0,
            ValueType::I8 => 1,
            ValueType::U16 => 2,
            ValueType::I16 => 3,
            ValueType::U32 => 4,
            ValueType::I32 => 5,
            ValueType::F32 => 6,
            ValueType::Bool => 7,
            ValueType::String => 8,
            ValueType::Array => 9,
            ValueType::U64 => 10,
            ValueType::I64 => 11,
            ValueType::F64 => 12,
        }
    }

    /// Bytes one value takes, or `None` for strings and arrays, whose size
    /// depends on their contents.
    pub fn fixed_size(self) -> Option<usize> {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => Some(1),
            ValueType::U16 | ValueType::I16 => Some(2),
            ValueType::U32 | ValueType::I32 | ValueType::F32 => Some(4),
            ValueType::U64 | ValueType::I64 | ValueType::F64 => Some(8),
            ValueType::String | ValueType::Array => None,
        }
    }

    /// Minimum bytes of one value of this type: a string is at least its u64
    /// length, an array at least its u32 element type and u64 count.
    pub(super) fn min_size(self) -> usize {
        match self {
            ValueType::String => 8,
            ValueType::Array => 4 + 8,
            fixed => fixed.fixed_size().unwrap_or(1),
        }
    }

    /// Returns the lower-case name used in error messages (`u32`, `string`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "u8",
            ValueType::I8 => "i8",
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::Bool => "bool",
            ValueType::String => "string",
            ValueType::Array => "array",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F64 => "f64",
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value, borrowing strings and array contents from the file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MetadataValue<'a> {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(&'a str),
    Array(MetadataArray<'a>),
}

impl<'a> MetadataValue<'a> {
    /// Returns the type tag of this value.
    pub fn value_type(&self) -> ValueType {
        match self {
            MetadataValue::U8(_) => ValueType::U8,
            MetadataValue::I8(_) => ValueType::I8,
            MetadataValue::U16(_) => ValueType::U16,
            MetadataValue::I16(_) => ValueType::I16,
            MetadataValue::U32(_) => ValueType::U32,
            MetadataValue::I32(_) => ValueType::I32,
            MetadataValue::U64(_) => ValueType::U64,
            MetadataValue::I64(_) => ValueType::I64,
            MetadataValue::F32(_) => ValueType::F32,
            MetadataValue::F64(_) => ValueType::F64,
            MetadataValue::Bool(_) => ValueType::Bool,
            MetadataValue::String(_) => ValueType::String,
            MetadataValue::Array(_) => ValueType::Array,
        }
    }

    /// Returns the value as an integer when it is one of the eight integer
    /// types.
    pub fn as_integer(&self) -> Option<i128> {
        match *self {
            MetadataValue::U8(v) => Some(v.into()),
            MetadataValue::I8(v) => Some(v.into()),
            MetadataValue::U16(v) => Some(v.into()),
            MetadataValue::I16(v) => Some(v.into()),
            MetadataValue::U32(v) => Some(v.into()),
            MetadataValue::I32(v) => Some(v.into()),
            MetadataValue::U64(v) => Some(v.into()),
            MetadataValue::I64(v) => Some(v.into()),
            _ => None,
        }
    }

    /// Describes the type for error messages, `array of string` for
    /// arrays.
    pub(super) fn type_description(&self) -> String {
        match self {
            MetadataValue::Array(array) => format!("array of {}", array.elem_type()),
            other => other.value_type().name().to_owned(),
        }
    }
}

impl fmt::Display for MetadataValue<'_> {
    /// Writes scalars in full; strings longer than 60 characters and arrays
    /// are shortened, so the output suits a one-line summary.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetadataValue::U8(v) => write!(f, "{v}"),
            MetadataValue::I8(v) => write!(f, "{v}"),
            MetadataValue::U16(v) => write!(f, "{v}"),
            MetadataValue::I16(v) => write!(f, "{v}"),
            MetadataValue::U32(v) => write!(f, "{v}"),
            MetadataValue::I32(v) => write!(f, "{v}"),
            MetadataValue::U64(v) => write!(f, "{v}"),
            MetadataValue::I64(v) => write!(f, "{v}"),
            MetadataValue::F32(v) => write!(f, "{v}"),
            MetadataValue::F64(v) => write!(f, "{v}"),
            MetadataValue::Bool(v) => write!(f, "{v}"),
            MetadataValue::String(s) => {
                const MAX_CHARS: usize = 60;
                if s.chars().count() > MAX_CHARS {
                    let head: String = s.chars().take(MAX_CHARS).collect();
                    write!(f, "{:?}...", head)
                } else {
                    write!(f, "{s:?}")
                }
            }
            MetadataValue::Array(array) => {
                const MAX_ITEMS: usize = 4;
                write!(f, "[{} x {}: ", array.len(), array.elem_type())?;
                for (i, item) in array.iter().take(MAX_ITEMS).enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                if array.len() > MAX_ITEMS {
                    f.write_str(", ...")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// A metadata array: its element type, its length and the bytes of its
/// elements in the file, which the reader has already validated.
#[derive(Clone, Copy)]
pub struct MetadataArray<'a> {
    pub(super) elem_type: ValueType,
    pub(super) len: usize,
    /// The encoded elements, without the array's type and count fields.
    pub(super) data: &'a [u8],
    /// File offset of `data[0]`.
    pub(super) data_offset: usize,
}

/// Equal when the element types and encoded elements are; where the array
/// sits in its file does not count.
impl PartialEq for MetadataArray<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.elem_type == other.elem_type && self.len == other.len && self.data == other.data
    }
}

/// Prints the element type and length, not the elements.
impl fmt::Debug for MetadataArray<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetadataArray")
            .field("elem_type", &self.elem_type)
            .field("len", &self.len)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

impl<'a> MetadataArray<'a> {
    /// Returns the type of every element.
    pub fn elem_type(&self) -> ValueType {
        self.elem_type
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Returns whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The encoded elements as stored in the file (little-endian).
    pub fn raw_bytes(&self) -> &'a [u8] {
        self.data
    }

    /// Iterates over the elements in order.
    pub fn iter(&self) -> MetadataArrayIter<'a> {
        MetadataArrayIter {
            cursor: Cursor::new(self.data, self.data_offset),
            elem_type: self.elem_type,
            remaining: self.len,
        }
    }
}

impl<'a> IntoIterator for MetadataArray<'a> {
    type Item = MetadataValue<'a>;
    type IntoIter = MetadataArrayIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Iterator over the elements of a [`MetadataArray`].
#[derive(Clone, Debug)]
pub struct MetadataArrayIter<'a> {
    cursor: Cursor<'a>,
    elem_type: ValueType,
    remaining: usize,
}

impl<'a> Iterator for MetadataArrayIter<'a> {
    type Item = MetadataValue<'a>;

    fn next(&mut self) -> Option<MetadataValue<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // The reader validated these bytes with the same parser, so a re-read
        // cannot fail; if it ever did, the iteration ends early.
        self.cursor.value(self.elem_type, 1).ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining))
    }
}
