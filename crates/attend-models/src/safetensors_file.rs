//! A safetensors file mapped into memory, read tensor by tensor with its dtype
//! and shape checked against what the caller expects.
//!
//! The header is parsed and validated once by the `safetensors` crate (offsets
//! inside the file, sizes that agree with shapes), so every later read is a bounds-
//! checked slice of the mapping. Tensors are copied out as `Vec<f32>`: the data
//! section of a safetensors file gives no alignment guarantee for `f32`.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensorError, SafeTensors};

/// Errors from opening a safetensors file or reading a tensor from it.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    /// The file could not be opened or mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The header is malformed or disagrees with the file size.
    #[error("{path} is not a valid safetensors file ({source}); re-download the model")]
    Header {
        path: PathBuf,
        #[source]
        source: SafeTensorError,
    },
    /// The file has no tensor of this name.
    #[error("{path} has no tensor `{name}`; the file does not match config.json")]
    MissingTensor { path: PathBuf, name: String },
    /// The tensor is stored in another element type.
    #[error("tensor `{name}` in {path} is {found:?}, expected {expected:?}")]
    WrongDtype {
        path: PathBuf,
        name: String,
        expected: Dtype,
        found: Dtype,
    },
    /// The tensor's shape differs from the one the config implies.
    #[error(
        "tensor `{name}` in {path} has shape {found:?}, expected {expected:?} from config.json"
    )]
    WrongShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
}

/// A memory-mapped safetensors file with its parsed header.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    /// Byte offset of the data section: 8 bytes of header length plus the header.
    data_start: usize,
    metadata: Metadata,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("bytes", &self.mmap.len())
            .finish()
    }
}

impl SafetensorsFile {
    /// Maps `path` and validates its header.
    ///
    /// # Errors
    /// [`SafetensorsError::Io`] when the file cannot be opened or mapped,
    /// [`SafetensorsError::Header`] when the header is invalid or its offsets do not
    /// cover the file exactly.
    pub fn open(path: &Path) -> Result<Self, SafetensorsError> {
        let io_error = |source| SafetensorsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_error)?;
        // SAFETY: the mapping is read-only and private to this value. Another process
        // truncating or rewriting the file while it is mapped would change the bytes
        // under us, which model files do not see while a model loads. Every read below
        // copies the bytes out and checks bounds against the mapping length.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_error)?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|source| SafetensorsError::Header {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            data_start: 8 + header_len,
            metadata,
        })
    }

    /// Returns the file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the names of the tensors in the file.
    pub fn tensor_names(&self) -> Vec<String> {
        self.metadata.offset_keys()
    }

    /// Reads the f32 tensor `name`, which must have exactly the shape `expected`.
    ///
    /// # Shapes
    /// Returns the tensor row-major, `expected.iter().product()` values.
    ///
    /// # Errors
    /// [`SafetensorsError::MissingTensor`], [`SafetensorsError::WrongDtype`] or
    /// [`SafetensorsError::WrongShape`], each naming the tensor.
    pub fn tensor_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, SafetensorsError> {
        let info = self
            .metadata
            .info(name)
            .ok_or_else(|| SafetensorsError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
        if info.dtype != Dtype::F32 {
            return Err(SafetensorsError::WrongDtype {
                path: self.path.clone(),
                name: name.to_string(),
                expected: Dtype::F32,
                found: info.dtype,
            });
        }
        if info.shape != expected {
            return Err(SafetensorsError::WrongShape {
                path: self.path.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
                found: info.shape.clone(),
            });
        }

        // `read_metadata` checked that the offsets agree with dtype and shape and lie
        // inside the file; `get` keeps this read safe even if that ever changed.
        let (start, end) = info.data_offsets;
        let bytes = self
            .mmap
            .get(self.data_start + start..self.data_start + end)
            .ok_or_else(|| SafetensorsError::Header {
                path: self.path.clone(),
                source: SafeTensorError::MetadataIncompleteBuffer,
            })?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}
