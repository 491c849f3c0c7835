//! Vectorised activations of the decoder: the gated feed-forward product
//! (SiLU and tanh-GELU) and the logit soft cap (tanh), in f32 without library
//! calls, so that the loops compile to SIMD under `#[target_feature]`. The CPU's
//! widest vector set is picked at run time; the portable loop is the same code.
//!
//! Both gated activations are `x * sigmoid(z)`: SiLU with `z = x`, tanh-GELU with
//! `z = 2u`, because `0.5 (1 + tanh(u)) = sigmoid(2u)`, where
//! `u = sqrt(2 / pi) (x + 0.044715 x^3)`. Evaluating the sigmoid from
//! `e^-|z| <= 1` never overflows, and unlike `1 + tanh(u)` it loses no digits
//! for negative `x`. The scalar [`super::silu`] and [`super::gelu_tanh`] are the
//! reference.
//!
//! Accuracy against the functions evaluated in f64 at the same f32 input, checked
//! by the tests over the whole f32 line: the relative error is at most 3e-7
//! (2.4e-7 measured) for SiLU and the soft cap, and at most `3e-7 * max(1, |z|)`
//! for tanh-GELU (2.1e-5 measured at `z = -87`), whose argument `z` carries the
//! f32 rounding of the cubic. Where the sigmoid falls below e^-87 it is flushed to
//! zero, an absolute error below `1.7e-38 * max(1, |x|)`. NaN inputs give NaN,
//! and infinities give what the scalar reference gives (`silu(-inf)` and
//! `gelu(-inf)` are NaN).

use rayon::prelude::*;

use super::{exp_nonpositive_f32, PAR_CHUNK_ELEMS};
use crate::decoder::Activation;

/// Computes the gated feed-forward product `gate[i] = act(gate[i]) * up[i]` in
/// place, in parallel chunks when the buffers are long.
///
/// # Shapes
/// `gate, up: [tokens, ffn_dim]`, or any equal lengths: the product is
/// element-wise.
///
/// # Panics
/// When the two buffers differ in length (a bug in the caller).
pub fn gated_activation(gate: &mut [f32], up: &[f32], activation: Activation) {
    assert_eq!(
        gate.len(),
        up.len(),
        "gated_activation: gate and up differ in length"
    );
    gated_activation_with(VectorIsa::detect(), gate, up, activation);
}

/// Applies the soft cap `cap * tanh(v / cap)` to every value in place
/// (Gemma's final logits).
pub fn softcap_in_place(values: &mut [f32], cap: f32) {
    VectorIsa::detect().run(values, Kernel::Softcap(cap));
}

fn gated_activation_with(isa: VectorIsa, gate: &mut [f32], up: &[f32], activation: Activation) {
    let kernel = |up| match activation {
        Activation::Silu => Kernel::GatedSilu(up),
        Activation::GeluTanh => Kernel::GatedGeluTanh(up),
    };
    if gate.len() <= PAR_CHUNK_ELEMS {
        isa.run(gate, kernel(up));
        return;
    }
    gate.par_chunks_mut(PAR_CHUNK_ELEMS)
        .zip(up.par_chunks(PAR_CHUNK_ELEMS))
        .for_each(|(gate, up)| isa.run(gate, kernel(up)));
}

/// A vector instruction set the element-wise loops are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VectorIsa {
    /// Whatever the build target allows (SSE2 on x86-64).
    Portable,
    /// x86-64 AVX2 and FMA, 8 lanes.
    Avx2,
    /// x86-64 AVX-512F, 16 lanes.
    Avx512,
}

/// One element-wise loop; the slices are the second operand, as long as the
/// values the loop writes.
#[derive(Clone, Copy)]
enum Kernel<'a> {
    GatedSilu(&'a [f32]),
    GatedGeluTanh(&'a [f32]),
    Softcap(f32),
}

impl VectorIsa {
    fn detect() -> VectorIsa {
        [VectorIsa::Avx512, VectorIsa::Avx2]
            .into_iter()
            .find(|isa| isa.is_available())
            .unwrap_or(VectorIsa::Portable)
    }

    fn is_available(self) -> bool {
        match self {
            VectorIsa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            VectorIsa::Avx2 => {
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            VectorIsa::Avx512 => std::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            VectorIsa::Avx2 | VectorIsa::Avx512 => false,
        }
    }

    /// Runs `kernel` over `values`, falling back to the portable loop when the
    /// CPU lacks this instruction set.
    fn run(self, values: &mut [f32], kernel: Kernel) {
        match self {
            #[cfg(target_arch = "x86_64")]
            VectorIsa::Avx512 if self.is_available() => {
                // SAFETY: the CPU supports AVX-512F, checked on the line above.
                unsafe { run_avx512(values, kernel) }
            }
            #[cfg(target_arch = "x86_64")]
            VectorIsa::Avx2 if self.is_available() => {
                // SAFETY: the CPU supports AVX2 and FMA, checked on the line above.
                unsafe { run_avx2(values, kernel) }
            }
            _ => run_portable(values, kernel),
        }
    }
}

/// [`run_portable`] compiled with AVX-512F enabled.
///
/// # Safety
/// The CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_avx512(values: &mut [f32], kernel: Kernel) {
    run_portable(values, kernel);
}

/// [`run_portable`] compiled with AVX2 and FMA enabled.
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2(values: &mut [f32], kernel: Kernel) {
    run_portable(values, kernel);
}

/// The loops themselves; `inline(always)` puts a copy inside each
/// `#[target_feature]` function, where it is compiled for that vector set.
#[inline(always)]
fn run_portable(values: &mut [f32], kernel: Kernel) {
    match kernel {
        Kernel::GatedSilu(up) => {
            for (g, &u) in values.iter_mut().zip(up) {
                *g = silu_f32(*g) * u;
            }
        }
        Kernel::GatedGeluTanh(up) => {
            for (g, &u) in values.iter_mut().zip(up) {
                *g = gelu_tanh_f32(*g) * u;
            }
        }
        Kernel::Softcap(cap) => {
            for v in values.iter_mut() {
                *v = cap * tanh_f32(*v / cap);
            }
        }
    }
}

/// `1 / (1 + e^-z)`, from `e = e^-|z|` so that nothing overflows.
#[inline(always)]
fn sigmoid_f32(z: f32) -> f32 {
    let a = z.abs();
    // Below e^-87 the sigmoid of -|z| leaves f32's normal range: flush it to zero,
    // so that sigmoid(-inf) is 0 and not e^-87. A NaN fails the comparison and
    // stays NaN through the exponential.
    let e = if a > 87.0 {
        0.0
    } else {
        exp_nonpositive_f32(-a)
    };
    let r = 1.0 / (1.0 + e);
    if z >= 0.0 {
        r
    } else {
        e * r
    }
}

/// SiLU, `x * sigmoid(x)`.
#[inline(always)]
fn silu_f32(x: f32) -> f32 {
    x * sigmoid_f32(x)
}

/// Tanh-GELU as `x * sigmoid(2u)`, `u = sqrt(2 / pi) (x + 0.044715 x^3)`.
#[inline(always)]
fn gelu_tanh_f32(x: f32) -> f32 {
    const TWO_SQRT_2_OVER_PI: f32 = 1.595_769;
    x * sigmoid_f32(TWO_SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x))
}

/// `tanh(y)`: the odd polynomial of Cephes' `tanhf` (S. Moshier) below `|y| = 0.625`, where
/// `(1 - e) / (1 + e)` with `e = e^-2|y|` would cancel, and that quotient above.
#[inline(always)]
fn tanh_f32(y: f32) -> f32 {
    let a = y.abs();
    let z = y * y;
    let small =
        ((((-5.704_988_7e-3 * z + 2.063_909e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z
            - 3.333_328e-1)
            * z
            * y
            + y;
    // For |y| > 43.5 the exponential clamps at e^-87, which rounds the quotient to 1.
    let e = exp_nonpositive_f32(-2.0 * a);
    let large = ((1.0 - e) / (1.0 + e)).copysign(y);
    if a < 0.625 {
        small
    } else {
        large
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{gelu_tanh, silu};

    /// Lists the instruction sets this CPU can run, the portable loop first.
    fn available() -> Vec<VectorIsa> {
        [VectorIsa::Portable, VectorIsa::Avx2, VectorIsa::Avx512]
            .into_iter()
            .filter(|isa| isa.is_available())
            .collect()
    }

    /// Builds the inputs: every 193rd f32 bit pattern (all signs and exponents,
    /// about 22 million values), every 1/1024 in [-24, 24], and special values.
    fn sweep() -> Vec<f32> {
        let mut x: Vec<f32> = (0..=u32::MAX).step_by(193).map(f32::from_bits).collect();
        x.extend((-24 * 1024..=24 * 1024).map(|i| i as f32 / 1024.0));
        x.extend([
            0.0,
            -0.0,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            1e-45,
            -1e-45,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ]);
        x
    }

    fn silu_f64(x: f64) -> f64 {
        x / (1.0 + (-x).exp())
    }

    /// `0.5 x (1 + tanh(u))` written as `x sigmoid(2u)`, which keeps its digits
    /// in f64 for negative x too.
    fn gelu_tanh_f64(x: f64) -> f64 {
        let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044_715 * x * x * x);
        x / (1.0 + (-2.0 * u).exp())
    }

    /// Checks `got` against `want` within the module's error bound at input `x`.
    /// `z_scale` is the magnitude of the sigmoid's argument, which widens the bound
    /// for tanh-GELU, and is zero for SiLU and tanh.
    fn within_bound(x: f32, got: f32, want: f64, z_scale: f64) -> bool {
        if want.is_nan() {
            return got.is_nan();
        }
        if want.is_infinite() {
            return f64::from(got) == want;
        }
        let relative = 3e-7 * z_scale.max(1.0);
        // A sigmoid below e^-87 is flushed to zero.
        let absolute = 1.7e-38 * f64::from(x.abs()).max(1.0);
        (f64::from(got) - want).abs() <= relative * want.abs() + absolute
    }

    /// Runs `kernel` on `values` through every available instruction set and
    /// checks each result element with `check`.
    fn check_each_isa(
        name: &str,
        x: &[f32],
        kernel: impl Fn(VectorIsa, &mut [f32]),
        check: impl Fn(f32, f32) -> bool,
    ) {
        for isa in available() {
            let mut out = x.to_vec();
            kernel(isa, &mut out);
            let bad: Vec<(f32, f32)> = x
                .iter()
                .zip(&out)
                .filter(|&(&x, &got)| !check(x, got))
                .map(|(&x, &got)| (x, got))
                .take(5)
                .collect();
            assert!(bad.is_empty(), "{name} on {isa:?}: (x, got) {bad:?}");
        }
    }

    #[test]
    fn silu_within_bound_everywhere() {
        let x = sweep();
        let ones = vec![1.0; x.len()];
        check_each_isa(
            "silu",
            &x,
            |isa, out| gated_activation_with(isa, out, &ones, Activation::Silu),
            |x, got| within_bound(x, got, silu_f64(f64::from(x)), 0.0),
        );
    }

    #[test]
    fn gelu_tanh_within_bound_everywhere() {
        let x = sweep();
        let ones = vec![1.0; x.len()];
        check_each_isa(
            "gelu_tanh",
            &x,
            |isa, out| gated_activation_with(isa, out, &ones, Activation::GeluTanh),
            |x, got| {
                let x64 = f64::from(x);
                let z = 2.0 * (2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044_715 * x64.powi(3));
                within_bound(x, got, gelu_tanh_f64(x64), z.abs())
            },
        );
    }

    #[test]
    fn softcap_within_bound_everywhere() {
        let x = sweep();
        for cap in [1.0f32, 30.0] {
            check_each_isa(
                "softcap",
                &x,
                |isa, out| isa.run(out, Kernel::Softcap(cap)),
                |x, got| {
                    let want = f64::from(cap) * (f64::from(x) / f64::from(cap)).tanh();
                    // The division by the cap rounds once before tanh.
                    within_bound(x, got, want, 0.0)
                },
            );
        }
    }

    #[test]
    fn activations_agree_with_scalar_reference() {
        // Where the libm-based reference keeps its digits, the two agree closely;
        // below x = -4 the reference's `1 + tanh(u)` cancels, so only [-4, 16] is
        // compared.
        let x: Vec<f32> = (-4 * 1024..=16 * 1024).map(|i| i as f32 / 1024.0).collect();
        let mut silu_out = x.clone();
        let mut gelu_out = x.clone();
        let ones = vec![1.0; x.len()];
        gated_activation(&mut silu_out, &ones, Activation::Silu);
        gated_activation(&mut gelu_out, &ones, Activation::GeluTanh);
        for (i, &x) in x.iter().enumerate() {
            let tolerance = 1e-6 * x.abs().max(1e-2);
            assert!(
                (silu_out[i] - silu(x)).abs() <= tolerance,
                "silu({x}): {} against {}",
                silu_out[i],
                silu(x)
            );
            assert!(
                (gelu_out[i] - gelu_tanh(x)).abs() <= tolerance,
                "gelu_tanh({x}): {} against {}",
                gelu_out[i],
                gelu_tanh(x)
            );
        }
    }

    #[test]
    fn gated_activation_multiplies_by_up() {
        // Lengths off the vector width and above one parallel chunk.
        for len in [0, 1, 15, 17, PAR_CHUNK_ELEMS + 33] {
            let gate: Vec<f32> = (0..len).map(|i| (i % 97) as f32 * 0.11 - 5.0).collect();
            let up: Vec<f32> = (0..len).map(|i| (i % 13) as f32 - 6.0).collect();
            for activation in [Activation::Silu, Activation::GeluTanh] {
                let mut product = gate.clone();
                gated_activation(&mut product, &up, activation);
                let mut alone = gate.clone();
                gated_activation(&mut alone, &vec![1.0; len], activation);
                for i in 0..len {
                    assert_eq!(
                        product[i],
                        alone[i] * up[i],
                        "{activation:?}, len {len}, i {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn gated_activation_known_values() {
        let mut g = vec![0.0, 1.0, -1.0];
        gated_activation(&mut g, &[3.0, 2.0, 1.0], Activation::Silu);
        assert_eq!(g[0], 0.0);
        assert!((g[1] - 2.0 * 0.731_058_6).abs() < 1e-6);
        assert!((g[2] + 0.268_941_4).abs() < 1e-6);
    }
}
