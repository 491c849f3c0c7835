//! Quantisation of f32 activations to signed 8-bit blocks.

use super::unpack::{padded_len, GROUP, LANE};
use super::QuantError;
use crate::GgmlType;
use rayon::prelude::*;

/// Activations `x: [tokens, cols]` quantised to signed 8-bit codes, one f32
/// scale per block of `block_elems` values (32 as in ggml's Q8_0, or 256 as
/// in Q8_K), with per-16 sums as Q8_K keeps them.
///
/// Value `c` of token `t` is approximately `scale * code`, where
/// `scale = max |x| / 127` over the value's block and `code = round(x / scale)`.
/// The rounding error is at most `scale / 2 = max |x| / 254` per value.
pub struct QuantizedActivations {
    tokens: usize,
    cols: usize,
    padded: usize,
    block_elems: usize,
    /// `[tokens, padded]`, zero past `cols`
    pub(super) codes: Vec<i8>,
    /// `[tokens, padded / LANE]`: the block scale repeated per 4 codes, zero past `cols`
    pub(super) lane_scales: Vec<f32>,
    /// `[tokens, padded / GROUP]`: `scale * sum(codes)` per 16 codes, zero past `cols`
    pub(super) group_sums: Vec<f32>,
}

impl QuantizedActivations {
    /// Quantises `x` for a product with weights of type `weight_type`: one
    /// scale per 32 values for the 32-element formats, per 256 for the K formats.
    ///
    /// A NaN or infinity makes its block's scale NaN or infinite, so every
    /// product that reads the block is NaN.
    ///
    /// # Shapes
    /// `x: [tokens, cols]`, row-major; `cols` a multiple of the weight block size.
    ///
    /// # Errors
    /// [`QuantError::UnsupportedType`] unless `weight_type` is one of the
    /// quantized [`SUPPORTED_TYPES`](super::SUPPORTED_TYPES),
    /// [`QuantError::ColsNotBlockMultiple`] when `cols` is not a whole number
    /// of blocks, [`QuantError::BufferLength`] when `x.len() != tokens * cols`,
    /// and [`QuantError::ShapeOverflow`] when that product overflows.
    pub fn quantize(
        x: &[f32],
        tokens: usize,
        cols: usize,
        weight_type: GgmlType,
    ) -> Result<Self, QuantError> {
        if !(weight_type.is_quantized() && super::is_supported(weight_type)) {
            return Err(QuantError::UnsupportedType { ty: weight_type });
        }
        let block_elems = weight_type.block_elems();
        if !cols.is_multiple_of(block_elems) {
            return Err(QuantError::ColsNotBlockMultiple {
                ty: weight_type,
                cols,
                block_elems,
            });
        }
        let expected = tokens.checked_mul(cols).ok_or(QuantError::ShapeOverflow {
            name: "x",
            dim0: tokens,
            dim1: cols,
        })?;
        if x.len() != expected {
            return Err(QuantError::BufferLength {
                name: "x",
                dim0: tokens,
                dim1: cols,
                expected,
                actual: x.len(),
            });
        }

        let padded = padded_len(cols);
        let mut this = QuantizedActivations {
            tokens,
            cols,
            padded,
            block_elems,
            codes: vec![0; tokens * padded],
            lane_scales: vec![0.0; tokens * padded / LANE],
            group_sums: vec![0.0; tokens * padded / GROUP],
        };
        if cols == 0 {
            return Ok(this);
        }

        this.codes
            .par_chunks_mut(padded)
            .zip(this.lane_scales.par_chunks_mut(padded / LANE))
            .zip(this.group_sums.par_chunks_mut(padded / GROUP))
            .zip(x.par_chunks(cols))
            .for_each(|(((codes, scales), sums), x)| {
                quantize_row(x, block_elems, codes, scales, sums);
            });
        Ok(this)
    }

    pub fn tokens(&self) -> usize {
        self.tokens
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Values per activation scale: 32 or 256.
    pub fn block_elems(&self) -> usize {
        self.block_elems
    }

    /// The values the codes stand for, `scale * code`, as `[tokens, cols]`.
    pub fn dequantized(&self) -> Vec<f32> {
        let mut x = Vec::with_capacity(self.tokens * self.cols);
        for t in 0..self.tokens {
            for c in 0..self.cols {
                let scale = self.lane_scales[(t * self.padded + c) / LANE];
                x.push(scale * self.codes[t * self.padded + c] as f32);
            }
        }
        x
    }

    pub(super) fn padded(&self) -> usize {
        self.padded
    }
}

fn quantize_row(
    x: &[f32],
    block_elems: usize,
    codes: &mut [i8],
    scales: &mut [f32],
    sums: &mut [f32],
) {
    for (b, block) in x.chunks_exact(block_elems).enumerate() {
        // `f32::max` ignores NaN, so NaN is carried explicitly.
        let max_abs = block.iter().fold(0.0f32, |m, v| {
            if m.is_nan() || v.is_nan() {
                f32::NAN
            } else {
                m.max(v.abs())
            }
        });
        let scale = max_abs / 127.0;
        // `127 / max_abs` rather than `1 / scale` keeps `|x| * inverse <= 127`
        // up to one rounding, so the clamp below only guards that rounding.
        let inverse = if max_abs > 0.0 { 127.0 / max_abs } else { 0.0 };
        let codes = &mut codes[b * block_elems..(b + 1) * block_elems];
        for (code, &v) in codes.iter_mut().zip(block) {
            *code = (v * inverse).round().clamp(-127.0, 127.0) as i8;
        }
        scales[b * block_elems / LANE..(b + 1) * block_elems / LANE].fill(scale);
        for (g, group) in codes.chunks_exact(GROUP).enumerate() {
            let sum: i32 = group.iter().map(|&c| c as i32).sum();
            sums[b * block_elems / GROUP + g] = scale * sum as f32;
        }
    }
}
