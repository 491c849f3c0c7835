//! Views of attention tensors: BSHD `[batch, seq_len, heads, head_dim]` and packed
//! varlen `[total_tokens, heads, head_dim]`.
//!
//! Strides are in elements. The innermost dimension, `head_dim`, is always contiguous.
//! Input views may overlap (a fused QKV buffer can be viewed three times without
//! copying); output views must not, which [`BshdMut`] checks.

use crate::error::AttendError;

/// The four dimensions of a BSHD tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BshdShape {
    pub batch: usize,
    pub seq_len: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// Element strides of a BSHD tensor; the `head_dim` stride is 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BshdStrides {
    pub batch_stride: usize,
    pub seq_stride: usize,
    pub head_stride: usize,
}

impl BshdShape {
    /// Returns the row-major strides of a contiguous tensor of this shape.
    pub fn contiguous_strides(&self) -> BshdStrides {
        let head_stride = self.head_dim;
        let seq_stride = self.heads * head_stride;
        BshdStrides {
            batch_stride: self.seq_len * seq_stride,
            seq_stride,
            head_stride,
        }
    }

    /// Returns `batch * seq_len * heads * head_dim`, or `None` on overflow.
    pub fn element_count(&self) -> Option<usize> {
        self.batch
            .checked_mul(self.seq_len)?
            .checked_mul(self.heads)?
            .checked_mul(self.head_dim)
    }

    fn as_array(&self) -> [usize; 4] {
        [self.batch, self.seq_len, self.heads, self.head_dim]
    }
}

impl BshdStrides {
    fn as_array(&self) -> [usize; 3] {
        [self.batch_stride, self.seq_stride, self.head_stride]
    }
}

/// Returns the number of elements a view needs: one past its last element.
fn required_len(shape: &BshdShape, strides: &BshdStrides) -> Result<usize, AttendError> {
    if shape.as_array().contains(&0) {
        return Ok(0);
    }
    let overflow = || AttendError::ViewOverflow {
        shape: shape.as_array(),
        strides: strides.as_array(),
    };
    let last = [
        (shape.batch, strides.batch_stride),
        (shape.seq_len, strides.seq_stride),
        (shape.heads, strides.head_stride),
        (shape.head_dim, 1),
    ]
    .iter()
    .try_fold(0usize, |acc, &(dim, stride)| {
        (dim - 1)
            .checked_mul(stride)
            .and_then(|x| acc.checked_add(x))
    })
    .ok_or_else(overflow)?;
    last.checked_add(1).ok_or_else(overflow)
}

fn check_bounds(shape: &BshdShape, strides: &BshdStrides, len: usize) -> Result<(), AttendError> {
    let required = required_len(shape, strides)?;
    if required > len {
        return Err(AttendError::ViewOutOfBounds {
            shape: shape.as_array(),
            strides: strides.as_array(),
            required,
            len,
        });
    }
    Ok(())
}

/// A read-only view of a `[batch, seq_len, heads, head_dim]` tensor.
///
/// Element `(b, s, h, d)` is at `data[b * batch_stride + s * seq_stride + h * head_stride + d]`.
#[derive(Debug)]
pub struct Bshd<'a, T> {
    data: &'a [T],
    shape: BshdShape,
    strides: BshdStrides,
}

impl<T> Clone for Bshd<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Bshd<'_, T> {}

impl<'a, T> Bshd<'a, T> {
    /// Views a contiguous row-major `[batch, seq_len, heads, head_dim]` slice.
    ///
    /// # Errors
    /// [`AttendError::ViewOutOfBounds`] when `data` is shorter than the shape needs,
    /// [`AttendError::ViewOverflow`] when the size overflows `usize`.
    pub fn contiguous(
        data: &'a [T],
        batch: usize,
        seq_len: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self, AttendError> {
        let shape = BshdShape {
            batch,
            seq_len,
            heads,
            head_dim,
        };
        Self::strided(data, shape, shape.contiguous_strides())
    }

    /// Views `data` with the given shape and element strides.
    ///
    /// # Errors
    /// [`AttendError::ViewOutOfBounds`] when the last element lies past the end of
    /// `data`, [`AttendError::ViewOverflow`] when the offsets overflow `usize`.
    pub fn strided(
        data: &'a [T],
        shape: BshdShape,
        strides: BshdStrides,
    ) -> Result<Self, AttendError> {
        check_bounds(&shape, &strides, data.len())?;
        Ok(Self {
            data,
            shape,
            strides,
        })
    }

    /// Returns the shape.
    pub fn shape(&self) -> BshdShape {
        self.shape
    }

    /// Returns the element strides.
    pub fn strides(&self) -> BshdStrides {
        self.strides
    }

    /// Returns the underlying slice.
    pub fn data(&self) -> &'a [T] {
        self.data
    }

    /// Returns the `head_dim` elements at `(batch_idx, seq_idx, head_idx)`, or `None`
    /// when an index is out of range.
    pub fn row(&self, batch_idx: usize, seq_idx: usize, head_idx: usize) -> Option<&'a [T]> {
        if batch_idx >= self.shape.batch
            || seq_idx >= self.shape.seq_len
            || head_idx >= self.shape.heads
        {
            return None;
        }
        let start = batch_idx * self.strides.batch_stride
            + seq_idx * self.strides.seq_stride
            + head_idx * self.strides.head_stride;
        self.data.get(start..start + self.shape.head_dim)
    }
}

/// A mutable f32 view of a `[batch, seq_len, heads, head_dim]` tensor, used for outputs.
///
/// The strides must nest without overlap (`head_stride >= head_dim`,
/// `seq_stride >= heads * head_stride`, `batch_stride >= seq_len * seq_stride`, checked
/// only for dimensions larger than 1), so that every element has its own memory.
#[derive(Debug)]
pub struct BshdMut<'a> {
    data: &'a mut [f32],
    shape: BshdShape,
    strides: BshdStrides,
}

impl<'a> BshdMut<'a> {
    /// Views a contiguous row-major `[batch, seq_len, heads, head_dim]` slice.
    ///
    /// # Errors
    /// [`AttendError::ViewOutOfBounds`] when `data` is shorter than the shape needs,
    /// [`AttendError::ViewOverflow`] when the size overflows `usize`.
    pub fn contiguous(
        data: &'a mut [f32],
        batch: usize,
        seq_len: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self, AttendError> {
        let shape = BshdShape {
            batch,
            seq_len,
            heads,
            head_dim,
        };
        Self::strided(data, shape, shape.contiguous_strides())
    }

    /// Views `data` with the given shape and element strides.
    ///
    /// # Errors
    /// [`AttendError::OverlappingOutput`] when two elements would share memory,
    /// [`AttendError::ViewOutOfBounds`] when the last element lies past the end of
    /// `data`, [`AttendError::ViewOverflow`] when the offsets overflow `usize`.
    pub fn strided(
        data: &'a mut [f32],
        shape: BshdShape,
        strides: BshdStrides,
    ) -> Result<Self, AttendError> {
        check_bounds(&shape, &strides, data.len())?;
        let nested = |dim: usize, stride: usize, inner_extent: Option<usize>| {
            dim <= 1 || inner_extent.is_some_and(|extent| stride >= extent)
        };
        let head_extent = Some(shape.head_dim);
        let seq_extent = shape.heads.checked_mul(strides.head_stride);
        let batch_extent = shape.seq_len.checked_mul(strides.seq_stride);
        let ok = nested(shape.heads, strides.head_stride, head_extent)
            && nested(shape.seq_len, strides.seq_stride, seq_extent)
            && nested(shape.batch, strides.batch_stride, batch_extent);
        if !ok && !shape.as_array().contains(&0) {
            return Err(AttendError::OverlappingOutput {
                shape: shape.as_array(),
                strides: strides.as_array(),
            });
        }
        Ok(Self {
            data,
            shape,
            strides,
        })
    }

    /// Returns the shape.
    pub fn shape(&self) -> BshdShape {
        self.shape
    }

    /// Returns the element strides.
    pub fn strides(&self) -> BshdStrides {
        self.strides
    }

    /// Returns the underlying slice.
    pub fn data_mut(&mut self) -> &mut [f32] {
        self.data
    }
}

/// A read-only view of packed variable-length sequences, `[total_tokens, heads, head_dim]`.
///
/// The sequences lie one after another along the token axis; cumulative offsets
/// (`cu_seqlens`, `batch + 1` entries starting at 0) passed beside the view say where
/// each begins. Element `(t, h, d)` is at `data[t * token_stride + h * head_stride + d]`.
#[derive(Debug)]
pub struct Packed<'a, T> {
    inner: Bshd<'a, T>,
}

impl<T> Clone for Packed<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Packed<'_, T> {}

impl<'a, T> Packed<'a, T> {
    /// Views a contiguous `[total_tokens, heads, head_dim]` slice.
    ///
    /// # Errors
    /// As [`Bshd::contiguous`].
    pub fn contiguous(
        data: &'a [T],
        total_tokens: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self, AttendError> {
        Ok(Self {
            inner: Bshd::contiguous(data, 1, total_tokens, heads, head_dim)?,
        })
    }

    /// Views `data` with token and head strides in elements.
    ///
    /// # Errors
    /// As [`Bshd::strided`].
    pub fn strided(
        data: &'a [T],
        total_tokens: usize,
        heads: usize,
        head_dim: usize,
        token_stride: usize,
        head_stride: usize,
    ) -> Result<Self, AttendError> {
        let shape = BshdShape {
            batch: 1,
            seq_len: total_tokens,
            heads,
            head_dim,
        };
        let strides = BshdStrides {
            batch_stride: 0,
            seq_stride: token_stride,
            head_stride,
        };
        Ok(Self {
            inner: Bshd::strided(data, shape, strides)?,
        })
    }

    /// Returns the number of packed tokens.
    pub fn total_tokens(&self) -> usize {
        self.inner.shape.seq_len
    }

    /// Returns the view as a BSHD view with `batch = 1`.
    pub fn as_bshd(&self) -> Bshd<'a, T> {
        self.inner
    }
}

/// A mutable f32 view of packed variable-length sequences, `[total_tokens, heads, head_dim]`.
#[derive(Debug)]
pub struct PackedMut<'a> {
    inner: BshdMut<'a>,
}

impl<'a> PackedMut<'a> {
    /// Views a contiguous `[total_tokens, heads, head_dim]` slice.
    ///
    /// # Errors
    /// As [`BshdMut::contiguous`].
    pub fn contiguous(
        data: &'a mut [f32],
        total_tokens: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self, AttendError> {
        Ok(Self {
            inner: BshdMut::contiguous(data, 1, total_tokens, heads, head_dim)?,
        })
    }

    /// Views `data` with token and head strides in elements.
    ///
    /// # Errors
    /// As [`BshdMut::strided`].
    pub fn strided(
        data: &'a mut [f32],
        total_tokens: usize,
        heads: usize,
        head_dim: usize,
        token_stride: usize,
        head_stride: usize,
    ) -> Result<Self, AttendError> {
        let shape = BshdShape {
            batch: 1,
            seq_len: total_tokens,
            heads,
            head_dim,
        };
        let strides = BshdStrides {
            batch_stride: 0,
            seq_stride: token_stride,
            head_stride,
        };
        Ok(Self {
            inner: BshdMut::strided(data, shape, strides)?,
        })
    }

    /// Returns the number of packed tokens.
    pub fn total_tokens(&self) -> usize {
        self.inner.shape.seq_len
    }

    /// Returns the view as a BSHD view with `batch = 1`.
    pub fn as_bshd_mut(&mut self) -> BshdMut<'_> {
        BshdMut {
            data: &mut *self.inner.data,
            shape: self.inner.shape,
            strides: self.inner.strides,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_rejects_short_slice() {
        let data = vec![0.0f32; 23];
        let err = Bshd::contiguous(&data, 1, 2, 3, 4).unwrap_err();
        assert!(matches!(
            err,
            AttendError::ViewOutOfBounds {
                required: 24,
                len: 23,
                ..
            }
        ));
    }

    #[test]
    fn view_rejects_overflow() {
        let data = vec![0.0f32; 4];
        let shape = BshdShape {
            batch: 2,
            seq_len: 2,
            heads: 1,
            head_dim: 1,
        };
        let strides = BshdStrides {
            batch_stride: usize::MAX,
            seq_stride: 1,
            head_stride: 1,
        };
        let err = Bshd::strided(&data, shape, strides).unwrap_err();
        assert!(matches!(err, AttendError::ViewOverflow { .. }));
    }

    #[test]
    fn empty_view_with_huge_dims_needs_no_data() {
        let data: [f32; 0] = [];
        let shape = BshdShape {
            batch: usize::MAX,
            seq_len: usize::MAX,
            heads: 0,
            head_dim: 8,
        };
        let strides = BshdStrides {
            batch_stride: 1,
            seq_stride: 1,
            head_stride: 1,
        };
        assert!(Bshd::strided(&data, shape, strides).is_ok());
    }

    #[test]
    fn empty_view_needs_no_data() {
        let data: [f32; 0] = [];
        assert!(Bshd::contiguous(&data, 3, 0, 2, 8).is_ok());
    }

    #[test]
    fn strided_row_reads_fused_buffer() {
        // A fused [seq, 3 (q/k/v), heads = 1, head_dim = 2] buffer viewed as k.
        let data: Vec<f32> = (0..12).map(|x| x as f32).collect();
        let shape = BshdShape {
            batch: 1,
            seq_len: 2,
            heads: 1,
            head_dim: 2,
        };
        let strides = BshdStrides {
            batch_stride: 12,
            seq_stride: 6,
            head_stride: 2,
        };
        let k = Bshd::strided(&data[2..], shape, strides).unwrap();
        assert_eq!(k.row(0, 1, 0).unwrap(), &[8.0, 9.0]);
        assert!(k.row(0, 2, 0).is_none());
    }

    #[test]
    fn output_rejects_overlap() {
        let mut data = vec![0.0f32; 64];
        let shape = BshdShape {
            batch: 1,
            seq_len: 2,
            heads: 2,
            head_dim: 4,
        };
        let strides = BshdStrides {
            batch_stride: 64,
            seq_stride: 8,
            head_stride: 2,
        };
        let err = BshdMut::strided(&mut data, shape, strides).unwrap_err();
        assert!(matches!(err, AttendError::OverlappingOutput { .. }));
        let padded = BshdStrides {
            batch_stride: 64,
            seq_stride: 10,
            head_stride: 5,
        };
        assert!(BshdMut::strided(&mut data, shape, padded).is_ok());
    }
}
