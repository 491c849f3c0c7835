//! Exact edge cases: fully masked rows, window edges, sinks, and every error path.

mod attention_support;

use attend::{
    attention, attention_reference, attention_varlen, attention_with_mods, AttendError,
    AttentionParams, Bshd, BshdMut, BshdShape, BshdStrides, Isa, Packed, PackedMut,
};
use attention_support::Tensor;

fn shape(batch: usize, seq_len: usize, heads: usize, head_dim: usize) -> BshdShape {
    BshdShape {
        batch,
        seq_len,
        heads,
        head_dim,
    }
}

/// Runs the kernel on contiguous f32 data and returns (out, lse).
fn run(
    q: &Tensor<f32>,
    k: &Tensor<f32>,
    v: &Tensor<f32>,
    params: &AttentionParams,
) -> Result<(Vec<f32>, Vec<f32>), AttendError> {
    let s = q.shape;
    let mut out = vec![f32::NAN; s.batch * s.seq_len * s.heads * s.head_dim];
    let mut lse = vec![f32::NAN; s.batch * s.heads * s.seq_len];
    let mut out_view = BshdMut::contiguous(&mut out, s.batch, s.seq_len, s.heads, s.head_dim)?;
    attention(
        q.view(),
        k.view(),
        v.view(),
        params,
        &mut out_view,
        Some(&mut lse),
    )?;
    Ok((out, lse))
}

fn all_isas() -> Vec<Isa> {
    attention_support::available_isas()
}

#[test]
fn fully_masked_rows_are_zero() {
    // Causal with q_len 100 > kv_len 30: queries 0..70 sit before key 0 and see nothing.
    let q = Tensor::<f32>::new(shape(1, 100, 2, 8), 0, 1);
    let k = Tensor::<f32>::new(shape(1, 30, 2, 8), 0, 2);
    let v = Tensor::<f32>::new(shape(1, 30, 2, 8), 0, 3);
    for isa in all_isas() {
        let params = AttentionParams {
            causal: true,
            isa: Some(isa),
            ..Default::default()
        };
        let (out, lse) = run(&q, &k, &v, &params).unwrap();
        for i in 0..100 {
            for h in 0..2 {
                let row = &out[(i * 2 + h) * 8..][..8];
                let lse = lse[h * 100 + i];
                if i < 70 {
                    assert!(
                        row.iter().all(|&x| x == 0.0),
                        "{isa:?} query {i} head {h}: {row:?}"
                    );
                    assert_eq!(lse, f32::NEG_INFINITY, "{isa:?} query {i} head {h}");
                } else {
                    assert!(
                        row.iter().all(|x| x.is_finite()) && lse.is_finite(),
                        "{isa:?} query {i} head {h}"
                    );
                }
            }
        }
    }
}

#[test]
fn empty_keys_give_zeros() {
    let q = Tensor::<f32>::new(shape(2, 5, 1, 4), 0, 1);
    let kv = Tensor::<f32>::new(shape(2, 0, 1, 4), 0, 2);
    let (out, lse) = run(&q, &kv, &kv, &AttentionParams::default()).unwrap();
    assert!(out.iter().all(|&x| x == 0.0));
    assert!(lse.iter().all(|&x| x == f32::NEG_INFINITY));
}

#[test]
fn mask_mod_hiding_everything_gives_zeros() {
    let q = Tensor::<f32>::new(shape(1, 70, 1, 4), 0, 1);
    let kv = Tensor::<f32>::new(shape(1, 70, 1, 4), 0, 2);
    let mut out = vec![f32::NAN; 70 * 4];
    let mut lse = vec![f32::NAN; 70];
    let mut out_view = BshdMut::contiguous(&mut out, 1, 70, 1, 4).unwrap();
    let hide_all = |_: usize, _: usize, _: usize, _: usize| false;
    let no_score = attend::mask::NoScoreMod;
    attention_with_mods(
        q.view(),
        kv.view(),
        kv.view(),
        &AttentionParams::default(),
        &hide_all,
        &no_score,
        &mut out_view,
        Some(&mut lse),
    )
    .unwrap();
    assert!(out.iter().all(|&x| x == 0.0));
    assert!(lse.iter().all(|&x| x == f32::NEG_INFINITY));
}

#[test]
fn fully_masked_row_with_sink_is_zero() {
    let q = Tensor::<f32>::new(shape(1, 3, 2, 4), 0, 1);
    let kv = Tensor::<f32>::new(shape(1, 0, 1, 4), 0, 2);
    let sinks = [0.25f32, -1.5];
    let params = AttentionParams {
        sinks: Some(&sinks),
        ..Default::default()
    };
    let (out, lse) = run(&q, &kv, &kv, &params).unwrap();
    assert!(out.iter().all(|&x| x == 0.0));
    assert_eq!(lse, vec![0.25, 0.25, 0.25, -1.5, -1.5, -1.5]);
}

/// With q = 0 every score is 0, so each query averages the values of the keys it sees.
/// Value row j holds j, so the output is the mean visible key index.
#[test]
fn window_edges_include_the_query() {
    let (n, window) = (150usize, 5usize);
    let q = Tensor {
        data: vec![0.0f32; n],
        shape: shape(1, n, 1, 1),
        strides: BshdStrides {
            batch_stride: n,
            seq_stride: 1,
            head_stride: 1,
        },
    };
    let v = Tensor {
        data: (0..n).map(|j| j as f32).collect(),
        ..q.clone()
    };
    for isa in all_isas() {
        // A model's sliding window W: the query and the W - 1 keys before it.
        let params = AttentionParams {
            window: (Some(window - 1), Some(0)),
            isa: Some(isa),
            ..Default::default()
        };
        let (out, lse) = run(&q, &q, &v, &params).unwrap();
        for i in 0..n {
            let first = i.saturating_sub(window - 1);
            let count = i - first + 1;
            let mean = (first..=i).sum::<usize>() as f32 / count as f32;
            assert!(
                (out[i] - mean).abs() < 1e-4,
                "{isa:?} query {i}: {} vs {mean}",
                out[i]
            );
            assert!(
                (lse[i] - (count as f32).ln()).abs() < 1e-5,
                "{isa:?} query {i}"
            );
        }

        // Window (2, 3) without causality: keys i - 2 ..= i + 3.
        let params = AttentionParams {
            window: (Some(2), Some(3)),
            isa: Some(isa),
            ..Default::default()
        };
        let (out, _) = run(&q, &q, &v, &params).unwrap();
        for (i, &value) in out.iter().enumerate() {
            let (first, last) = (i.saturating_sub(2), (i + 3).min(n - 1));
            let mean = (first..=last).sum::<usize>() as f32 / (last - first + 1) as f32;
            assert!(
                (value - mean).abs() < 1e-4,
                "{isa:?} query {i}: {value} vs {mean}"
            );
        }
    }
}

#[test]
fn window_longer_than_sequence_equals_causal() {
    let q = Tensor::<f32>::new(shape(1, 80, 2, 16), 0, 1);
    let k = Tensor::<f32>::new(shape(1, 90, 1, 16), 0, 2);
    let v = Tensor::<f32>::new(shape(1, 90, 1, 16), 0, 3);
    let causal = AttentionParams {
        causal: true,
        ..Default::default()
    };
    let windowed = AttentionParams {
        window: (Some(10_000), Some(0)),
        ..Default::default()
    };
    assert_eq!(
        run(&q, &k, &v, &causal).unwrap(),
        run(&q, &k, &v, &windowed).unwrap()
    );
}

#[test]
fn empty_batch_and_queries_succeed() {
    let empty_q = Tensor::<f32>::new(shape(1, 0, 2, 4), 0, 1);
    let kv = Tensor::<f32>::new(shape(1, 6, 2, 4), 0, 2);
    assert_eq!(
        run(&empty_q, &kv, &kv, &AttentionParams::default()).unwrap(),
        (vec![], vec![])
    );
    let no_batch = Tensor::<f32>::new(shape(0, 3, 2, 4), 0, 1);
    let no_batch_kv = Tensor::<f32>::new(shape(0, 6, 2, 4), 0, 2);
    assert_eq!(
        run(
            &no_batch,
            &no_batch_kv,
            &no_batch_kv,
            &AttentionParams::default()
        )
        .unwrap(),
        (vec![], vec![])
    );
}

#[test]
fn default_scale_is_inverse_sqrt_head_dim() {
    let q = Tensor::<f32>::new(shape(1, 9, 1, 16), 0, 1);
    let kv = Tensor::<f32>::new(shape(1, 9, 1, 16), 0, 2);
    let explicit = AttentionParams {
        scale: Some(0.25),
        ..Default::default()
    };
    assert_eq!(
        run(&q, &kv, &kv, &AttentionParams::default()).unwrap(),
        run(&q, &kv, &kv, &explicit).unwrap()
    );
}

// --- Error paths -----------------------------------------------------------------

fn expect_error(
    q: BshdShape,
    k: BshdShape,
    v: BshdShape,
    out: BshdShape,
    params: &AttentionParams,
) -> AttendError {
    let q = Tensor::<f32>::new(q, 0, 1);
    let k = Tensor::<f32>::new(k, 0, 2);
    let v = Tensor::<f32>::new(v, 0, 3);
    let mut out_data = vec![0.0; out.batch * out.seq_len * out.heads * out.head_dim];
    let mut out_view = BshdMut::contiguous(
        &mut out_data,
        out.batch,
        out.seq_len,
        out.heads,
        out.head_dim,
    )
    .unwrap();
    let error = attention(q.view(), k.view(), v.view(), params, &mut out_view, None).unwrap_err();
    // The oracle validates the same way.
    assert_eq!(
        attention_reference(q.view(), k.view(), v.view(), params)
            .err()
            .as_ref()
            .map(|_| ()),
        Some(())
    );
    error
}

#[test]
fn shape_mismatches_name_the_values() {
    let q = shape(1, 4, 2, 8);
    let kv = shape(1, 6, 1, 8);
    let p = AttentionParams::default();
    let e = expect_error(q, shape(2, 6, 1, 8), kv, q, &p);
    assert_eq!(
        e,
        AttendError::ShapeMismatch {
            tensor: "k",
            dim: "batch",
            found: 2,
            expected: 1,
            reference: "q"
        }
    );
    let e = expect_error(q, kv, shape(1, 5, 1, 8), q, &p);
    assert_eq!(
        e,
        AttendError::ShapeMismatch {
            tensor: "v",
            dim: "seq_len",
            found: 5,
            expected: 6,
            reference: "k"
        }
    );
    let e = expect_error(q, shape(1, 6, 1, 4), shape(1, 6, 1, 4), q, &p);
    assert_eq!(
        e,
        AttendError::ShapeMismatch {
            tensor: "k",
            dim: "head_dim",
            found: 4,
            expected: 8,
            reference: "q"
        }
    );
    let e = expect_error(q, kv, shape(1, 6, 2, 8), q, &p);
    assert_eq!(
        e,
        AttendError::ShapeMismatch {
            tensor: "v",
            dim: "heads",
            found: 2,
            expected: 1,
            reference: "k"
        }
    );
    let q_out_short = shape(1, 3, 2, 8);
    let q_data = Tensor::<f32>::new(q, 0, 1);
    let kv_data = Tensor::<f32>::new(kv, 0, 2);
    let mut out = vec![0.0; 48];
    let mut out_view = BshdMut::contiguous(&mut out, 1, q_out_short.seq_len, 2, 8).unwrap();
    let e = attention(
        q_data.view(),
        kv_data.view(),
        kv_data.view(),
        &p,
        &mut out_view,
        None,
    )
    .unwrap_err();
    assert_eq!(
        e,
        AttendError::ShapeMismatch {
            tensor: "out",
            dim: "seq_len",
            found: 3,
            expected: 4,
            reference: "q"
        }
    );
    assert!(e.to_string().contains("out has seq_len = 3"), "{e}");
}

#[test]
fn heads_must_divide() {
    let e = expect_error(
        shape(1, 4, 3, 8),
        shape(1, 4, 2, 8),
        shape(1, 4, 2, 8),
        shape(1, 4, 3, 8),
        &AttentionParams::default(),
    );
    assert_eq!(
        e,
        AttendError::HeadsNotDivisible {
            n_heads: 3,
            n_kv_heads: 2
        }
    );
    assert!(
        e.to_string()
            .contains("n_heads = 3 is not divisible by n_kv_heads = 2"),
        "{e}"
    );
}

#[test]
fn zero_head_dim_and_heads_are_rejected() {
    let p = AttentionParams::default();
    let e = expect_error(
        shape(1, 4, 2, 0),
        shape(1, 4, 2, 0),
        shape(1, 4, 2, 0),
        shape(1, 4, 2, 0),
        &p,
    );
    assert_eq!(
        e,
        AttendError::ZeroDim {
            tensor: "q",
            dim: "head_dim"
        }
    );
    let e = expect_error(
        shape(1, 4, 2, 8),
        shape(1, 4, 0, 8),
        shape(1, 4, 0, 8),
        shape(1, 4, 2, 8),
        &p,
    );
    assert_eq!(
        e,
        AttendError::ZeroDim {
            tensor: "k",
            dim: "heads"
        }
    );
}

#[test]
fn bad_scale_and_softcap_are_rejected() {
    let s = shape(1, 4, 1, 8);
    for scale in [f32::NAN, f32::INFINITY, 0.0] {
        let e = expect_error(
            s,
            s,
            s,
            s,
            &AttentionParams {
                scale: Some(scale),
                ..Default::default()
            },
        );
        assert!(matches!(e, AttendError::InvalidScale { .. }), "{e}");
    }
    for softcap in [f32::NAN, -1.0, 0.0] {
        let e = expect_error(
            s,
            s,
            s,
            s,
            &AttentionParams {
                softcap: Some(softcap),
                ..Default::default()
            },
        );
        assert!(matches!(e, AttendError::InvalidSoftcap { .. }), "{e}");
    }
}

#[test]
fn buffer_lengths_are_checked() {
    let s = shape(1, 4, 2, 8);
    let sinks = [0.0f32];
    let e = expect_error(
        s,
        s,
        s,
        s,
        &AttentionParams {
            sinks: Some(&sinks),
            ..Default::default()
        },
    );
    assert_eq!(
        e,
        AttendError::BufferLength {
            buffer: "sinks",
            found: 1,
            expected: 2
        }
    );

    let t = Tensor::<f32>::new(s, 0, 1);
    let mut out = vec![0.0; 64];
    let mut lse = vec![0.0; 7];
    let mut out_view = BshdMut::contiguous(&mut out, 1, 4, 2, 8).unwrap();
    let e = attention(
        t.view(),
        t.view(),
        t.view(),
        &AttentionParams::default(),
        &mut out_view,
        Some(&mut lse),
    )
    .unwrap_err();
    assert_eq!(
        e,
        AttendError::BufferLength {
            buffer: "lse",
            found: 7,
            expected: 8
        }
    );
}

#[test]
fn unavailable_isa_is_rejected() {
    let s = shape(1, 4, 1, 8);
    if let Some(isa) = [Isa::Avx2Fma, Isa::Avx512, Isa::Neon]
        .into_iter()
        .find(|isa| !isa.is_available())
    {
        let e = expect_error(
            s,
            s,
            s,
            s,
            &AttentionParams {
                isa: Some(isa),
                ..Default::default()
            },
        );
        assert_eq!(e, AttendError::IsaUnavailable { isa });
    }
}

#[test]
fn views_check_bounds_and_overlap() {
    let data = vec![0.0f32; 10];
    assert!(matches!(
        Bshd::contiguous(&data, 1, 3, 1, 4),
        Err(AttendError::ViewOutOfBounds {
            required: 12,
            len: 10,
            ..
        })
    ));
    let mut out = vec![0.0f32; 32];
    let overlapping = BshdStrides {
        batch_stride: 32,
        seq_stride: 4,
        head_stride: 4,
    };
    assert!(matches!(
        BshdMut::strided(&mut out, shape(1, 2, 2, 4), overlapping),
        Err(AttendError::OverlappingOutput { .. })
    ));
    assert!(matches!(
        PackedMut::contiguous(&mut out, 3, 3, 4),
        Err(AttendError::ViewOutOfBounds { .. })
    ));
}

fn run_varlen(
    cu_q: &[usize],
    cu_k: &[usize],
    total_q: usize,
    total_k: usize,
) -> Result<(), AttendError> {
    let q = vec![0.5f32; total_q * 4];
    let k = vec![0.5f32; total_k * 4];
    let mut out = vec![0.0f32; total_q * 4];
    let q = Packed::contiguous(&q, total_q, 1, 4)?;
    let k = Packed::contiguous(&k, total_k, 1, 4)?;
    let mut out = PackedMut::contiguous(&mut out, total_q, 1, 4)?;
    attention_varlen(
        q,
        k,
        k,
        cu_q,
        cu_k,
        &AttentionParams::default(),
        &mut out,
        None,
    )
}

#[test]
fn varlen_offsets_are_checked() {
    assert!(run_varlen(&[0, 2, 2, 5], &[0, 1, 1, 4], 5, 4).is_ok());
    let cases: [(&[usize], &[usize], &str, usize); 5] = [
        (&[], &[0], "cu_seqlens_q", 0),
        (&[1, 5], &[0, 4], "cu_seqlens_q", 0),
        (&[0, 3, 2, 5], &[0, 1, 2, 4], "cu_seqlens_q", 2),
        (&[0, 5], &[0, 3], "cu_seqlens_k", 1),
        (&[0, 2, 5], &[0, 4], "", 0),
    ];
    for (cu_q, cu_k, name, index) in cases {
        let e = run_varlen(cu_q, cu_k, 5, 4).unwrap_err();
        match e {
            AttendError::InvalidOffsets {
                name: found,
                index: found_index,
                ..
            } => {
                assert_eq!(
                    (found, found_index),
                    (name, index),
                    "{cu_q:?} {cu_k:?}: {e}"
                );
            }
            AttendError::ShapeMismatch {
                tensor: "cu_seqlens_k",
                dim: "len",
                found: 2,
                expected: 3,
                ..
            } => {
                assert_eq!(name, "", "{cu_q:?} {cu_k:?}");
            }
            other => panic!("{cu_q:?} {cu_k:?}: unexpected {other}"),
        }
    }
}
