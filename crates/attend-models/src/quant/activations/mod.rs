//! Quantisation of f32 activations to signed 8-bit blocks.

#[cfg(target_arch = "x86_64")]
mod x86;

use std::borrow::Cow;

use super::kernel::{interleave_rows, Isa};
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
#[derive(Clone)]
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
    /// Whether `codes` and `lane_scales` are in the AVX-512 tile kernel's
    /// interleaved unit order rather than row order; only products set it.
    interleaved: bool,
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
            interleaved: false,
        };
        if cols == 0 {
            return Ok(this);
        }

        let isa = RowIsa::detect();
        this.codes
            .par_chunks_mut(padded)
            .zip(this.lane_scales.par_chunks_mut(padded / LANE))
            .zip(this.group_sums.par_chunks_mut(padded / GROUP))
            .zip(x.par_chunks(cols))
            .for_each(|(((codes, scales), sums), x)| {
                quantize_row(isa, x, block_elems, codes, scales, sums);
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

    /// Returns whether the codes and lane scales are in the tile kernel's interleaved
    /// unit order rather than row order.
    pub(super) fn is_interleaved(&self) -> bool {
        self.interleaved
    }

    /// Puts the codes and lane scales of every token in the interleaved unit
    /// order that the AVX-512 tile kernel reads.
    pub(super) fn into_interleaved(mut self) -> QuantizedActivations {
        if !self.interleaved {
            interleave_rows(&mut self.codes, &mut self.lane_scales, self.padded);
            self.interleaved = true;
        }
        self
    }

    /// These activations in the unit order of `isa`'s tile kernel, copied
    /// only when they are in row order and the kernel interleaves.
    pub(super) fn for_tiles(&self, isa: Isa) -> Cow<'_, QuantizedActivations> {
        debug_assert!(!self.interleaved || isa.interleaves_tiles());
        if self.interleaved || !isa.interleaves_tiles() {
            return Cow::Borrowed(self);
        }
        Cow::Owned(self.clone().into_interleaved())
    }
}

/// The instruction set [`quantize_row`] runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RowIsa {
    Portable,
    /// x86-64 AVX2, 8 lanes.
    Avx2,
    /// x86-64 AVX-512F, 16 lanes.
    Avx512,
}

impl RowIsa {
    fn detect() -> RowIsa {
        [RowIsa::Avx512, RowIsa::Avx2]
            .into_iter()
            .find(|isa| isa.is_available())
            .unwrap_or(RowIsa::Portable)
    }

    fn is_available(self) -> bool {
        match self {
            RowIsa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            RowIsa::Avx2 => std::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            RowIsa::Avx512 => std::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            RowIsa::Avx2 | RowIsa::Avx512 => false,
        }
    }
}

/// Quantises one row of `x` (`[cols]`) block by block into `codes`
/// (`[cols]`), `scales` (`[cols / LANE]`) and `sums` (`[cols / GROUP]`).
/// Every instruction set writes the same bits; an unavailable one falls back
/// to the portable loop.
fn quantize_row(
    isa: RowIsa,
    x: &[f32],
    block_elems: usize,
    codes: &mut [i8],
    scales: &mut [f32],
    sums: &mut [f32],
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        RowIsa::Avx512 if isa.is_available() => {
            // SAFETY: the CPU supports AVX-512F, checked on the line above.
            unsafe { x86::quantize_row_avx512(x, block_elems, codes, scales, sums) }
        }
        #[cfg(target_arch = "x86_64")]
        RowIsa::Avx2 if isa.is_available() => {
            // SAFETY: the CPU supports AVX2, checked on the line above.
            unsafe { x86::quantize_row_avx2(x, block_elems, codes, scales, sums) }
        }
        _ => {
            for (b, block) in x.chunks_exact(block_elems).enumerate() {
                let (codes, scales, sums) = block_outputs(b, block_elems, codes, scales, sums);
                quantize_block(block, codes, scales, sums);
            }
        }
    }
}

/// Returns the slices of a row's outputs that block `b` writes: `codes: [block_elems]`,
/// `scales: [block_elems / LANE]`, `sums: [block_elems / GROUP]`.
fn block_outputs<'a>(
    b: usize,
    block_elems: usize,
    codes: &'a mut [i8],
    scales: &'a mut [f32],
    sums: &'a mut [f32],
) -> (&'a mut [i8], &'a mut [f32], &'a mut [f32]) {
    (
        &mut codes[b * block_elems..(b + 1) * block_elems],
        &mut scales[b * block_elems / LANE..(b + 1) * block_elems / LANE],
        &mut sums[b * block_elems / GROUP..(b + 1) * block_elems / GROUP],
    )
}

/// Returns the block's scale, `max |x| / 127`, and the factor `127 / max |x|`
/// that maps its values to codes (zero for an all-zero block).
fn block_scale(max_abs: f32) -> (f32, f32) {
    let scale = max_abs / 127.0;
    // `127 / max_abs` rather than `1 / scale` keeps `|x| * inverse <= 127`
    // up to one rounding, so the clamp of the codes only guards that rounding.
    let inverse = if max_abs > 0.0 { 127.0 / max_abs } else { 0.0 };
    (scale, inverse)
}

/// Quantises one block: the reference that the vector paths match bit for bit,
/// and their fallback for blocks with a NaN, an infinity or a maximum so small
/// that `127 / max |x|` overflows.
fn quantize_block(block: &[f32], codes: &mut [i8], scales: &mut [f32], sums: &mut [f32]) {
    // `f32::max` ignores NaN, so NaN is carried explicitly.
    let max_abs = block.iter().fold(0.0f32, |m, v| {
        if m.is_nan() || v.is_nan() {
            f32::NAN
        } else {
            m.max(v.abs())
        }
    });
    let (scale, inverse) = block_scale(max_abs);
    for (code, &v) in codes.iter_mut().zip(block) {
        // `as i8` turns the NaN of `0 * inf` into code 0.
        *code = (v * inverse).round().clamp(-127.0, 127.0) as i8;
    }
    scales.fill(scale);
    for (sum, group) in sums.iter_mut().zip(codes.chunks_exact(GROUP)) {
        let codes_sum: i32 = group.iter().map(|&c| c as i32).sum();
        *sum = scale * codes_sum as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// A row's outputs: codes, then the bits of the scales and of the sums.
    type RowOutputs = (Vec<i8>, Vec<u32>, Vec<u32>);

    fn quantize_with(isa: RowIsa, x: &[f32], block_elems: usize) -> RowOutputs {
        let mut codes = vec![0; x.len()];
        let mut scales = vec![0.0; x.len() / LANE];
        let mut sums = vec![0.0; x.len() / GROUP];
        quantize_row(isa, x, block_elems, &mut codes, &mut scales, &mut sums);
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect();
        (codes, bits(scales), bits(sums))
    }

    /// Blocks of 32 values meant to reach every branch: random values over
    /// magnitudes 1e-3 to 1e3, all zeros (with signs), exact halves after
    /// scaling, a NaN, each infinity, subnormal maxima whose inverse
    /// overflows, and values that round to negative zero.
    fn awkward_row(rng: &mut StdRng, blocks: usize) -> Vec<f32> {
        let mut x = Vec::with_capacity(blocks * 32);
        for b in 0..blocks {
            let magnitude = 10f32.powi(b as i32 % 7 - 3);
            let mut block: Vec<f32> = (0..32)
                .map(|_| rng.random_range(-1.0f32..1.0) * magnitude)
                .collect();
            match b % 9 {
                1 => block.iter_mut().enumerate().for_each(|(i, v)| {
                    *v = if i % 2 == 0 { 0.0 } else { -0.0 };
                }),
                // Maximum 127, so the inverse is 1 and these halves round away.
                2 => block.iter_mut().enumerate().for_each(|(i, v)| {
                    *v = (i as f32 - 16.0) + 0.5;
                    if i == 31 {
                        *v = 127.0;
                    }
                }),
                3 => block[rng.random_range(0..32)] = f32::NAN,
                4 => block[rng.random_range(0..32)] = f32::INFINITY,
                5 => block[rng.random_range(0..32)] = f32::NEG_INFINITY,
                6 => block
                    .iter_mut()
                    .for_each(|v| *v = f32::from_bits(rng.random_range(0..1000)) * v.signum()),
                7 => {
                    block.iter_mut().for_each(|v| *v = -v.abs() * 1e-4);
                    block[0] = 1.0;
                }
                _ => {}
            }
            x.extend(block);
        }
        x
    }

    #[test]
    fn vector_rows_match_portable_bits() {
        let mut rng = StdRng::seed_from_u64(7);
        for isa in [RowIsa::Avx2, RowIsa::Avx512] {
            if !isa.is_available() {
                continue;
            }
            for block_elems in [32, 256] {
                for _ in 0..50 {
                    let x = awkward_row(&mut rng, 72);
                    let want = quantize_with(RowIsa::Portable, &x, block_elems);
                    let got = quantize_with(isa, &x, block_elems);
                    assert_eq!(got.0, want.0, "{isa:?}, block {block_elems}: codes");
                    assert_eq!(got.1, want.1, "{isa:?}, block {block_elems}: scales");
                    assert_eq!(got.2, want.2, "{isa:?}, block {block_elems}: sums");
                }
            }
        }
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        // Maximum 127 gives inverse 1, so the codes are the values rounded.
        let mut x: Vec<f32> = vec![0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999997, -0.49999997];
        x.extend([0.0; 23]);
        x.push(127.0);
        let want: Vec<i8> = vec![1, -1, 2, -2, 3, -3, 0, 0];
        for isa in [RowIsa::Portable, RowIsa::Avx2, RowIsa::Avx512] {
            let (codes, _, _) = quantize_with(isa, &x, 32);
            assert_eq!(codes[..8], want[..], "{isa:?}");
            assert_eq!(codes[31], 127, "{isa:?}");
        }
    }

    #[test]
    fn non_finite_block_has_non_finite_scale() {
        for (bad, nan_scale) in [(f32::NAN, true), (f32::INFINITY, false)] {
            let mut x = vec![1.0f32; 64];
            x[40] = bad;
            for isa in [RowIsa::Portable, RowIsa::Avx2, RowIsa::Avx512] {
                let (codes, scales, sums) = quantize_with(isa, &x, 32);
                let first = f32::from_bits(scales[0]);
                let second = f32::from_bits(scales[8]);
                assert_eq!(first, 1.0 / 127.0, "{isa:?}: finite block");
                assert_eq!(second.is_nan(), nan_scale, "{isa:?}: scale {second}");
                assert!(!second.is_finite(), "{isa:?}: scale {second}");
                assert!(codes[32..].iter().all(|&c| c == 0), "{isa:?}: codes");
                assert!(f32::from_bits(sums[2]).is_nan(), "{isa:?}: sums");
            }
        }
    }
}
