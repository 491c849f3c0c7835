//! Every instruction set against the portable implementation.

use half::{bf16, f16};

use super::*;

/// Returns the instruction sets this CPU can run, portable first.
fn available_isas() -> Vec<Isa> {
    [Isa::Portable, Isa::Avx2Fma, Isa::Avx512, Isa::Neon]
        .into_iter()
        .filter(|isa| isa.is_available())
        .collect()
}

/// Deterministic values in [-1, 1].
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 + 1.0) * (seed as f32 * 0.618 + 0.7)).sin())
        .collect()
}

/// Lengths around the 4-, 8- and 16-lane widths and their unrolled multiples.
const LENGTHS: [usize; 12] = [0, 1, 3, 7, 8, 15, 16, 17, 31, 64, 65, 257];

/// Computes every row primitive over every length and returns the results, flattened.
struct RowPrimitives;

impl SimdOp for RowPrimitives {
    type Output = Vec<f32>;

    fn run<S: Simd>(self, simd: S) -> Vec<f32> {
        let mut results = Vec::new();
        for n in LENGTHS {
            let a = values(n, 1);
            let b = values(n, 2);
            let b_f16: Vec<f16> = b.iter().map(|&x| f16::from_f32(x)).collect();
            let b_bf16: Vec<bf16> = b.iter().map(|&x| bf16::from_f32(x)).collect();
            results.push(simd.dot(&a, &b));
            results.push(simd.dot_f16(&a, &b_f16));
            results.push(simd.dot_bf16(&a, &b_bf16));
            results.push(simd.max(&a));

            let mut widened = vec![0.0; n];
            simd.widen_f16(&b_f16, &mut widened);
            results.extend(&widened);
            simd.widen_bf16(&b_bf16, &mut widened);
            results.extend(&widened);

            let mut y = b.clone();
            simd.axpy(0.5, &a, &mut y);
            simd.axpy_f16(-0.25, &b_f16, &mut y);
            simd.axpy_bf16(2.0, &b_bf16, &mut y);
            simd.scale(1.5, &mut y);
            results.extend(&y);

            let mut e = a.clone();
            if n > 2 {
                e[1] = f32::NEG_INFINITY;
            }
            results.push(simd.exp_sub_sum(&mut e, 0.5));
            results.extend(&e);
        }
        results
    }
}

/// Computes score, softmax and value tiles for awkward head dims, key counts and strides.
struct TilePrimitives;

impl SimdOp for TilePrimitives {
    type Output = Vec<f32>;

    fn run<S: Simd>(self, simd: S) -> Vec<f32> {
        let mut results = Vec::new();
        for head_dim in [1, 3, 16, 17, 64, 100] {
            for cols in [1, 5, 7, 13, TILE_KV] {
                for row_stride in [head_dim, head_dim + 3] {
                    let qt = values(head_dim * TILE_Q, 3);
                    let k = values(cols * row_stride, 4);
                    let k_f16: Vec<f16> = k.iter().map(|&x| f16::from_f32(x)).collect();
                    let k_bf16: Vec<bf16> = k.iter().map(|&x| bf16::from_f32(x)).collect();
                    let mut st = vec![0.0; cols * TILE_Q];
                    simd.qk_tile(&qt, &k, row_stride, cols, head_dim, 0.125, &mut st);
                    results.extend(&st);

                    // The same keys against a few query rows, scores in rows of TILE_KV,
                    // with the keys in each storage type.
                    for rows in [1, 3, 4, 5, 9] {
                        let q = values(rows * head_dim, 7);
                        for k in [Rows::F32(&k), Rows::F16(&k_f16), Rows::Bf16(&k_bf16)] {
                            let mut s = vec![0.0; rows * TILE_KV];
                            simd.qk_rows(&q, k, row_stride, cols, head_dim, 0.125, &mut s, TILE_KV);
                            results.extend(&s);
                        }
                    }

                    // The same scores from bf16 inputs, queries in pairs along head_dim.
                    let mut qp = vec![bf16::ZERO; head_dim.div_ceil(2) * 2 * TILE_Q];
                    for d in 0..head_dim {
                        for i in 0..TILE_Q {
                            qp[(d / 2) * 2 * TILE_Q + 2 * i + d % 2] =
                                bf16::from_f32(qt[d * TILE_Q + i]);
                        }
                    }
                    let mut st_bf16 = vec![0.0; cols * TILE_Q];
                    simd.qk_tile_bf16(
                        &qp,
                        &k_bf16,
                        row_stride,
                        cols,
                        head_dim,
                        0.125,
                        &mut st_bf16,
                    );
                    results.extend(&st_bf16);

                    // Hide some scores, and all of query 5, to exercise the -inf guard.
                    for (index, score) in st.iter_mut().enumerate() {
                        if index % 7 == 3 || index % TILE_Q == 5 {
                            *score = f32::NEG_INFINITY;
                        }
                    }
                    let mut m = values(TILE_Q, 9);
                    m[5] = f32::NEG_INFINITY;
                    let mut l = values(TILE_Q, 10)
                        .iter()
                        .map(|x| x.abs())
                        .collect::<Vec<_>>();
                    l[5] = 0.0;
                    let mut correction = vec![0.0; TILE_Q];
                    simd.softmax_tile(&mut st, cols, &mut m, &mut l, &mut correction);
                    results.extend(st.iter().chain(&m).chain(&l).chain(&correction));

                    for rows in [1, 2, 3, 5, 7, TILE_Q] {
                        let v = values(cols * row_stride, 5);
                        let v_f16: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
                        let v_bf16: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
                        // The same probabilities row-major, rows `cols + 2` apart.
                        let p_row_stride = cols + 2;
                        let mut p = vec![f32::NAN; rows * p_row_stride];
                        for r in 0..rows {
                            for j in 0..cols {
                                p[r * p_row_stride + j] = st[j * TILE_Q + r];
                            }
                        }
                        for v in [Rows::F32(&v), Rows::F16(&v_f16), Rows::Bf16(&v_bf16)] {
                            let mut o = values(rows * head_dim, 6);
                            simd.pv_tile(&st, v, row_stride, cols, head_dim, &mut o);
                            results.extend(&o);

                            // Both layouts run the same products in the same order.
                            let mut o_rows = values(rows * head_dim, 6);
                            simd.pv_rows(
                                &p,
                                p_row_stride,
                                v,
                                row_stride,
                                cols,
                                head_dim,
                                &mut o_rows,
                            );
                            let same = o
                                .iter()
                                .zip(&o_rows)
                                .all(|(a, b)| a.to_bits() == b.to_bits());
                            assert!(same, "pv_rows differs from pv_tile: rows {rows}, cols {cols}, head_dim {head_dim}");
                        }

                        // The same product with P rounded to bf16 and bf16 values in
                        // key pairs; NaN in the buffer shows any pair left unwritten.
                        let mut vp = vec![bf16::NAN; cols.div_ceil(2) * 2 * head_dim];
                        simd.pack_v_bf16(&v_bf16, row_stride, cols, head_dim, &mut vp);
                        results.extend(vp.iter().map(|x| x.to_f32()));
                        let mut o = values(rows * head_dim, 6);
                        simd.pv_tile_bf16(&st, &vp, cols, head_dim, &mut o);
                        results.extend(&o);
                    }
                }
            }
        }
        results
    }
}

#[test]
fn softmax_tile_keeps_hidden_queries_finite() {
    struct Op;
    impl SimdOp for Op {
        type Output = Vec<f32>;
        fn run<S: Simd>(self, simd: S) -> Vec<f32> {
            let mut st = vec![f32::NEG_INFINITY; 3 * TILE_Q];
            st[TILE_Q + 1] = 2.0;
            let mut m = vec![f32::NEG_INFINITY; TILE_Q];
            let mut l = vec![0.0; TILE_Q];
            let mut correction = vec![0.0; TILE_Q];
            simd.softmax_tile(&mut st, 3, &mut m, &mut l, &mut correction);
            st.iter()
                .chain(&m)
                .chain(&l)
                .chain(&correction)
                .copied()
                .collect()
        }
    }
    for isa in available_isas() {
        let x = dispatch(isa, Op).unwrap();
        let (st, rest) = x.split_at(3 * TILE_Q);
        let (m, rest) = rest.split_at(TILE_Q);
        let (l, correction) = rest.split_at(TILE_Q);
        for (index, &p) in st.iter().enumerate() {
            let expected = if index == TILE_Q + 1 { 1.0 } else { 0.0 };
            assert_eq!(p, expected, "{isa:?} probability {index}");
        }
        assert_eq!(m[1], 2.0, "{isa:?}");
        assert_eq!(l[1], 1.0, "{isa:?}");
        assert_eq!(
            (m[0], l[0], correction[0]),
            (f32::NEG_INFINITY, 0.0, 0.0),
            "{isa:?}"
        );
        assert_eq!(correction[1], 0.0, "{isa:?}");
    }
}

fn assert_close(isa: Isa, got: &[f32], expected: &[f32]) {
    assert_eq!(got.len(), expected.len());
    for (i, (&x, &y)) in got.iter().zip(expected).enumerate() {
        if x == y {
            // Also covers the infinities, where a difference would be NaN.
            continue;
        }
        // Vector code sums in a different order and uses its own exp, so results agree
        // to a few units in the last place relative to the largest terms (|x| <= ~300).
        let tolerance = 1e-5 * (1.0 + y.abs());
        assert!(
            (x - y).abs() <= tolerance,
            "{isa:?} result {i}: {x} vs portable {y}"
        );
    }
}

/// Scores a few query rows against keys at the head dims whose products have unrolled
/// copies, next to a neighbour without one.
struct UnrolledScores;

impl SimdOp for UnrolledScores {
    type Output = Vec<f32>;

    fn run<S: Simd>(self, simd: S) -> Vec<f32> {
        let mut results = Vec::new();
        for head_dim in [64, 128, 256, 272] {
            let (cols, row_stride) = (37, head_dim + 16);
            let k = values(cols * row_stride, 4);
            let k_f16: Vec<f16> = k.iter().map(|&x| f16::from_f32(x)).collect();
            let k_bf16: Vec<bf16> = k.iter().map(|&x| bf16::from_f32(x)).collect();
            for rows in [1, 2, 3, 4, 7] {
                let q = values(rows * head_dim, 7);
                for k in [Rows::F32(&k), Rows::F16(&k_f16), Rows::Bf16(&k_bf16)] {
                    let mut s = vec![0.0; rows * TILE_KV];
                    simd.qk_rows(&q, k, row_stride, cols, head_dim, 0.125, &mut s, TILE_KV);
                    results.extend(&s);
                }
            }
        }
        results
    }
}

#[test]
fn unrolled_scores_match_portable() {
    let expected = dispatch(Isa::Portable, UnrolledScores).unwrap();
    for isa in available_isas() {
        let got = dispatch(isa, UnrolledScores).unwrap();
        assert_eq!(got.len(), expected.len());
        for (i, (&x, &y)) in got.iter().zip(&expected).enumerate() {
            // A score sums up to 272 products of magnitude <= 1 scaled by 0.125, so the
            // rounding error of a different summation order is bounded by the terms,
            // not by the (possibly cancelled) result.
            assert!(
                (x - y).abs() <= 1e-4,
                "{isa:?} score {i}: {x} vs portable {y}"
            );
        }
    }
}

#[test]
fn row_primitives_match_portable() {
    let expected = dispatch(Isa::Portable, RowPrimitives).unwrap();
    for isa in available_isas() {
        assert_close(isa, &dispatch(isa, RowPrimitives).unwrap(), &expected);
    }
}

#[test]
fn tile_primitives_match_portable() {
    let expected = dispatch(Isa::Portable, TilePrimitives).unwrap();
    for isa in available_isas() {
        assert_close(isa, &dispatch(isa, TilePrimitives).unwrap(), &expected);
    }
}

#[test]
fn exp_of_negative_infinity_is_zero() {
    struct Op;
    impl SimdOp for Op {
        type Output = Vec<f32>;
        fn run<S: Simd>(self, simd: S) -> Vec<f32> {
            let mut x = vec![f32::NEG_INFINITY; 19];
            x[3] = 0.0;
            let sum = simd.exp_sub_sum(&mut x, 0.0);
            x.push(sum);
            x
        }
    }
    for isa in available_isas() {
        let x = dispatch(isa, Op).unwrap();
        for (i, &value) in x.iter().enumerate() {
            let expected = if i == 3 || i == 19 { 1.0 } else { 0.0 };
            assert_eq!(value, expected, "{isa:?} element {i}");
        }
    }
}

fn exp_inputs() -> Vec<f32> {
    (0..2000).map(|i| -80.0 + i as f32 * 0.04).collect()
}

#[test]
fn exp_is_accurate_over_softmax_range() {
    struct Op;
    impl SimdOp for Op {
        type Output = Vec<f32>;
        fn run<S: Simd>(self, simd: S) -> Vec<f32> {
            let mut x = exp_inputs();
            simd.exp_sub_sum(&mut x, 0.0);
            x
        }
    }
    for isa in available_isas() {
        let x = dispatch(isa, Op).unwrap();
        for (i, &value) in x.iter().enumerate() {
            let exact = f64::from(exp_inputs()[i]).exp();
            // A few f32 units in the last place (2^-24 ~ 6e-8).
            let relative = (f64::from(value) - exact).abs() / exact;
            assert!(relative < 5e-7, "{isa:?} exp at {i}: {value} vs {exact}");
        }
    }
}

#[test]
fn free_functions_use_detected_isa() {
    let a = values(37, 7);
    let b = values(37, 8);
    let expected: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    assert!((dot(&a, &b) - expected).abs() < 1e-5);
    let mut y = vec![1.0; 37];
    axpy(2.0, &a, &mut y);
    scale(0.5, &mut y);
    for (i, &value) in y.iter().enumerate() {
        assert!((value - (1.0 + 2.0 * a[i]) * 0.5).abs() < 1e-6);
    }
    // Zip semantics: the shorter slice sets the length.
    assert_eq!(dot(&a[..3], &b), dot(&a[..3], &b[..3]));
    assert_eq!(max(&[]), f32::NEG_INFINITY);
}

#[test]
fn bf16_dot_follows_cpu_features() {
    assert!(!Isa::Portable.has_bf16_dot());
    #[cfg(target_arch = "x86_64")]
    {
        let expected = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bf16")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl");
        assert_eq!(Isa::Avx512.has_bf16_dot(), expected);
        assert!(!Isa::Avx2Fma.has_bf16_dot());
    }
}

#[test]
fn unavailable_isa_is_an_error() {
    let missing = [Isa::Avx2Fma, Isa::Avx512, Isa::Neon]
        .into_iter()
        .find(|isa| !isa.is_available());
    if let Some(isa) = missing {
        assert_eq!(
            dispatch(isa, RowPrimitives).unwrap_err(),
            AttendError::IsaUnavailable { isa }
        );
    }
    assert!(Isa::detect().is_available());
}

/// Returns the rows of a strided `[rows, row_len]` slice of `len` elements that fit, up
/// to `rows`, counted one row at a time: the contract that the `*_shape` helpers compute
/// in closed form.
fn fitting_rows(len: usize, row_stride: usize, rows: usize, row_len: usize) -> usize {
    (0..rows)
        .take_while(|&r| r * row_stride + row_len <= len)
        .count()
}

/// One row-product call with slices that may be shorter than the requested shape.
#[derive(Debug, Clone, Copy)]
struct ShortCall {
    rows: usize,
    cols: usize,
    head_dim: usize,
    /// Distance between key or value rows, which may be below head_dim (overlapping rows).
    kv_row_stride: usize,
    /// Distance between score or probability rows, which may be below `cols`.
    s_row_stride: usize,
    /// Elements cut from the end of the key or value slice.
    kv_cut: usize,
    /// Elements cut from the end of the score or probability slice.
    s_cut: usize,
}

/// Calls with short, overlapping or degenerate slices around the 16-key blocks, the
/// unrolled head dims and the 4- and 6-row blocks.
fn short_calls() -> Vec<ShortCall> {
    let mut calls = Vec::new();
    let mut seed = 0x2545_f491_u64;
    let mut next = |bound: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % bound as u64) as usize
    };
    for head_dim in [1, 15, 16, 17, 64, 65, 128, 256] {
        for _ in 0..12 {
            let cols = next(40);
            let kv_row_stride = match next(4) {
                0 => 0,
                1 => head_dim / 2,
                _ => head_dim + next(3),
            };
            let s_row_stride = match next(3) {
                0 => cols / 2,
                _ => cols + next(3),
            };
            calls.push(ShortCall {
                rows: next(10),
                cols,
                head_dim,
                kv_row_stride,
                s_row_stride,
                kv_cut: next(3 * head_dim + 2),
                s_cut: next(2 * s_row_stride + 2),
            });
        }
    }
    calls
}

/// Runs `qk_rows` and `pv_rows` on [`short_calls`] with keys and values in each storage
/// type, and checks each against a plain f64 loop over the documented shape. Scores
/// outside the shape must stay NaN, and output rows outside it must keep their value.
struct ShortSlices;

impl SimdOp for ShortSlices {
    type Output = ();

    fn run<S: Simd>(self, simd: S) {
        for call in short_calls() {
            let ShortCall {
                rows,
                cols,
                head_dim,
                kv_row_stride,
                s_row_stride,
                kv_cut,
                s_cut,
            } = call;
            let kv_len = (cols.saturating_sub(1) * kv_row_stride + head_dim).saturating_sub(kv_cut);
            let s_len = (rows * s_row_stride).saturating_sub(s_cut);
            let kv = values(kv_len, 4);
            let kv_f16: Vec<f16> = kv.iter().map(|&x| f16::from_f32(x)).collect();
            let kv_bf16: Vec<bf16> = kv.iter().map(|&x| bf16::from_f32(x)).collect();
            let q = values(rows * head_dim, 7);
            let p = values(s_len, 9);

            // `cols` shrinks to the key or value rows in `kv` and to `s_row_stride`, then
            // `rows` to the score or probability rows of that many columns.
            let fit_cols = fitting_rows(kv_len, kv_row_stride, cols.min(s_row_stride), head_dim);
            let fit_rows = fitting_rows(s_len, s_row_stride, rows, fit_cols);
            for kv_rows in [Rows::F32(&kv), Rows::F16(&kv_f16), Rows::Bf16(&kv_bf16)] {
                let isa = simd.isa();
                let stored: Vec<f64> = match kv_rows {
                    Rows::F32(x) => x.iter().map(|&x| f64::from(x)).collect(),
                    Rows::F16(x) => x.iter().map(|&x| f64::from(x.to_f32())).collect(),
                    Rows::Bf16(x) => x.iter().map(|&x| f64::from(x.to_f32())).collect(),
                };
                let stored = |j: usize, d: usize| stored[j * kv_row_stride + d];

                let mut s = vec![f32::NAN; s_len];
                simd.qk_rows(
                    &q,
                    kv_rows,
                    kv_row_stride,
                    cols,
                    head_dim,
                    0.5,
                    &mut s,
                    s_row_stride,
                );
                let mut expected = vec![f64::NAN; s_len];
                for r in 0..fit_rows {
                    for j in 0..fit_cols {
                        let dot: f64 = (0..head_dim)
                            .map(|d| f64::from(q[r * head_dim + d]) * stored(j, d))
                            .sum();
                        expected[r * s_row_stride + j] = 0.5 * dot;
                    }
                }
                assert_shaped(isa, "qk_rows", call, &s, &expected);

                let mut o = vec![0.25; rows * head_dim];
                simd.pv_rows(
                    &p,
                    s_row_stride,
                    kv_rows,
                    kv_row_stride,
                    cols,
                    head_dim,
                    &mut o,
                );
                let mut expected = vec![0.25; rows * head_dim];
                for r in 0..fit_rows {
                    for d in 0..head_dim {
                        expected[r * head_dim + d] += (0..fit_cols)
                            .map(|j| f64::from(p[r * s_row_stride + j]) * stored(j, d))
                            .sum::<f64>();
                    }
                }
                assert_shaped(isa, "pv_rows", call, &o, &expected);
            }
        }
    }
}

/// Asserts that `got` matches `expected` within f32 rounding of a short sum, and that
/// `got` is NaN where `expected` is NaN (outside the documented shape).
fn assert_shaped(isa: Isa, what: &str, call: ShortCall, got: &[f32], expected: &[f64]) {
    for (i, (&x, &y)) in got.iter().zip(expected).enumerate() {
        if y.is_nan() {
            assert!(
                x.is_nan(),
                "{isa:?} {what} {call:?}: wrote {x} at {i}, outside the shape"
            );
            continue;
        }
        // At most 256 products of magnitude <= 1, summed in f32 in any order.
        assert!(
            (f64::from(x) - y).abs() <= 1e-4,
            "{isa:?} {what} {call:?}: {x} at {i}, expected {y}"
        );
    }
}

#[test]
fn row_products_shrink_to_short_slices() {
    for isa in available_isas() {
        dispatch(isa, ShortSlices).unwrap();
    }
}
