//! Parsing and validation of the GGUF header, metadata and tensor table.
//!
//! The layout is little-endian. A header of the magic `GGUF`, a u32
//! version, a u64 tensor count and a u64 metadata entry count comes first.
//! The metadata entries follow (string key, u32 value type, value), then the
//! tensor infos (string name, u32 dimension count, u64 dimensions, u32 ggml
//! type, u64 data offset). Padding up to the alignment ends the header, and
//! the data section that tensor offsets are relative to comes last.

use std::collections::HashMap;

use super::cursor::{Cursor, Item};
use super::error::GgufError;
use super::tensor::{TensorInfo, MAX_DIMS};
use super::value::{MetadataValue, ValueType};
use crate::GgmlType;

pub(super) const MAGIC: [u8; 4] = *b"GGUF";

/// Alignment of the data section and of tensor offsets when the file has no
/// `general.alignment` entry.
pub const DEFAULT_ALIGNMENT: usize = 32;

pub(super) const ALIGNMENT_KEY: &str = "general.alignment";

/// Minimum bytes of a metadata entry: key length, value type, a 1-byte value.
const MIN_ENTRY_BYTES: usize = 8 + 4 + 1;

/// Minimum bytes of a tensor info: name length, dimension count, type, offset.
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 4 + 8;

/// Number of entries to reserve up front; longer tables grow as they are
/// read, so a forged count allocates nothing by itself.
const MAX_RESERVE: usize = 1024;

/// A metadata entry: the key and where its value starts in the file.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub(super) key: String,
    pub(super) value_type: ValueType,
    pub(super) value_offset: usize,
    /// File offset one past the value's last byte.
    pub(super) value_end: usize,
}

/// Everything the reader keeps from the header, owning no file bytes.
#[derive(Debug)]
pub(super) struct Header {
    pub(super) version: u32,
    pub(super) entries: Vec<Entry>,
    pub(super) key_index: HashMap<String, usize>,
    pub(super) tensors: Vec<TensorInfo>,
    pub(super) tensor_index: HashMap<String, usize>,
    pub(super) alignment: usize,
    pub(super) data_offset: usize,
}

/// Parses and validates the whole header of a GGUF file held in `bytes`.
pub(super) fn parse(bytes: &[u8]) -> Result<Header, GgufError> {
    let mut cursor = Cursor::new(bytes, 0);

    let magic = cursor.take(4, "magic")?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic {
            found: magic.to_vec(),
        });
    }
    let version = cursor.u32("version")?;
    let supported = |v: u32| v == 2 || v == 3;
    if !supported(version) {
        if supported(version.swap_bytes()) {
            return Err(GgufError::BigEndian {
                version: version.swap_bytes(),
            });
        }
        return Err(GgufError::UnsupportedVersion { version });
    }
    let tensor_count_offset = cursor.offset();
    let tensor_count = cursor.u64("tensor count")?;
    let entry_count_offset = cursor.offset();
    let entry_count = cursor.u64("metadata entry count")?;
    let entry_count = cursor.check_count(
        entry_count,
        MIN_ENTRY_BYTES,
        "metadata entry count",
        entry_count_offset,
    )?;

    let (entries, key_index, alignment) = parse_metadata(&mut cursor, entry_count)?;

    cursor.item = Item::Header;
    let tensor_count = cursor.check_count(
        tensor_count,
        MIN_TENSOR_INFO_BYTES,
        "tensor count",
        tensor_count_offset,
    )?;
    let (tensors, tensor_index) = parse_tensor_infos(&mut cursor, tensor_count, alignment)?;

    // A file with tensors must reach the data section, even when every
    // tensor is empty, so that slicing at `data_offset` stays in bounds. A
    // file without tensors may end right after its metadata.
    let padding_end = align_up(cursor.offset(), alignment);
    let data_offset = match padding_end {
        Some(end) if end <= bytes.len() || tensors.is_empty() => end,
        _ => {
            return Err(GgufError::Truncated {
                field: "padding before the data section".to_owned(),
                offset: cursor.offset(),
                needed: padding_end.map_or(usize::MAX, |end| end - cursor.offset()),
                available: cursor.remaining(),
            })
        }
    };
    let data_len = bytes.len().saturating_sub(data_offset);
    check_tensor_bounds(&tensors, data_len)?;
    check_overlaps(&tensors)?;
    check_packed(&tensors, alignment)?;

    Ok(Header {
        version,
        entries,
        key_index,
        tensors,
        tensor_index,
        alignment,
        data_offset,
    })
}

type Metadata = (Vec<Entry>, HashMap<String, usize>, usize);

fn parse_metadata(cursor: &mut Cursor<'_>, entry_count: usize) -> Result<Metadata, GgufError> {
    let mut entries = Vec::with_capacity(entry_count.min(MAX_RESERVE));
    let mut key_index = HashMap::with_capacity(entry_count.min(MAX_RESERVE));
    let mut alignment = DEFAULT_ALIGNMENT;

    for entry_idx in 0..entry_count {
        cursor.item = Item::EntryIndex(entry_idx as u64);
        let key_offset = cursor.offset();
        let key = cursor.string("key", "key length")?;
        cursor.item = Item::Key(key);
        if key_index.contains_key(key) {
            return Err(GgufError::DuplicateKey {
                key: key.to_owned(),
                offset: key_offset,
            });
        }

        let value_type = cursor.value_type("value type")?;
        let value_offset = cursor.offset();
        let value = cursor.value(value_type, 0)?;
        if key == ALIGNMENT_KEY {
            alignment = match value {
                MetadataValue::U32(n) if n.is_power_of_two() => n as usize,
                other => {
                    return Err(GgufError::InvalidAlignment {
                        offset: value_offset,
                        found: format!("{} {other}", other.type_description()),
                    })
                }
            };
        }

        key_index.insert(key.to_owned(), entries.len());
        entries.push(Entry {
            key: key.to_owned(),
            value_type,
            value_offset,
            value_end: cursor.offset(),
        });
    }
    Ok((entries, key_index, alignment))
}

type TensorTable = (Vec<TensorInfo>, HashMap<String, usize>);

fn parse_tensor_infos(
    cursor: &mut Cursor<'_>,
    tensor_count: usize,
    alignment: usize,
) -> Result<TensorTable, GgufError> {
    let mut tensors = Vec::with_capacity(tensor_count.min(MAX_RESERVE));
    let mut tensor_index = HashMap::with_capacity(tensor_count.min(MAX_RESERVE));

    for tensor_idx in 0..tensor_count {
        cursor.item = Item::TensorIndex(tensor_idx as u64);
        let name_offset = cursor.offset();
        let name = cursor.string("name", "name length")?;
        cursor.item = Item::Tensor(name);
        if tensor_index.contains_key(name) {
            return Err(GgufError::DuplicateTensor {
                name: name.to_owned(),
                offset: name_offset,
            });
        }

        let info = parse_tensor_info(cursor, name, alignment)?;
        tensor_index.insert(name.to_owned(), tensors.len());
        tensors.push(info);
    }
    Ok((tensors, tensor_index))
}

/// Parses the fields after a tensor's name and checks its shape, type and
/// offset on their own; bounds and overlaps need the whole table.
fn parse_tensor_info(
    cursor: &mut Cursor<'_>,
    name: &str,
    alignment: usize,
) -> Result<TensorInfo, GgufError> {
    let n_dims_offset = cursor.offset();
    let n_dims = cursor.u32("dimension count")?;
    if n_dims as usize > MAX_DIMS {
        return Err(GgufError::TooManyDims {
            tensor: name.to_owned(),
            offset: n_dims_offset,
            n_dims,
            max: MAX_DIMS,
        });
    }
    let dims_offset = cursor.offset();
    let mut raw_dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        raw_dims.push(cursor.u64("dimension")?);
    }

    let type_offset = cursor.offset();
    let type_id = cursor.u32("ggml type")?;
    let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
        tensor: name.to_owned(),
        offset: type_offset,
        type_id,
    })?;

    let offset_field_pos = cursor.offset();
    let offset = cursor.u64("data offset")?;

    let overflow = || GgufError::SizeOverflow {
        tensor: name.to_owned(),
        offset: dims_offset,
        dims: raw_dims.clone(),
    };
    // The product of the nonzero dimensions bounds every partial product,
    // so once it fits, `rows`, `cols` and `n_elements` cannot overflow, even
    // for a zero-sized tensor that carries huge dimensions.
    let nonzero_product = raw_dims
        .iter()
        .filter(|&&dim| dim != 0)
        .try_fold(1u64, |acc, &dim| acc.checked_mul(dim))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(overflow)?;
    // Each dimension is 0 or at most `nonzero_product`, so it fits `usize`.
    let dims: Vec<usize> = raw_dims.iter().map(|&dim| dim as usize).collect();
    let n_elements = if dims.contains(&0) {
        0
    } else {
        nonzero_product
    };
    let cols = dims.first().copied().unwrap_or(1);
    let rows = dims.iter().skip(1).product::<usize>();

    let block_elems = ggml_type.block_elems();
    if !cols.is_multiple_of(block_elems) {
        return Err(GgufError::RowNotBlockMultiple {
            tensor: name.to_owned(),
            offset: dims_offset,
            row_len: cols as u64,
            ggml_type,
            block_elems,
        });
    }
    let row_bytes = (cols / block_elems)
        .checked_mul(ggml_type.block_bytes())
        .ok_or_else(overflow)?;
    let size_bytes = rows.checked_mul(row_bytes).ok_or_else(overflow)?;

    if !offset.is_multiple_of(alignment as u64) {
        return Err(GgufError::MisalignedTensor {
            tensor: name.to_owned(),
            offset: offset_field_pos,
            data_offset: offset,
            alignment,
        });
    }
    // An offset beyond `usize` cannot lie inside the file.
    let offset_usize = usize::try_from(offset).map_err(|_| GgufError::TensorOutOfBounds {
        tensor: name.to_owned(),
        offset: offset_field_pos,
        data_offset: offset,
        size_bytes,
        data_len: 0,
    })?;

    Ok(TensorInfo {
        name: name.to_owned(),
        dims,
        rows,
        cols,
        row_bytes,
        ggml_type,
        offset: offset_usize,
        n_elements,
        size_bytes,
        offset_field_pos,
    })
}

fn check_tensor_bounds(tensors: &[TensorInfo], data_len: usize) -> Result<(), GgufError> {
    for info in tensors {
        let end = info.offset.checked_add(info.size_bytes);
        if end.is_none_or(|end| end > data_len) {
            return Err(GgufError::TensorOutOfBounds {
                tensor: info.name.clone(),
                offset: info.offset_field_pos,
                data_offset: info.offset as u64,
                size_bytes: info.size_bytes,
                data_len,
            });
        }
    }
    Ok(())
}

/// Checks that no two tensors with data share a byte. Tensors of zero bytes
/// occupy nothing and never overlap.
fn check_overlaps(tensors: &[TensorInfo]) -> Result<(), GgufError> {
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().filter(|t| t.size_bytes > 0).collect();
    by_offset.sort_by_key(|t| (t.offset, t.size_bytes));

    let mut previous: Option<&TensorInfo> = None;
    for info in by_offset {
        if let Some(prev) = previous {
            // Bounds were checked, so this sum does not overflow.
            let prev_end = prev.offset + prev.size_bytes;
            if info.offset < prev_end {
                return Err(GgufError::OverlappingTensors {
                    first: prev.name.clone(),
                    second: info.name.clone(),
                    offset: info.offset_field_pos,
                });
            }
        }
        // With no overlap so far, this tensor ends after every earlier one.
        previous = Some(info);
    }
    Ok(())
}

/// Checks that the tensors are packed in table order, as llama.cpp's loader
/// requires: each starts where the one before it ends, padded to the
/// alignment. A tensor whose type or dimensions were changed in the table keeps
/// its old data, so its size no longer matches and the next offset is wrong.
fn check_packed(tensors: &[TensorInfo], alignment: usize) -> Result<(), GgufError> {
    let mut expected = 0usize;
    for info in tensors {
        if info.offset != expected {
            return Err(GgufError::UnpackedTensor {
                tensor: info.name.clone(),
                offset: info.offset_field_pos,
                data_offset: info.offset as u64,
                expected,
            });
        }
        // Bounds were checked, so the end lies in the data section. Padding it
        // overflows only past `usize::MAX`, where no later tensor can start.
        expected = align_up(info.offset + info.size_bytes, alignment).unwrap_or(usize::MAX);
    }
    Ok(())
}

fn align_up(offset: usize, alignment: usize) -> Option<usize> {
    offset.checked_next_multiple_of(alignment)
}
