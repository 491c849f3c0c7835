//! Integer dot-product kernels over a tile of unpacked weight rows and
//! quantised tokens, with runtime instruction-set dispatch in [`dot_tile`].
//!
//! A kernel computes, for each row `r` and token `t` of the tile,
//!
//! ```text
//! sum_lane idot(lane) * w_scale[r, lane] * x_scale[t, lane]
//!   + sum_group w_offset[r, group] * x_sum[t, group]
//! ```
//!
//! where `idot(lane)` is the exact integer dot product of the 4 unsigned
//! weight codes and 4 signed activation codes of that lane.

mod interleave;
#[cfg(target_arch = "aarch64")]
mod neon;
mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_direct;
#[cfg(target_arch = "x86_64")]
mod x86_unpack;

pub(crate) use interleave::interleave_rows;

use super::unpack::UnpackedRows;
use crate::GgmlType;

/// Largest tile of weight rows one kernel call covers.
pub(super) const MAX_TILE_ROWS: usize = 4;
/// Largest tile of tokens one kernel call covers.
pub(super) const MAX_TILE_TOKENS: usize = 4;

/// The instruction set a product kernel uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust integer arithmetic; runs everywhere.
    Portable,
    /// x86-64 AVX2 and FMA (`vpmaddubsw` products).
    Avx2,
    /// x86-64 AVX-512 F, BW and VNNI (`vpdpbusd` products), with F16C.
    Avx512Vnni,
    /// aarch64 NEON (widening `smull` products).
    Neon,
}

impl Isa {
    /// Detects the fastest instruction set this CPU supports.
    pub fn detect() -> Isa {
        [Isa::Avx512Vnni, Isa::Avx2, Isa::Neon]
            .into_iter()
            .find(|isa| isa.is_available())
            .unwrap_or(Isa::Portable)
    }

    /// Checks whether this CPU supports the instruction set.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512Vnni => false,
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(not(target_arch = "aarch64"))]
            Isa::Neon => false,
        }
    }

    /// Reports whether [`dot_tile`] reads its tiles' codes and lane scales in the
    /// interleaved unit order of [`interleave_rows`] (the AVX-512 kernel), or in
    /// the order of the row.
    pub(super) fn interleaves_tiles(self) -> bool {
        self == Isa::Avx512Vnni
    }

    /// Tokens per kernel call that keep this ISA's accumulators in registers.
    pub(super) fn tile_tokens(self) -> usize {
        match self {
            Isa::Avx512Vnni | Isa::Neon | Isa::Portable => 4,
            Isa::Avx2 => 2,
        }
    }
}

/// One kernel call's operands: `rows` unpacked weight rows and `tokens`
/// quantised tokens, all `padded` elements long.
pub(super) struct Tile<'a> {
    /// `[rows, padded]`
    pub w_codes: &'a [u8],
    /// `[rows, padded / 4]`
    pub w_scales: &'a [f32],
    /// `[rows, padded / 16]`
    pub w_offsets: &'a [f32],
    /// `[tokens, padded]`
    pub x_codes: &'a [i8],
    /// `[tokens, padded / 4]`
    pub x_scales: &'a [f32],
    /// `[tokens, padded / 16]`
    pub x_sums: &'a [f32],
    pub padded: usize,
    pub rows: usize,
    pub tokens: usize,
    /// Whether codes reach 255 (Q8_0), which `vpmaddubsw` would saturate.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub wide_codes: bool,
}

impl Tile<'_> {
    /// Checks the slice lengths that the SIMD kernels rely on.
    fn check(&self) {
        assert!(self.padded.is_multiple_of(super::unpack::STEP));
        assert!((1..=MAX_TILE_ROWS).contains(&self.rows));
        assert!((1..=MAX_TILE_TOKENS).contains(&self.tokens));
        assert!(self.w_codes.len() >= self.rows * self.padded);
        assert!(self.w_scales.len() >= self.rows * self.padded / 4);
        assert!(self.x_codes.len() >= self.tokens * self.padded);
        assert!(self.x_scales.len() >= self.tokens * self.padded / 4);
        assert!(self.w_offsets.len() >= self.rows * self.padded / 16);
        assert!(self.x_sums.len() >= self.tokens * self.padded / 16);
    }
}

/// Scaled integer dot products of a tile: `out[r][t]` for `r < tile.rows`,
/// `t < tile.tokens`; the other entries are zero.
///
/// The codes and lane scales are in the interleaved unit order of
/// [`interleave_rows`] when [`Isa::interleaves_tiles`], and in row order otherwise.
///
/// The caller has checked that `isa` is available.
pub(super) fn dot_tile(isa: Isa, tile: &Tile) -> [[f32; MAX_TILE_TOKENS]; MAX_TILE_ROWS] {
    tile.check();
    match isa {
        Isa::Portable => portable::dot_tile(tile),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller checked `Isa::Avx512Vnni.is_available()`, and
        // `tile.check()` above guarantees the slice lengths the kernel reads.
        Isa::Avx512Vnni => unsafe { x86::dot_tile_avx512(tile) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2 and FMA.
        Isa::Avx2 => unsafe { x86::dot_tile_avx2(tile) },
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 | Isa::Avx512Vnni => {
            unreachable!("x86 kernels requested on another architecture")
        }
        #[cfg(target_arch = "aarch64")]
        // SAFETY: the caller checked `Isa::Neon.is_available()`, and
        // `tile.check()` above guarantees the slice lengths the kernel reads.
        Isa::Neon => unsafe { neon::dot_tile_neon(tile) },
        #[cfg(not(target_arch = "aarch64"))]
        Isa::Neon => unreachable!("the NEON kernel requested on another architecture"),
    }
}

/// Reports whether [`dot_rows`] has a kernel for `isa`. Without one, single
/// tokens go through [`dot_tile`] like any other.
pub(super) fn has_row_kernel(isa: Isa) -> bool {
    isa == Isa::Avx512Vnni
}

/// `sum_c W[r, c] * x_hat[c]` for `R <= 4` consecutive raw rows of type `ty` and one
/// quantised token, decoding the rows in registers. A row's result does not depend
/// on `R`.
///
/// # Shapes
/// `rows: [R * row_bytes]` with `row_bytes = ty.bytes_for(cols)`, `x_codes: [padded]`,
/// `x_scales: [padded / 4]`, `x_sums: [padded / 16]`.
///
/// The caller has checked that `isa` is available and [`has_row_kernel`].
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub(super) fn dot_rows<const R: usize>(
    isa: Isa,
    ty: GgmlType,
    rows: &[u8],
    row_bytes: usize,
    x_codes: &[i8],
    x_scales: &[f32],
    x_sums: &[f32],
) -> [f32; R] {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller checked `Isa::Avx512Vnni.is_available()`, which
        // covers AVX-512 F, BW, VNNI and F16C (and so AVX2 and FMA).
        Isa::Avx512Vnni => unsafe {
            x86_direct::dot_rows_avx512::<R>(ty, rows, row_bytes, x_codes, x_scales, x_sums)
        },
        _ => unreachable!("no row kernel for {isa:?}"),
    }
}

/// Unpacks `rows_bytes` (whole rows of type `ty`, back to back) into `rows`
/// with `isa`'s byte shuffles.
///
/// The caller has checked that `isa` is available and that `rows_bytes` contains
/// whole rows of the length `rows` was reset for.
pub(super) fn unpack_rows(
    isa: Isa,
    ty: GgmlType,
    rows_bytes: &[u8],
    row_bytes: usize,
    rows: &mut UnpackedRows,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller checked that the CPU supports `isa`, and every
        // CPU with AVX-512 VNNI also has AVX2.
        Isa::Avx512Vnni | Isa::Avx2 => unsafe {
            x86_unpack::unpack_rows_avx2(ty, rows_bytes, row_bytes, rows)
        },
        _ => unpack_rows_generic(ty, rows_bytes, row_bytes, rows),
    }
}

/// Asks the CPU to start loading `bytes` into cache.
///
/// Rows are streamed once per product; prefetching the tile after next
/// keeps several cache-line loads in flight while the current tile unpacks.
#[inline]
pub(super) fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: prefetching is a hint with no architectural effect, and
        // the address comes from a live slice; SSE is part of x86-64.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

pub(super) fn unpack_rows_generic(
    ty: GgmlType,
    rows_bytes: &[u8],
    row_bytes: usize,
    rows: &mut UnpackedRows,
) {
    for (slot, row) in rows_bytes.chunks_exact(row_bytes).enumerate() {
        rows.unpack(ty, row, slot);
    }
}

/// Calls `$kernel::<R, T>($tile)` with the tile's row and token counts as
/// constants, so each kernel keeps its accumulators in fixed registers.
macro_rules! dispatch_tile_shape {
    ($kernel:ident, $tile:expr) => {{
        let tile = $tile;
        match (tile.rows, tile.tokens) {
            (1, 1) => $kernel::<1, 1>(tile),
            (1, 2) => $kernel::<1, 2>(tile),
            (1, 3) => $kernel::<1, 3>(tile),
            (1, 4) => $kernel::<1, 4>(tile),
            (2, 1) => $kernel::<2, 1>(tile),
            (2, 2) => $kernel::<2, 2>(tile),
            (2, 3) => $kernel::<2, 3>(tile),
            (2, 4) => $kernel::<2, 4>(tile),
            (3, 1) => $kernel::<3, 1>(tile),
            (3, 2) => $kernel::<3, 2>(tile),
            (3, 3) => $kernel::<3, 3>(tile),
            (3, 4) => $kernel::<3, 4>(tile),
            (4, 1) => $kernel::<4, 1>(tile),
            (4, 2) => $kernel::<4, 2>(tile),
            (4, 3) => $kernel::<4, 3>(tile),
            (4, 4) => $kernel::<4, 4>(tile),
            (rows, tokens) => unreachable!("tile of {rows} rows and {tokens} tokens"),
        }
    }};
}
pub(super) use dispatch_tile_shape;

/// Copies a `[R][T]` result into the fixed-size array [`dot_tile`] returns.
fn widen<const R: usize, const T: usize>(
    acc: [[f32; T]; R],
) -> [[f32; MAX_TILE_TOKENS]; MAX_TILE_ROWS] {
    let mut out = [[0.0; MAX_TILE_TOKENS]; MAX_TILE_ROWS];
    for r in 0..R {
        out[r][..T].copy_from_slice(&acc[r]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngCore, SeedableRng};

    const QUANTIZED: [GgmlType; 6] = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ];

    /// Random rows whose f16 scales are finite, so unpacked values compare
    /// with `==` (NaN payloads aside, any bits would do).
    fn random_rows(ty: GgmlType, rows: usize, cols: usize, rng: &mut StdRng) -> Vec<u8> {
        let mut bytes = vec![0u8; rows * ty.bytes_for(cols).unwrap()];
        rng.fill_bytes(&mut bytes);
        let scale_at: &[usize] = match ty {
            GgmlType::Q4_1 | GgmlType::Q4_K => &[0, 2],
            GgmlType::Q6_K => &[208],
            _ => &[0],
        };
        for block in bytes.chunks_exact_mut(ty.block_bytes()) {
            for &at in scale_at {
                // Clear the top exponent bit: no infinities or NaNs.
                block[at + 1] &= 0xBF;
            }
        }
        bytes
    }

    #[test]
    fn row_groups_match_single_rows_bitwise() {
        if !has_row_kernel(Isa::detect()) {
            return;
        }
        let isa = Isa::detect();
        let mut rng = StdRng::seed_from_u64(5);
        for ty in QUANTIZED {
            for cols in [ty.block_elems(), 3 * ty.block_elems(), 768] {
                let bytes = random_rows(ty, 4, cols, &mut rng);
                let row_bytes = ty.bytes_for(cols).unwrap();
                let x: Vec<f32> = (0..cols).map(|c| (c as f32 * 0.37).sin()).collect();
                let acts =
                    crate::quant::activations::QuantizedActivations::quantize(&x, 1, cols, ty)
                        .unwrap();
                let (codes, scales, sums) = (&acts.codes, &acts.lane_scales, &acts.group_sums);
                let group = dot_rows::<4>(isa, ty, &bytes, row_bytes, codes, scales, sums);
                for (r, &grouped) in group.iter().enumerate() {
                    let row = &bytes[r * row_bytes..(r + 1) * row_bytes];
                    let [single] = dot_rows::<1>(isa, ty, row, row_bytes, codes, scales, sums);
                    assert_eq!(
                        grouped.to_bits(),
                        single.to_bits(),
                        "{ty} cols {cols} row {r}: {grouped} in a group of 4, {single} alone"
                    );
                }
            }
        }
    }

    #[test]
    fn simd_unpack_matches_portable() {
        let mut rng = StdRng::seed_from_u64(3);
        for isa in [Isa::Avx2, Isa::Avx512Vnni, Isa::Neon]
            .into_iter()
            .filter(|isa| isa.is_available())
        {
            for ty in QUANTIZED {
                for cols in [ty.block_elems(), 3 * ty.block_elems(), 768] {
                    let bytes = random_rows(ty, MAX_TILE_ROWS, cols, &mut rng);
                    let row_bytes = ty.bytes_for(cols).unwrap();
                    let mut portable = UnpackedRows::default();
                    portable.reset(MAX_TILE_ROWS, cols);
                    unpack_rows(Isa::Portable, ty, &bytes, row_bytes, &mut portable);
                    let mut simd = UnpackedRows::default();
                    simd.reset(MAX_TILE_ROWS, cols);
                    unpack_rows(isa, ty, &bytes, row_bytes, &mut simd);
                    assert_eq!(
                        portable.codes, simd.codes,
                        "{ty} {isa:?} cols {cols}: codes"
                    );
                    assert_eq!(
                        portable.lane_scales, simd.lane_scales,
                        "{ty} {isa:?} cols {cols}: scales"
                    );
                    assert_eq!(
                        portable.group_offsets, simd.group_offsets,
                        "{ty} {isa:?} cols {cols}: offsets"
                    );
                }
            }
        }
    }
}
