//! The interleaved unit order of the AVX-512 tile kernel.
//!
//! A unit is 4 consecutive codes with their one lane scale: one 32-bit lane of
//! `vpdpbusd`. A padded row is cut into super-steps of 4, 2 or 1 steps of 16
//! units each (see [`super_steps`]). Within a super-step of `n` steps, lane `l`
//! of step `k` contains original unit `n * l + k`, so each lane covers `4n`
//! consecutive codes. Every weight and activation scale covers an aligned run
//! of 16 or more codes, which contains those `4n` codes, so a lane's scales are
//! the same in every step of its super-step. The kernel can then add the integer
//! dot products of the `n` steps before it converts and scales them once.
//!
//! Offsets and activation sums (per 16 codes) keep their order: the kernel reads
//! them apart from the codes.

use crate::quant::unpack::{LANE, STEP};

/// Units per step: the lanes of one 512-bit register.
const UNITS_PER_STEP: usize = STEP / LANE;

/// Steps of the longest super-step. A lane then adds 16 products of at most
/// `255 * 127` in magnitude, far below 2^31, so its i32 sum cannot overflow.
pub(super) const MAX_SUPER_STEP: usize = 4;

/// Splits `steps` steps into super-steps of 4 steps, then 2 and 1 for the
/// remainder, as `(first step, steps)`. A super-step of 3 would give lanes of
/// 12 codes, which straddle the 16-code scale groups.
pub(super) fn super_steps(steps: usize) -> impl Iterator<Item = (usize, usize)> {
    let full = steps / MAX_SUPER_STEP;
    let rest = steps % MAX_SUPER_STEP;
    let two = (rest >= 2).then(|| (full * MAX_SUPER_STEP, 2));
    let one = (rest % 2 == 1).then(|| (steps - 1, 1));
    (0..full)
        .map(|i| (i * MAX_SUPER_STEP, MAX_SUPER_STEP))
        .chain(two)
        .chain(one)
}

/// Reorders rows of `padded` codes and their lane scales into the interleaved
/// unit order.
///
/// # Shapes
/// `codes: [rows, padded]` and `lane_scales: [rows, padded / LANE]`, with
/// `padded` a multiple of [`STEP`].
pub(crate) fn interleave_rows<C: Copy + Default>(
    codes: &mut [C],
    lane_scales: &mut [f32],
    padded: usize,
) {
    debug_assert!(padded.is_multiple_of(STEP));
    let (code_units, rest) = codes.as_chunks_mut::<LANE>();
    debug_assert!(rest.is_empty());
    let units_per_row = padded / LANE;
    for (row_units, row_scales) in code_units
        .chunks_exact_mut(units_per_row)
        .zip(lane_scales.chunks_exact_mut(units_per_row))
    {
        for (first_step, n) in super_steps(padded / STEP) {
            let units = first_step * UNITS_PER_STEP..(first_step + n) * UNITS_PER_STEP;
            interleave_units(&mut row_units[units.clone()], n);
            interleave_units(&mut row_scales[units], n);
        }
    }
}

/// Moves original unit `n * l + k` to position `16 k + l` of one super-step.
fn interleave_units<U: Copy + Default>(units: &mut [U], n: usize) {
    debug_assert_eq!(units.len(), n * UNITS_PER_STEP);
    let mut original = [U::default(); MAX_SUPER_STEP * UNITS_PER_STEP];
    original[..units.len()].copy_from_slice(units);
    for k in 0..n {
        for l in 0..UNITS_PER_STEP {
            units[k * UNITS_PER_STEP + l] = original[n * l + k];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn super_steps_cover_every_step() {
        for steps in 0..20 {
            let parts: Vec<_> = super_steps(steps).collect();
            let mut next = 0;
            for &(first, n) in &parts {
                assert_eq!(first, next, "steps {steps}: {parts:?}");
                assert!([1, 2, 4].contains(&n), "steps {steps}: {parts:?}");
                next += n;
            }
            assert_eq!(next, steps, "steps {steps}: {parts:?}");
        }
    }

    #[test]
    fn lanes_cover_consecutive_codes() {
        // 11 steps: super-steps of 4, 4, 2 and 1.
        let padded = 11 * STEP;
        let mut codes: Vec<u16> = (0..2 * padded as u16).collect();
        let mut scales: Vec<f32> = (0..2 * padded / LANE).map(|u| u as f32).collect();
        interleave_rows(&mut codes, &mut scales, padded);
        for row in 0..2 {
            for (first, n) in super_steps(11) {
                for k in 0..n {
                    for l in 0..UNITS_PER_STEP {
                        let unit = row * padded / LANE + (first + k) * UNITS_PER_STEP + l;
                        let original = row * padded / LANE + first * UNITS_PER_STEP + n * l + k;
                        assert_eq!(scales[unit], original as f32, "row {row}, unit {unit}");
                        for c in 0..LANE {
                            assert_eq!(
                                codes[unit * LANE + c] as usize,
                                original * LANE + c,
                                "row {row}, unit {unit}"
                            );
                        }
                    }
                }
            }
        }
    }
}
