//! Storage of cached K or V rows in f32, f16, bf16 or int8 with per-head scales.
//!
//! A row is one token's `[n_kv_heads, head_dim]` values. Rows are quantised when they
//! are written and exposed raw ([`KvRows`]), so a kernel converts them on the fly.

use half::{bf16, f16, slice::HalfFloatSliceExt};

use super::KvError;

/// Element type of cached K and V rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvDtype {
    F32,
    F16,
    Bf16,
    /// Symmetric 8-bit integers with one f32 scale per token and kv head:
    /// `x ~= value * scale`, `scale = max |x| / 127` over the head's `head_dim` values.
    Int8,
}

impl KvDtype {
    /// Returns the bytes of one stored element (the int8 scales are counted separately).
    pub fn element_bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 | KvDtype::Bf16 => 2,
            KvDtype::Int8 => 1,
        }
    }

    /// Returns the bytes of one token's K or V row, scales included.
    pub fn row_bytes(self, n_kv_heads: usize, head_dim: usize) -> usize {
        let values = n_kv_heads * head_dim * self.element_bytes();
        match self {
            KvDtype::Int8 => values + n_kv_heads * std::mem::size_of::<f32>(),
            _ => values,
        }
    }
}

impl std::fmt::Display for KvDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
            KvDtype::Bf16 => "bf16",
            KvDtype::Int8 => "int8",
        })
    }
}

impl std::str::FromStr for KvDtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(KvDtype::F32),
            "f16" => Ok(KvDtype::F16),
            "bf16" => Ok(KvDtype::Bf16),
            "int8" | "i8" => Ok(KvDtype::Int8),
            other => Err(format!(
                "unknown KV dtype `{other}`; expected f32, f16, bf16 or int8"
            )),
        }
    }
}

/// Borrowed K or V rows of consecutive cached tokens, in their stored type.
///
/// # Shapes
/// Values `[tokens, n_kv_heads, head_dim]`; int8 `scales` `[tokens, n_kv_heads]`.
#[derive(Debug, Clone, Copy)]
pub enum KvRows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
    Int8 { values: &'a [i8], scales: &'a [f32] },
}

impl KvRows<'_> {
    pub fn dtype(&self) -> KvDtype {
        match self {
            KvRows::F32(_) => KvDtype::F32,
            KvRows::F16(_) => KvDtype::F16,
            KvRows::Bf16(_) => KvDtype::Bf16,
            KvRows::Int8 { .. } => KvDtype::Int8,
        }
    }

    /// Returns the number of stored values (`tokens * n_kv_heads * head_dim`).
    pub fn values_len(&self) -> usize {
        match self {
            KvRows::F32(values) => values.len(),
            KvRows::F16(values) => values.len(),
            KvRows::Bf16(values) => values.len(),
            KvRows::Int8 { values, .. } => values.len(),
        }
    }

    /// Converts row `row_idx` to f32 in `out`.
    ///
    /// # Shapes
    /// `out: [n_kv_heads * head_dim]`, one row.
    ///
    /// # Errors
    /// [`KvError::RowOutOfRange`] when `row_idx` is past the rows or `out` is empty;
    /// [`KvError::ShapeMismatch`] when `head_dim` is 0 or does not divide `out.len()`, or
    /// the int8 scales do not match.
    pub fn row_to_f32(
        &self,
        row_idx: usize,
        head_dim: usize,
        out: &mut [f32],
    ) -> Result<(), KvError> {
        let row_len = out.len();
        let rows = self.values_len().checked_div(row_len).unwrap_or(0);
        if row_idx >= rows {
            return Err(KvError::RowOutOfRange { row_idx, rows });
        }
        let n_kv_heads = row_len.checked_div(head_dim).unwrap_or(0);
        let scales_fit = match self {
            KvRows::Int8 { scales, .. } => scales.len() == rows * n_kv_heads,
            _ => true,
        };
        if n_kv_heads * head_dim != row_len || !scales_fit {
            return Err(KvError::ShapeMismatch {
                name: "out",
                len: row_len,
                tokens: 1,
                n_kv_heads,
                head_dim,
            });
        }
        let range = row_idx * row_len..(row_idx + 1) * row_len;
        match self {
            KvRows::F32(values) => out.copy_from_slice(&values[range]),
            KvRows::F16(values) => values[range].convert_to_f32_slice(out),
            KvRows::Bf16(values) => values[range].convert_to_f32_slice(out),
            KvRows::Int8 { values, scales } => {
                let row_scales = &scales[row_idx * n_kv_heads..(row_idx + 1) * n_kv_heads];
                for ((out_head, head), &scale) in out
                    .chunks_exact_mut(head_dim)
                    .zip(values[range].chunks_exact(head_dim))
                    .zip(row_scales)
                {
                    for (o, &q) in out_head.iter_mut().zip(head) {
                        *o = q as f32 * scale;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Typed buffer of `slots` rows; slot `s` is elements `s * row_len..(s + 1) * row_len`.
#[derive(Debug, Clone)]
enum Buffer {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
    /// `values: [slots, n_kv_heads, head_dim]`, `scales: [slots, n_kv_heads]`.
    Int8 {
        values: Vec<i8>,
        scales: Vec<f32>,
    },
}

/// Fixed number of row slots of one dtype for K or V.
#[derive(Debug, Clone)]
pub(crate) struct RowStore {
    n_kv_heads: usize,
    head_dim: usize,
    slots: usize,
    buffer: Buffer,
}

fn zeroed<T: Clone>(len: usize, zero: T, bytes: usize) -> Result<Vec<T>, KvError> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| KvError::Allocation { bytes })?;
    v.resize(len, zero);
    Ok(v)
}

impl RowStore {
    /// Allocates `slots` zeroed rows.
    ///
    /// # Errors
    /// [`KvError::SizeOverflow`] when the size overflows, [`KvError::Allocation`] when
    /// the memory is not available.
    pub(crate) fn new(
        dtype: KvDtype,
        n_kv_heads: usize,
        head_dim: usize,
        slots: usize,
    ) -> Result<Self, KvError> {
        let row_bytes = dtype.row_bytes(n_kv_heads, head_dim);
        let bytes = slots
            .checked_mul(row_bytes)
            .ok_or_else(|| KvError::SizeOverflow {
                slots: slots.to_string(),
            })?;
        let len = slots * n_kv_heads * head_dim;
        let buffer = match dtype {
            KvDtype::F32 => Buffer::F32(zeroed(len, 0.0, bytes)?),
            KvDtype::F16 => Buffer::F16(zeroed(len, f16::ZERO, bytes)?),
            KvDtype::Bf16 => Buffer::Bf16(zeroed(len, bf16::ZERO, bytes)?),
            KvDtype::Int8 => Buffer::Int8 {
                values: zeroed(len, 0, bytes)?,
                scales: zeroed(slots * n_kv_heads, 0.0, bytes)?,
            },
        };
        Ok(Self {
            n_kv_heads,
            head_dim,
            slots,
            buffer,
        })
    }

    fn row_len(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Returns the bytes this store holds, int8 scales included.
    pub(crate) fn bytes(&self) -> usize {
        self.slots * self.dtype().row_bytes(self.n_kv_heads, self.head_dim)
    }

    pub(crate) fn dtype(&self) -> KvDtype {
        match self.buffer {
            Buffer::F32(_) => KvDtype::F32,
            Buffer::F16(_) => KvDtype::F16,
            Buffer::Bf16(_) => KvDtype::Bf16,
            Buffer::Int8 { .. } => KvDtype::Int8,
        }
    }

    /// Writes one f32 row into `slot`, quantising for int8.
    ///
    /// The caller checked `slot < slots`, `row.len() == n_kv_heads * head_dim` and, for
    /// int8, that every value is finite.
    pub(crate) fn write(&mut self, slot: usize, row: &[f32]) {
        let row_len = self.row_len();
        let range = slot * row_len..(slot + 1) * row_len;
        match &mut self.buffer {
            Buffer::F32(values) => values[range].copy_from_slice(row),
            Buffer::F16(values) => values[range].convert_from_f32_slice(row),
            Buffer::Bf16(values) => values[range].convert_from_f32_slice(row),
            Buffer::Int8 { values, scales } => {
                let head_dim = self.head_dim;
                let row_scales = &mut scales[slot * self.n_kv_heads..(slot + 1) * self.n_kv_heads];
                for ((quantised, head), scale) in values[range]
                    .chunks_exact_mut(head_dim)
                    .zip(row.chunks_exact(head_dim))
                    .zip(row_scales)
                {
                    *scale = quantise_head(head, quantised);
                }
            }
        }
    }

    /// Copies `count` rows from slot `src` to slot `dst`.
    pub(crate) fn copy_rows(&mut self, src: usize, dst: usize, count: usize) {
        let row_len = self.row_len();
        let heads = self.n_kv_heads;
        let values_range = src * row_len..(src + count) * row_len;
        match &mut self.buffer {
            Buffer::F32(values) => values.copy_within(values_range, dst * row_len),
            Buffer::F16(values) => values.copy_within(values_range, dst * row_len),
            Buffer::Bf16(values) => values.copy_within(values_range, dst * row_len),
            Buffer::Int8 { values, scales } => {
                values.copy_within(values_range, dst * row_len);
                scales.copy_within(src * heads..(src + count) * heads, dst * heads);
            }
        }
    }

    /// Borrows `count` rows starting at slot `start`; the caller keeps the range in bounds.
    pub(crate) fn rows(&self, start: usize, count: usize) -> KvRows<'_> {
        let row_len = self.row_len();
        let range = start * row_len..(start + count) * row_len;
        match &self.buffer {
            Buffer::F32(values) => KvRows::F32(&values[range]),
            Buffer::F16(values) => KvRows::F16(&values[range]),
            Buffer::Bf16(values) => KvRows::Bf16(&values[range]),
            Buffer::Int8 { values, scales } => KvRows::Int8 {
                values: &values[range],
                scales: &scales[start * self.n_kv_heads..(start + count) * self.n_kv_heads],
            },
        }
    }
}

/// Quantises one head to int8 and returns its scale.
///
/// `scale = max |x| / 127` and `q = round(x / scale)`, so `|x - q * scale| <= scale / 2`
/// before f32 rounding. An all-zero head gets scale 0 and zero values.
fn quantise_head(head: &[f32], out: &mut [i8]) -> f32 {
    let max_abs = head.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if max_abs == 0.0 {
        out.fill(0);
        return 0.0;
    }
    let scale = max_abs / 127.0;
    let inverse = 1.0 / scale;
    for (q, &x) in out.iter_mut().zip(head) {
        *q = (x * inverse).round().clamp(-127.0, 127.0) as i8;
    }
    scale
}
