//! Quantized and float products against dequantise-then-f64 references.

mod quant_support;

use attend_models::quant::{
    matmul, matmul_f32_with_isa, matmul_many, matmul_many_with, matmul_prequantized, matmul_with,
    matmul_with_isa, Activations, Isa, Product, QuantError, QuantMatrix, QuantizedActivations,
};
use attend_models::GgmlType;
use proptest::prelude::*;
use quant_support::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

fn available_isas() -> Vec<Isa> {
    [Isa::Portable, Isa::Avx2, Isa::Avx512Vnni, Isa::Neon]
        .into_iter()
        .filter(|isa| isa.is_available())
        .collect()
}

/// Runs one product with `isa` and checks every output against both bounds;
/// returns the first violation as a message.
fn check_product(
    ty: GgmlType,
    rows: usize,
    cols: usize,
    tokens: usize,
    isa: Isa,
    seed: u64,
) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let bytes = random_weights(ty, rows, cols, &mut rng);
    let x = random_activations(tokens, cols, &mut rng);
    let w = QuantMatrix::new(ty, &bytes, rows, cols).unwrap();
    let mut out = vec![f32::NAN; tokens * rows];
    matmul_with_isa(&w, &x, tokens, &mut out, isa).unwrap();

    let w_f32 = dequantize_all(ty, &bytes, rows, cols);
    let magnitudes = term_magnitudes(ty, &bytes, rows, cols);
    let exact = reference_product(&w_f32, &x, rows, cols, tokens);
    let (x_hat, block) = if ty.is_quantized() {
        (
            quantized_activations(&x, tokens, cols, ty),
            ty.block_elems(),
        )
    } else {
        (x.clone(), 1)
    };
    let against_x_hat = reference_product(&w_f32, &x_hat, rows, cols, tokens);

    for t in 0..tokens {
        for r in 0..rows {
            let got = out[t * rows + r] as f64;
            let rounding = rounding_bound(&magnitudes, &x_hat, r, t, cols);
            let err_hat = (got - against_x_hat[t * rows + r]).abs();
            if err_hat.is_nan() || err_hat > rounding {
                return Err(format!(
                    "{ty} {isa:?} [{rows}x{cols}] tokens {tokens}: out[{t}, {r}] = {got}, \
                     reference with quantised x {}, error {err_hat:e} > rounding bound {rounding:e}",
                    against_x_hat[t * rows + r]
                ));
            }
            if ty.is_quantized() {
                let bound = activation_bound(&w_f32, &x, r, t, cols, block) + rounding;
                let err = (got - exact[t * rows + r]).abs();
                if err.is_nan() || err > bound {
                    return Err(format!(
                        "{ty} {isa:?} [{rows}x{cols}] tokens {tokens}: out[{t}, {r}] = {got}, \
                         exact {}, error {err:e} > activation bound {bound:e}",
                        exact[t * rows + r]
                    ));
                }
            }
        }
    }
    Ok(())
}

fn col_cases(ty: GgmlType) -> Vec<usize> {
    match ty.block_elems() {
        // Off the 64-code kernel step (32, 96, 288) and on it (64, 576); 448 and
        // 640 (7 and 10 steps) end the AVX-512 kernel's super-steps of 4 with
        // 2 + 1 and 2 steps.
        32 => vec![32, 64, 96, 288, 448, 576, 640],
        256 => vec![256, 512, 768],
        // Float weights: odd lengths off every SIMD width.
        _ => vec![1, 7, 33, 100, 576],
    }
}

#[test]
fn every_type_awkward_shapes() {
    let types = QUANTIZED.into_iter().chain(FLOAT);
    for (i, ty) in types.enumerate() {
        for isa in available_isas() {
            for rows in [1, 3, 5, 17] {
                for cols in col_cases(ty) {
                    for tokens in [1, 3, 17] {
                        let seed = (i * 1000 + rows * 100 + cols + tokens) as u64;
                        check_product(ty, rows, cols, tokens, isa, seed).unwrap();
                    }
                }
            }
        }
    }
}

#[test]
fn prefill_512_tokens() {
    for ty in QUANTIZED.into_iter().chain(FLOAT) {
        for isa in available_isas() {
            let cols = if ty.block_elems() == 256 { 512 } else { 96 };
            check_product(ty, 9, cols, 512, isa, 7).unwrap();
        }
    }
}

#[test]
fn token_counts_around_the_row_kernel_limit() {
    // Up to 16 tokens (8 for the 256-weight types) go through the single-token row
    // kernel token by token, and more go through the tiles. Each limit is tested from
    // both sides.
    for ty in QUANTIZED {
        let cols = if ty.block_elems() == 256 { 512 } else { 96 };
        for tokens in [2, 8, 9, 16, 17] {
            for isa in available_isas() {
                check_product(ty, 37, cols, tokens, isa, tokens as u64).unwrap();
            }
        }
    }
}

#[test]
fn more_rows_than_one_task() {
    // Enough rows that the work splits into many tasks and a partial row tile.
    for ty in [GgmlType::Q4_1, GgmlType::Q4_K] {
        check_product(ty, 1027, 256, 5, Isa::detect(), 3).unwrap();
    }
}

#[test]
fn detected_isa_matches_portable() {
    let mut rng = StdRng::seed_from_u64(11);
    for ty in QUANTIZED {
        let (rows, cols, tokens) = (13, 512, 6);
        let bytes = random_weights(ty, rows, cols, &mut rng);
        let x = random_activations(tokens, cols, &mut rng);
        let w = QuantMatrix::new(ty, &bytes, rows, cols).unwrap();
        let mut portable = vec![0.0; tokens * rows];
        let mut fast = vec![0.0; tokens * rows];
        matmul_with_isa(&w, &x, tokens, &mut portable, Isa::Portable).unwrap();
        matmul(&w, &x, tokens, &mut fast).unwrap();
        let magnitudes = term_magnitudes(ty, &bytes, rows, cols);
        let x_hat = quantized_activations(&x, tokens, cols, ty);
        for t in 0..tokens {
            for r in 0..rows {
                let (a, b) = (portable[t * rows + r] as f64, fast[t * rows + r] as f64);
                let bound = 2.0 * rounding_bound(&magnitudes, &x_hat, r, t, cols);
                assert!(
                    (a - b).abs() <= bound,
                    "{ty} out[{t}, {r}]: portable {a}, detected {b}"
                );
            }
        }
    }
}

#[test]
fn zero_sized_shapes() {
    let bytes = vec![0u8; 0];
    let w = QuantMatrix::new(GgmlType::Q4_1, &bytes, 0, 64).unwrap();
    matmul(&w, &[0.0; 128], 2, &mut []).unwrap();

    let mut rng = StdRng::seed_from_u64(1);
    let bytes = random_weights(GgmlType::Q4_1, 3, 64, &mut rng);
    let w = QuantMatrix::new(GgmlType::Q4_1, &bytes, 3, 64).unwrap();
    matmul(&w, &[], 0, &mut []).unwrap();

    let w = QuantMatrix::new(GgmlType::Q8_0, &[], 3, 0).unwrap();
    let mut out = vec![f32::NAN; 6];
    matmul(&w, &[], 2, &mut out).unwrap();
    assert_eq!(out, vec![0.0; 6]);
}

#[test]
fn cols_off_the_block_rejected() {
    let err = QuantMatrix::new(GgmlType::Q4_K, &[0; 144], 1, 128).unwrap_err();
    assert_eq!(
        err,
        QuantError::ColsNotBlockMultiple {
            ty: GgmlType::Q4_K,
            cols: 128,
            block_elems: 256
        }
    );
    assert!(err.to_string().contains("cols = 128"), "{err}");

    // Two rows of 128 make one whole Q4_K block, but each row must be whole.
    let err = QuantMatrix::new(GgmlType::Q4_K, &[0; 144], 2, 128).unwrap_err();
    assert_eq!(
        err,
        QuantError::ColsNotBlockMultiple {
            ty: GgmlType::Q4_K,
            cols: 128,
            block_elems: 256
        }
    );
}

#[test]
fn weight_length_mismatch_rejected() {
    let err = QuantMatrix::new(GgmlType::Q4_1, &[0; 39], 1, 64).unwrap_err();
    assert_eq!(
        err,
        QuantError::ByteLength {
            ty: GgmlType::Q4_1,
            elems: 64,
            expected_bytes: 40,
            actual_bytes: 39
        }
    );
}

#[test]
fn activation_and_output_lengths_rejected() {
    let bytes = [0u8; 80];
    let w = QuantMatrix::new(GgmlType::Q4_1, &bytes, 2, 64).unwrap();
    let err = matmul(&w, &[0.0; 127], 2, &mut [0.0; 4]).unwrap_err();
    assert_eq!(
        err,
        QuantError::BufferLength {
            name: "x",
            dim0: 2,
            dim1: 64,
            expected: 128,
            actual: 127
        }
    );
    let err = matmul(&w, &[0.0; 128], 2, &mut [0.0; 5]).unwrap_err();
    assert_eq!(
        err,
        QuantError::BufferLength {
            name: "out",
            dim0: 2,
            dim1: 2,
            expected: 4,
            actual: 5
        }
    );
}

#[test]
fn unsupported_type_rejected() {
    let err = QuantMatrix::new(GgmlType::Q5_1, &[0; 24], 1, 32).unwrap_err();
    assert_eq!(err, QuantError::UnsupportedType { ty: GgmlType::Q5_1 });
}

#[test]
fn overflowing_shape_rejected() {
    let err = QuantMatrix::new(GgmlType::F32, &[], usize::MAX, 2).unwrap_err();
    assert!(matches!(err, QuantError::ShapeOverflow { .. }), "{err:?}");
}

fn any_type() -> impl Strategy<Value = GgmlType> {
    prop::sample::select(QUANTIZED.into_iter().chain(FLOAT).collect::<Vec<_>>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_shapes_within_bounds(
        ty in any_type(),
        rows in 1usize..24,
        blocks in 1usize..6,
        tokens in 1usize..12,
        seed in any::<u64>(),
    ) {
        let cols = blocks * ty.block_elems().max(16);
        for isa in available_isas() {
            let result = check_product(ty, rows, cols, tokens, isa, seed);
            prop_assert!(result.is_ok(), "{}", result.unwrap_err());
        }
    }
}

#[test]
fn non_finite_activations_give_nan() {
    let mut rng = StdRng::seed_from_u64(8);
    for ty in QUANTIZED {
        let (rows, cols) = (5, 256);
        let bytes = random_weights(ty, rows, cols, &mut rng);
        let w = QuantMatrix::new(ty, &bytes, rows, cols).unwrap();
        for bad in [f32::NAN, f32::INFINITY] {
            for isa in available_isas() {
                let mut x = random_activations(2, cols, &mut rng);
                x[7] = bad;
                let mut out = vec![0.0; 2 * rows];
                matmul_with_isa(&w, &x, 2, &mut out, isa).unwrap();
                for r in 0..rows {
                    assert!(
                        out[r].is_nan(),
                        "{ty} {isa:?} x[7] = {bad}: out[0, {r}] = {}",
                        out[r]
                    );
                    assert!(
                        out[rows + r].is_finite(),
                        "{ty} {isa:?}: token 1 out[1, {r}] = {}",
                        out[rows + r]
                    );
                }
            }
        }
    }
}

/// Checks `out = x w^T` against the f64 product within f32 accumulation of `cols`
/// terms: at most `cols * eps * sum |w x|` per element.
fn assert_within_f32_rounding(
    label: &str,
    w_f32: &[f32],
    x: &[f32],
    out: &[f32],
    rows: usize,
    cols: usize,
) {
    let tokens = x.len() / cols;
    let exact = reference_product(w_f32, x, rows, cols, tokens);
    for t in 0..tokens {
        for r in 0..rows {
            let magnitude: f64 = (0..cols)
                .map(|c| (w_f32[r * cols + c] * x[t * cols + c]).abs() as f64)
                .sum();
            let bound = cols as f64 * f32::EPSILON as f64 * magnitude;
            let (got, want) = (out[t * rows + r] as f64, exact[t * rows + r]);
            assert!(
                (got - want).abs() <= bound,
                "{label} out[{t}, {r}]: {got} vs {want}, bound {bound:e}"
            );
        }
    }
}

#[test]
fn float_weights_over_several_panels() {
    // 130 rows span three 64-row panels of the F16/BF16 path; F32 bytes at
    // an odd address cannot be viewed as f32 and take the same path.
    let (rows, cols, tokens) = (130, 72, 5);
    let mut rng = StdRng::seed_from_u64(21);
    for ty in FLOAT {
        let bytes = random_weights(ty, rows, cols, &mut rng);
        let mut shifted = vec![0u8; bytes.len() + 1];
        shifted[1..].copy_from_slice(&bytes);
        let x = random_activations(tokens, cols, &mut rng);
        let w_f32 = dequantize_all(ty, &bytes, rows, cols);
        for data in [&bytes[..], &shifted[1..]] {
            let w = QuantMatrix::new(ty, data, rows, cols).unwrap();
            let mut out = vec![f32::NAN; tokens * rows];
            matmul(&w, &x, tokens, &mut out).unwrap();
            assert_within_f32_rounding(&format!("{ty}"), &w_f32, &x, &out, rows, cols);
        }
    }
}

#[test]
fn f32_activations_within_f32_rounding() {
    // With Activations::F32 the only error left is f32 rounding against the
    // dequantised weights, for every type: at most cols * eps * sum |w x|, far below
    // the 8-bit activation bound. One and five tokens take the row-by-row path, 17
    // the f32 GEMM path, whose 130 rows span three 64-row panels.
    let rows = 130;
    let mut rng = StdRng::seed_from_u64(41);
    for ty in QUANTIZED.into_iter().chain(FLOAT) {
        for cols in col_cases(ty) {
            let bytes = random_weights(ty, rows, cols, &mut rng);
            let w = QuantMatrix::new(ty, &bytes, rows, cols).unwrap();
            let w_f32 = dequantize_all(ty, &bytes, rows, cols);
            for tokens in [1, 5, 17] {
                let x = random_activations(tokens, cols, &mut rng);
                let mut out = vec![f32::NAN; tokens * rows];
                matmul_with(&w, &x, tokens, &mut out, Activations::F32).unwrap();
                let mut many = vec![f32::NAN; tokens * rows];
                matmul_many_with(
                    &x,
                    tokens,
                    &mut [Product { w, out: &mut many }],
                    Activations::F32,
                )
                .unwrap();
                let label = format!("{ty} [{rows}x{cols}] tokens {tokens}");
                assert_eq!(out, many, "{label}");
                assert_within_f32_rounding(&label, &w_f32, &x, &out, rows, cols);
            }
        }
    }
}

/// Runs the f32-activation product with `isa` and checks it against the f64 product
/// of the dequantised weights.
fn check_f32_rows(ty: GgmlType, rows: usize, cols: usize, tokens: usize, isa: Isa, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let bytes = random_weights(ty, rows, cols, &mut rng);
    let w = QuantMatrix::new(ty, &bytes, rows, cols).unwrap();
    let x = random_activations(tokens, cols, &mut rng);
    let mut out = vec![f32::NAN; tokens * rows];
    matmul_f32_with_isa(&w, &x, tokens, &mut out, isa).unwrap();
    let w_f32 = dequantize_all(ty, &bytes, rows, cols);
    let label = format!("{ty} {isa:?} [{rows}x{cols}] tokens {tokens}");
    assert_within_f32_rounding(&label, &w_f32, &x, &out, rows, cols);
}

#[test]
fn f32_rows_every_type_and_isa() {
    // Token counts around the AVX2 (4) and AVX-512 (8) token tiles up to the
    // path's limit of 16; row counts odd and off the task size.
    for (i, ty) in QUANTIZED.into_iter().enumerate() {
        for isa in available_isas() {
            for rows in [1, 3, 7, 33] {
                for cols in col_cases(ty) {
                    for tokens in [1, 2, 4, 5, 8, 9, 16] {
                        let seed = (i * 100_000 + rows * 1000 + cols + tokens) as u64;
                        check_f32_rows(ty, rows, cols, tokens, isa, seed);
                    }
                }
            }
        }
    }
}

#[test]
fn f32_rows_decode_weights_exactly() {
    // With one-hot tokens each output is one dequantised weight times 1 plus zeros,
    // so a kernel that decodes any weight differently from `dequantize` fails here
    // even where the rounding bound would hide it.
    let (rows, tokens) = (5, 16);
    let mut rng = StdRng::seed_from_u64(43);
    for ty in QUANTIZED {
        let cols = 2 * ty.block_elems().max(256);
        let bytes = random_weights(ty, rows, cols, &mut rng);
        let w = QuantMatrix::new(ty, &bytes, rows, cols).unwrap();
        let w_f32 = dequantize_all(ty, &bytes, rows, cols);
        for isa in available_isas() {
            for c0 in (0..cols).step_by(tokens) {
                // Token t picks column c0 + t.
                let mut x = vec![0.0f32; tokens * cols];
                for t in 0..tokens {
                    x[t * cols + c0 + t] = 1.0;
                }
                let mut out = vec![f32::NAN; tokens * rows];
                matmul_f32_with_isa(&w, &x, tokens, &mut out, isa).unwrap();
                for t in 0..tokens {
                    for r in 0..rows {
                        let (got, want) = (out[t * rows + r], w_f32[r * cols + c0 + t]);
                        assert_eq!(got, want, "{ty} {isa:?} W[{r}, {}]", c0 + t);
                    }
                }
            }
        }
    }
}

#[test]
fn f32_rows_non_finite_activations() {
    let mut rng = StdRng::seed_from_u64(44);
    let (rows, cols, tokens) = (6, 256, 3);
    for ty in QUANTIZED {
        let bytes = random_weights(ty, rows, cols, &mut rng);
        let w = QuantMatrix::new(ty, &bytes, rows, cols).unwrap();
        for isa in available_isas() {
            let mut x = random_activations(tokens, cols, &mut rng);
            x[cols + 9] = f32::NAN;
            let mut out = vec![0.0; tokens * rows];
            matmul_f32_with_isa(&w, &x, tokens, &mut out, isa).unwrap();
            for r in 0..rows {
                assert!(out[r].is_finite(), "{ty} {isa:?} out[0, {r}]");
                assert!(out[rows + r].is_nan(), "{ty} {isa:?} out[1, {r}]");
                assert!(out[2 * rows + r].is_finite(), "{ty} {isa:?} out[2, {r}]");
            }
        }
    }
}

#[test]
fn f32_rows_reject_unavailable_isa() {
    let mut rng = StdRng::seed_from_u64(45);
    let bytes = random_weights(GgmlType::Q8_0, 2, 32, &mut rng);
    let w = QuantMatrix::new(GgmlType::Q8_0, &bytes, 2, 32).unwrap();
    let x = random_activations(1, 32, &mut rng);
    for isa in [Isa::Avx2, Isa::Avx512Vnni, Isa::Neon] {
        let mut out = vec![0.0; 2];
        let result = matmul_f32_with_isa(&w, &x, 1, &mut out, isa);
        if isa.is_available() {
            assert!(result.is_ok(), "{isa:?}: {result:?}");
        } else {
            assert!(
                matches!(result, Err(QuantError::IsaUnavailable { .. })),
                "{isa:?}: {result:?}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn f32_rows_random_shapes(
        ty in prop::sample::select(QUANTIZED.to_vec()),
        rows in 1usize..40,
        blocks in 1usize..8,
        tokens in 1usize..=16,
        seed in any::<u64>(),
    ) {
        let cols = blocks * ty.block_elems();
        for isa in available_isas() {
            check_f32_rows(ty, rows, cols, tokens, isa, seed);
        }
    }
}

#[test]
fn f32_activations_check_lengths() {
    let mut rng = StdRng::seed_from_u64(42);
    let ty = GgmlType::Q4_0;
    let bytes = random_weights(ty, 3, 32, &mut rng);
    let w = QuantMatrix::new(ty, &bytes, 3, 32).unwrap();
    let mut out = vec![0.0; 6];
    let err = matmul_with(&w, &[0.0; 63], 2, &mut out, Activations::F32).unwrap_err();
    assert!(
        matches!(err, QuantError::BufferLength { name: "x", .. }),
        "{err}"
    );
    let err = matmul_with(&w, &[0.0; 64], 2, &mut out[..5], Activations::F32).unwrap_err();
    assert!(
        matches!(err, QuantError::BufferLength { name: "out", .. }),
        "{err}"
    );
    assert_eq!("f32".parse::<Activations>(), Ok(Activations::F32));
    assert_eq!("q8".parse::<Activations>(), Ok(Activations::Q8));
    let err = "f16".parse::<Activations>().unwrap_err();
    assert!(err.contains("`f16`"), "{err}");
    assert!(err.contains("q8 or f32"), "{err}");
}

#[test]
fn prequantized_matches_matmul() {
    let mut rng = StdRng::seed_from_u64(31);
    let (cols, tokens) = (512, 3);
    let x = random_activations(tokens, cols, &mut rng);
    for ty in QUANTIZED {
        let rows = 7;
        let bytes = random_weights(ty, rows, cols, &mut rng);
        let w = QuantMatrix::new(ty, &bytes, rows, cols).unwrap();
        let acts = QuantizedActivations::quantize(&x, tokens, cols, ty).unwrap();
        for isa in available_isas() {
            let mut direct = vec![0.0; tokens * rows];
            let mut reused = vec![0.0; tokens * rows];
            matmul_with_isa(&w, &x, tokens, &mut direct, isa).unwrap();
            matmul_prequantized(&w, &acts, &mut reused, isa).unwrap();
            assert_eq!(direct, reused, "{ty} {isa:?}");
        }
    }
}

#[test]
fn prequantized_block_mismatch_rejected() {
    let mut rng = StdRng::seed_from_u64(32);
    let x = random_activations(1, 256, &mut rng);
    let acts = QuantizedActivations::quantize(&x, 1, 256, GgmlType::Q4_1).unwrap();
    let bytes = random_weights(GgmlType::Q4_K, 2, 256, &mut rng);
    let w = QuantMatrix::new(GgmlType::Q4_K, &bytes, 2, 256).unwrap();
    let err = matmul_prequantized(&w, &acts, &mut [0.0; 2], Isa::Portable).unwrap_err();
    assert_eq!(
        err,
        QuantError::ActivationBlock {
            ty: GgmlType::Q4_K,
            weight_block_elems: 256,
            activation_block_elems: 32
        }
    );

    let bytes = random_weights(GgmlType::Q8_0, 2, 128, &mut rng);
    let w = QuantMatrix::new(GgmlType::Q8_0, &bytes, 2, 128).unwrap();
    let err = matmul_prequantized(&w, &acts, &mut [0.0; 2], Isa::Portable).unwrap_err();
    assert!(
        matches!(err, QuantError::BufferLength { name: "acts", .. }),
        "{err:?}"
    );
}

/// `matmul_many` over a mix of types, block sizes and row counts (float, empty
/// and off the tile width included) gives each product bit for bit what
/// `matmul` gives for it alone, for one token (the shared task list) and several.
#[test]
fn many_matches_matmul_bit_for_bit() {
    let mut rng = StdRng::seed_from_u64(11);
    let cols = 512;
    let shapes = [
        (GgmlType::Q4_1, 37),
        (GgmlType::Q8_0, 0),
        (GgmlType::Q4_K, 5),
        (GgmlType::F16, 3),
        (GgmlType::Q6_K, 130),
        (GgmlType::Q5_0, 64),
    ];
    let weights: Vec<Vec<u8>> = shapes
        .iter()
        .map(|&(ty, rows)| random_weights(ty, rows, cols, &mut rng))
        .collect();
    for tokens in [0, 1, 3] {
        let x = random_activations(tokens, cols, &mut rng);
        let matrices: Vec<QuantMatrix> = shapes
            .iter()
            .zip(&weights)
            .map(|(&(ty, rows), bytes)| QuantMatrix::new(ty, bytes, rows, cols).unwrap())
            .collect();
        let mut outs: Vec<Vec<f32>> = matrices
            .iter()
            .map(|w| vec![f32::NAN; tokens * w.rows()])
            .collect();
        let mut products: Vec<Product> = matrices
            .iter()
            .zip(outs.iter_mut())
            .map(|(w, out)| Product { w: *w, out })
            .collect();
        matmul_many(&x, tokens, &mut products).unwrap();
        for (w, got) in matrices.iter().zip(&outs) {
            let mut want = vec![f32::NAN; tokens * w.rows()];
            matmul(w, &x, tokens, &mut want).unwrap();
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{} [{}x{cols}] tokens {tokens}", w.ty(), w.rows());
        }
    }
}

#[test]
fn many_rejects_a_wrong_output_length() {
    let mut rng = StdRng::seed_from_u64(12);
    let bytes = random_weights(GgmlType::Q4_1, 4, 64, &mut rng);
    let w = QuantMatrix::new(GgmlType::Q4_1, &bytes, 4, 64).unwrap();
    let x = random_activations(1, 64, &mut rng);
    let mut out = vec![0.0; 3];
    let err = matmul_many(&x, 1, &mut [Product { w, out: &mut out }]).unwrap_err();
    assert!(
        matches!(err, QuantError::BufferLength { name: "out", .. }),
        "{err:?}"
    );
}
