//! Tensor descriptions and borrowed tensor data.

use crate::GgmlType;

/// Most dimensions a ggml tensor has (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// One tensor's entry in the file's tensor table, validated against the file.
///
/// `dims` are in ggml order: `dims[0]` is the row length, the contiguous
/// innermost dimension. A Hugging Face weight of shape `[out, in]` is stored
/// with `dims == [in, out]`.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub(super) name: String,
    pub(super) dims: Vec<usize>,
    pub(super) ggml_type: GgmlType,
    pub(super) offset: usize,
    pub(super) n_elements: usize,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) row_bytes: usize,
    pub(super) size_bytes: usize,
    /// File offset of this tensor's data offset field, for error messages.
    pub(super) offset_field_pos: usize,
}

/// Equal when name, dimensions, type and data offset are; where the info
/// sits in its file does not count.
impl PartialEq for TensorInfo {
    fn eq(&self, other: &TensorInfo) -> bool {
        self.name == other.name
            && self.dims == other.dims
            && self.ggml_type == other.ggml_type
            && self.offset == other.offset
    }
}

impl Eq for TensorInfo {}

impl TensorInfo {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Dimensions in ggml order, innermost first (0 to 4 of them).
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// Byte offset of the tensor's data from the start of the data section.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Product of the dimensions (1 for a tensor with no dimensions).
    pub fn n_elements(&self) -> usize {
        self.n_elements
    }

    /// Bytes of the tensor's data.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    /// Row length: `dims[0]`, or 1 for a tensor with no dimensions.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Number of rows: the product of every dimension after the first.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes of one row; rows are whole numbers of blocks, so this is exact.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }
}

/// A tensor's description and its bytes, borrowed in place from the file.
#[derive(Clone, Copy)]
pub struct TensorRef<'a> {
    info: &'a TensorInfo,
    data: &'a [u8],
}

/// Prints the description and the data's length, not the bytes.
impl std::fmt::Debug for TensorRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorRef")
            .field("info", self.info)
            .field("data_bytes", &self.data.len())
            .finish()
    }
}

impl<'a> TensorRef<'a> {
    pub(super) fn new(info: &'a TensorInfo, data: &'a [u8]) -> TensorRef<'a> {
        TensorRef { info, data }
    }

    pub fn info(&self) -> &'a TensorInfo {
        self.info
    }

    /// Returns the tensor's bytes as stored: `rows()` rows of `row_bytes()`
    /// bytes. The offset from the data section start is a multiple of the
    /// file's alignment. The address is only as aligned as the buffer is.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    pub fn name(&self) -> &'a str {
        &self.info.name
    }

    /// Dimensions in ggml order, innermost first.
    pub fn dims(&self) -> &'a [usize] {
        &self.info.dims
    }

    pub fn ggml_type(&self) -> GgmlType {
        self.info.ggml_type
    }

    pub fn n_elements(&self) -> usize {
        self.info.n_elements
    }

    /// Row length, `dims[0]`.
    pub fn cols(&self) -> usize {
        self.info.cols()
    }

    /// Number of rows, the product of the dimensions after the first.
    pub fn rows(&self) -> usize {
        self.info.rows()
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.info.row_bytes()
    }
}
