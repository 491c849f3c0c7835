//! Element-wise and per-row operations of the model architectures: norms and
//! activations. Each works on rows of `dim` f32 values in place or into a
//! buffer; the sums inside the norms are accumulated in f64 so that the result
//! does not depend on how a row is split.

mod activation;

use rayon::prelude::*;

pub use activation::{gated_activation, softcap_in_place};

/// Elements per rayon task of the row-wise operations on long buffers: at a
/// few nanoseconds per element or less a task runs for tens of microseconds,
/// well above the cost of waking a worker, while one token's rows run inline.
const PAR_CHUNK_ELEMS: usize = 16 * 1024;

/// Normalises each row of `x` (`[rows, dim]`) by its root mean square and
/// multiplies by `weight` (`[dim]`): `x * weight / sqrt(mean(x^2) + eps)`.
///
/// With `weight_offset = 1.0` the scale is `1 + weight`, as Gemma stores it.
/// Long inputs run in parallel, split at row boundaries, with the same result.
///
/// # Panics
/// When `x.len()` is not a multiple of `weight.len()`; callers size both from
/// the model config, so a mismatch is a bug, not bad input.
pub fn rms_norm(x: &mut [f32], weight: &[f32], eps: f32, weight_offset: f32) {
    let dim = weight.len();
    assert!(
        dim > 0 && x.len().is_multiple_of(dim),
        "rms_norm: row length {dim} does not divide {}",
        x.len()
    );
    if x.len() <= PAR_CHUNK_ELEMS {
        rms_norm_rows(x, weight, eps, weight_offset);
        return;
    }
    let rows_per_task = (PAR_CHUNK_ELEMS / dim).max(1);
    x.par_chunks_mut(rows_per_task * dim)
        .for_each(|rows| rms_norm_rows(rows, weight, eps, weight_offset));
}

fn rms_norm_rows(x: &mut [f32], weight: &[f32], eps: f32, weight_offset: f32) {
    let dim = weight.len();
    for row in x.chunks_exact_mut(dim) {
        let sum_sq = sum_squares_f64(row);
        let inv_rms = (1.0 / (sum_sq / dim as f64 + f64::from(eps)).sqrt()) as f32;
        for (v, &w) in row.iter_mut().zip(weight) {
            *v = *v * inv_rms * (w + weight_offset);
        }
    }
}

/// Sums `v^2` over `values` in f64. Eight partial sums, one per position modulo
/// 8, run in vector registers instead of one long chain of dependent additions.
/// Their order is fixed, so the result depends only on `values`.
fn sum_squares_f64(values: &[f32]) -> f64 {
    let mut partial = [0.0f64; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (sum, &v) in partial.iter_mut().zip(chunk) {
            *sum += f64::from(v) * f64::from(v);
        }
    }
    let tail_sum: f64 = tail.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    partial.iter().sum::<f64>() + tail_sum
}

/// Normalises each row of `x` (`[rows, dim]`) to zero mean and unit variance,
/// then applies `weight` and `bias` (`[dim]` each), as BERT's LayerNorm does.
///
/// # Panics
/// When the lengths disagree (a bug in the caller, as for [`rms_norm`]).
pub fn layer_norm(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let dim = weight.len();
    assert!(
        dim > 0 && bias.len() == dim && x.len().is_multiple_of(dim),
        "layer_norm: shapes disagree"
    );
    for row in x.chunks_exact_mut(dim) {
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / dim as f64;
        let var = row
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / dim as f64;
        let inv_std = 1.0 / (var + f64::from(eps)).sqrt();
        for ((v, &w), &b) in row.iter_mut().zip(weight).zip(bias) {
            *v = ((f64::from(*v) - mean) * inv_std) as f32 * w + b;
        }
    }
}

/// SiLU (swish): `x * sigmoid(x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU with the tanh approximation (`gelu_pytorch_tanh`, Gemma's activation).
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
}

/// Exact GELU, `x * Phi(x)` with the error function (BERT's `gelu`).
#[inline]
pub fn gelu_erf(x: f32) -> f32 {
    (0.5 * f64::from(x) * (1.0 + erf(f64::from(x) / std::f64::consts::SQRT_2))) as f32
}

/// Adds `src` into `dst` element by element.
pub fn add_in_place(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "add_in_place: lengths differ");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// Applies the exact GELU, `x * Phi(x)`, to every element in place.
///
/// Same function as [`gelu_erf`], but in f32 with no library calls, so the compiler
/// vectorizes the loop (with AVX-512 where the CPU has it); a test bounds its
/// distance from [`gelu_erf`] at 4e-7 * max(1, |x|). Negative inputs use `erfc`
/// directly, so `Phi(x)` keeps its relative precision in the tail.
pub fn gelu_erf_in_place(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F, the only requirement of the function.
        unsafe { gelu_erf_in_place_avx512(x) };
        return;
    }
    for v in x.iter_mut() {
        *v = gelu_erf_f32(*v);
    }
}

/// [`gelu_erf_in_place`] compiled with AVX-512F enabled.
///
/// # Safety
/// The CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_erf_in_place_avx512(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = gelu_erf_f32(*v);
    }
}

/// Exact GELU in f32 through the `erfc` fit that [`erf`] uses.
#[inline(always)]
fn gelu_erf_f32(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_2 + t * 0.170_872_77))))))));
    let half_erfc = 0.5 * t * exp_nonpositive_f32(poly);
    let phi = if x >= 0.0 { 1.0 - half_erfc } else { half_erfc };
    x * phi
}

/// `e^x` for `x <= 0` (to 2 ulp; values below -87 give `e^-87`), without library
/// calls: `x = n ln 2 + r` with `|r| <= ln 2 / 2` (Cody-Waite split of ln 2), a
/// degree-7 Taylor polynomial for `e^r` (remainder below 6e-9 relative), and `2^n`
/// built from its exponent bits.
#[inline(always)]
fn exp_nonpositive_f32(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4; // 0.693359375, exact in 9 bits
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer for |v| < 2^22.
    const ROUND: f32 = 12_582_912.0;
    // A plain select and integer bit arithmetic below, instead of `f32::max` (which
    // handles NaN) and `as i32` (which saturates), keep the loop vectorized.
    let x = if x < -87.0 { -87.0 } else { x };
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    // The low mantissa bits of `shifted` hold n in two's complement.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // n lies in [-126, 0], so n + 127 is a valid biased exponent of a normal float.
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    p * scale
}

/// The error function, to within 1.2e-7 absolute (Numerical Recipes' `erfc`
/// Chebyshev fit), which is below f32 resolution for GELU's purposes.
fn erf(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    if x >= 0.0 {
        1.0 - erfc
    } else {
        erfc - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_matches_definition() {
        let mut x = vec![1.0, -2.0, 3.0, 0.5, 0.0, 4.0];
        let w = [0.5, 1.0, 2.0];
        let expected: Vec<f32> = x
            .chunks(3)
            .flat_map(|row: &[f32]| {
                let ms = row.iter().map(|v| v * v).sum::<f32>() / 3.0;
                let r = 1.0 / (ms + 1e-6).sqrt();
                row.iter()
                    .zip(&w)
                    .map(move |(v, w)| v * r * w)
                    .collect::<Vec<_>>()
            })
            .collect();
        rms_norm(&mut x, &w, 1e-6, 0.0);
        for (a, b) in x.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn rms_norm_offset_scales_by_one_plus_weight() {
        let mut a = vec![1.0, 2.0, 3.0];
        let mut b = a.clone();
        rms_norm(&mut a, &[0.0, 0.5, -0.5], 1e-6, 1.0);
        rms_norm(&mut b, &[1.0, 1.5, 0.5], 1e-6, 0.0);
        assert_eq!(a, b);
    }

    #[test]
    fn rms_norm_parallel_equals_serial() {
        // More rows than one task takes, with a dim that does not divide the chunk.
        let dim = 640;
        let rows = 3 * PAR_CHUNK_ELEMS / dim + 5;
        let x: Vec<f32> = (0..rows * dim)
            .map(|i| ((i * 37) % 101) as f32 - 50.0)
            .collect();
        let weight: Vec<f32> = (0..dim).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut parallel = x.clone();
        rms_norm(&mut parallel, &weight, 1e-6, 1.0);
        let mut serial = x;
        for row in serial.chunks_exact_mut(dim) {
            rms_norm(row, &weight, 1e-6, 1.0);
        }
        assert_eq!(parallel, serial);
    }

    #[test]
    fn layer_norm_zero_mean_unit_variance() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        layer_norm(&mut x, &[1.0; 4], &[0.0; 4], 1e-12);
        let mean: f32 = x.iter().sum::<f32>() / 4.0;
        let var: f32 = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6);
        assert!((var - 1.0).abs() < 1e-5);
    }

    #[test]
    fn activations_at_known_points() {
        assert_eq!(silu(0.0), 0.0);
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
        // Reference values from the closed forms evaluated in f64.
        assert!((gelu_erf(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu_erf(-1.0) + 0.158_655_25).abs() < 1e-6);
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
        assert!((erf(0.5) - 0.520_499_877_813_046_5).abs() < 2e-7);
        assert!((erf(-2.0) + 0.995_322_265_018_952_7).abs() < 2e-7);
    }

    #[test]
    fn gelu_in_place_matches_gelu_erf() {
        // Every 1/1024 from -12 to 12, plus zero, tiny and huge values.
        let mut inputs: Vec<f32> = (-12 * 1024..=12 * 1024)
            .map(|i| i as f32 / 1024.0)
            .collect();
        inputs.extend([
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            50.0,
            -50.0,
            1e30,
            -1e30,
            f32::MAX,
            f32::MIN,
        ]);
        let mut fast = inputs.clone();
        gelu_erf_in_place(&mut fast);
        for (&x, &got) in inputs.iter().zip(&fast) {
            let want = gelu_erf(x);
            let tolerance = 4e-7 * x.abs().max(1.0);
            assert!(
                (got - want).abs() <= tolerance,
                "x = {x}: {got} against gelu_erf {want}"
            );
            // The portable path, which CPUs without AVX-512F take.
            let scalar = gelu_erf_f32(x);
            assert!(
                (scalar - want).abs() <= tolerance,
                "x = {x}: scalar {scalar} against {want}"
            );
        }
    }

    #[test]
    fn gelu_in_place_odd_lengths() {
        // Lengths off the 16-lane vector width run the same function on every element.
        for len in [0, 1, 15, 17, 33] {
            let inputs: Vec<f32> = (0..len).map(|i| i as f32 * 0.37 - 3.0).collect();
            let mut fast = inputs.clone();
            gelu_erf_in_place(&mut fast);
            for (&x, &got) in inputs.iter().zip(&fast) {
                assert!(
                    (got - gelu_erf(x)).abs() <= 4e-7 * x.abs().max(1.0),
                    "len {len}, x = {x}"
                );
            }
        }
    }
}
