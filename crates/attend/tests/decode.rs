//! The split-KV decode kernel against its float64 twin and the attention oracle,
//! across cache kinds, storage dtypes, masks, batches and thread counts.

mod decode_support;

use attend::decode::SPLIT_TOKENS;
use attend::kv::{KvCache, KvConfig, KvDtype, PagedCache, SeqId};
use attend::{
    attention_reference, decode, decode_reference, AttendError, AttentionParams, Bshd, BshdMut, Isa,
};
use decode_support::*;
use proptest::prelude::*;

/// Unit roundoff of f32, 2^-24.
const F32_UNIT_ROUNDOFF: f64 = 5.960_464_477_539_063e-8;

/// Tolerance of the kernel against its f64 twin, which reads the same stored values.
///
/// Only f32 arithmetic differs: a score sums `head_dim` products, the denominator and
/// the output sum up to `kv_len` terms (in splits, merged with one more rounding each),
/// and the vector exp adds a few units of roundoff per term. `8 * u * (head_dim + kv_len
/// + 64)`, relative to `1 + |expected|`, bounds all of these.
fn tolerance(head_dim: usize, kv_len: usize) -> f64 {
    8.0 * F32_UNIT_ROUNDOFF * (head_dim + kv_len + 64) as f64
}

fn assert_close(what: &str, got: &[f32], expected: &[f64], tolerance: f64) {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    for (i, (&x, &y)) in got.iter().zip(expected).enumerate() {
        let x = f64::from(x);
        if x == y {
            continue;
        }
        assert!(
            (x - y).abs() <= tolerance * (1.0 + y.abs()),
            "{what}[{i}]: kernel {x} vs oracle {y} (tolerance {tolerance:e})"
        );
    }
}

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
        .install(f)
}

/// Returns the instruction sets this CPU can run, portable first.
fn available_isas() -> Vec<Isa> {
    [Isa::Portable, Isa::Avx2Fma, Isa::Avx512, Isa::Neon]
        .into_iter()
        .filter(|isa| isa.is_available())
        .collect()
}

/// One randomly drawn decode case.
#[derive(Debug, Clone)]
struct Case {
    n_kv_heads: usize,
    group: usize,
    head_dim: usize,
    q_len: usize,
    appended: usize,
    position_stride: u32,
    dtype: KvDtype,
    kind: CacheKind,
    causal: bool,
    left: Option<usize>,
    right: Option<usize>,
    softcap: Option<f32>,
    with_sinks: bool,
    isa: Isa,
    seed: u64,
}

fn kinds() -> impl Strategy<Value = CacheKind> {
    prop_oneof![
        Just(CacheKind::Contiguous),
        prop_oneof![1usize..20, Just(64)].prop_map(|block_size| CacheKind::Paged { block_size }),
        (1usize..80, 0usize..4).prop_map(|(window, sinks)| CacheKind::Rolling { window, sinks }),
    ]
}

fn bound() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![Just(None), (0usize..40).prop_map(Some), Just(Some(100_000))]
}

fn cases() -> impl Strategy<Value = Case> {
    let lengths = prop_oneof![
        0usize..4,
        14usize..19,
        30usize..35,
        60usize..70,
        250usize..262,
        505usize..520
    ];
    (
        (1usize..4, 1usize..10),
        prop::sample::select(vec![1usize, 3, 8, 16, 17, 64, 67, 128, 256]),
        1usize..4,
        lengths,
        1u32..4,
        prop_oneof![
            Just(KvDtype::F32),
            Just(KvDtype::F16),
            Just(KvDtype::Bf16),
            Just(KvDtype::Int8)
        ],
        kinds(),
        (any::<bool>(), bound(), bound()),
        (prop_oneof![Just(None), Just(Some(5.0f32))], any::<bool>()),
        prop::sample::select(available_isas()),
        any::<u64>(),
    )
        .prop_map(
            |(
                (n_kv_heads, group),
                head_dim,
                q_len,
                appended,
                position_stride,
                dtype,
                kind,
                (causal, left, right),
                (softcap, with_sinks),
                isa,
                seed,
            )| Case {
                n_kv_heads,
                group,
                head_dim,
                q_len,
                appended,
                position_stride,
                dtype,
                kind,
                causal,
                left,
                right,
                softcap,
                with_sinks,
                isa,
                seed,
            },
        )
}

/// Fills a cache for `case` and returns it with the queries and the sinks.
fn build(case: &Case) -> (Box<dyn KvCache>, Vec<f32>, Vec<f32>) {
    let n_heads = case.n_kv_heads * case.group;
    let config = KvConfig::new(case.n_kv_heads, case.head_dim, case.dtype);
    let row_len = case.n_kv_heads * case.head_dim;
    let mut cache = make_cache(case.kind, config, case.appended.max(1));
    let k = random_values(case.appended * row_len, case.seed);
    let v = random_values(case.appended * row_len, case.seed ^ 1);
    // Odd seeds start at position 2, so positions differ from indices. Even seeds start
    // at 0, so with stride 1 the index-based attention oracle applies too.
    let first_position = 2 * (case.seed % 2) as u32;
    let positions: Vec<u32> = (0..case.appended as u32)
        .map(|t| first_position + t * case.position_stride)
        .collect();
    cache.append(SeqId(0), &k, &v, &positions).unwrap();
    let q = random_values(case.q_len * n_heads * case.head_dim, case.seed ^ 2);
    let sinks = random_values(n_heads, case.seed ^ 3);
    (cache, q, sinks)
}

/// Decodes `case` on its instruction set and checks the result against
/// [`decode_reference`], and against [`attention_reference`] when positions equal indices.
fn assert_case_matches_reference(case: &Case) {
    let (cache, q, sinks) = build(case);
    let n_heads = case.n_kv_heads * case.group;
    let view = cache.view(SeqId(0)).unwrap();
    let params = AttentionParams {
        causal: case.causal,
        window: (case.left, case.right),
        softcap: case.softcap,
        sinks: case.with_sinks.then_some(&sinks[..]),
        isa: Some(case.isa),
        ..Default::default()
    };
    let (out, lse) = run_decode(&q, case.q_len, n_heads, case.head_dim, &[view], &params);

    let q_view = Bshd::contiguous(&q, 1, case.q_len, n_heads, case.head_dim).unwrap();
    let expected = decode_reference(q_view, &[view], &params).unwrap();
    let tolerance = tolerance(case.head_dim, view.len());
    assert_close(&format!("{case:?}: out"), &out, &expected.out, tolerance);
    assert_close(&format!("{case:?}: lse"), &lse, &expected.lse, tolerance);

    // With positions 0, 1, 2, ... and no token dropped, positions equal indices, so
    // the index-based attention oracle over the dequantised cache must agree too.
    let dense = view.to_dense();
    let consecutive = dense
        .positions
        .iter()
        .enumerate()
        .all(|(i, &p)| p == i as u32);
    if consecutive {
        let k = Bshd::contiguous(&dense.k, 1, view.len(), case.n_kv_heads, case.head_dim).unwrap();
        let v = Bshd::contiguous(&dense.v, 1, view.len(), case.n_kv_heads, case.head_dim).unwrap();
        let oracle = attention_reference(q_view, k, v, &params).unwrap();
        let what = format!("{case:?}: vs attention oracle");
        assert_close(&format!("{what}: out"), &out, &oracle.out, tolerance);
        assert_close(&format!("{what}: lse"), &lse, &oracle.lse, tolerance);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn decode_matches_reference(case in cases()) {
        assert_case_matches_reference(&case);
    }
}

#[test]
fn consecutive_positions_reach_attention_oracle() {
    // The proptest draws positions starting at 2; this fixes them at 0, 1, 2, ... so the
    // comparison with the index-based oracle runs on every cache kind and dtype.
    let (n_kv_heads, group, head_dim, q_len) = (2, 3, 16, 2);
    let n_heads = n_kv_heads * group;
    let row_len = n_kv_heads * head_dim;
    for kv_len in [1, 64, 65, SPLIT_TOKENS, SPLIT_TOKENS + 1, 700] {
        for dtype in DTYPES {
            for kind in lossless_kinds(kv_len + 3) {
                let config = KvConfig::new(n_kv_heads, head_dim, dtype);
                let mut cache = make_cache(kind, config, kv_len + 3);
                let k = random_values(kv_len * row_len, kv_len as u64);
                let v = random_values(kv_len * row_len, kv_len as u64 + 7);
                let positions: Vec<u32> = (0..kv_len as u32).collect();
                cache.append(SeqId(0), &k, &v, &positions).unwrap();
                let view = cache.view(SeqId(0)).unwrap();
                let q = random_values(q_len * n_heads * head_dim, 99);
                for window in [(None, None), (Some(5), None), (Some(100), Some(0))] {
                    let params = AttentionParams {
                        causal: true,
                        window,
                        ..Default::default()
                    };
                    let (out, lse) = run_decode(&q, q_len, n_heads, head_dim, &[view], &params);
                    let dense = view.to_dense();
                    let q_view = Bshd::contiguous(&q, 1, q_len, n_heads, head_dim).unwrap();
                    let k = Bshd::contiguous(&dense.k, 1, kv_len, n_kv_heads, head_dim).unwrap();
                    let v = Bshd::contiguous(&dense.v, 1, kv_len, n_kv_heads, head_dim).unwrap();
                    let oracle = attention_reference(q_view, k, v, &params).unwrap();
                    let what = format!("{kind:?} {dtype} kv_len {kv_len} window {window:?}");
                    let tolerance = tolerance(head_dim, kv_len);
                    assert_close(&format!("{what}: out"), &out, &oracle.out, tolerance);
                    assert_close(&format!("{what}: lse"), &lse, &oracle.lse, tolerance);
                }
            }
        }
    }
}

#[test]
fn empty_cache_gives_zeros() {
    let (n_kv_heads, n_heads, head_dim) = (2, 4, 8);
    let config = KvConfig::new(n_kv_heads, head_dim, KvDtype::F32);
    let cache = make_cache(CacheKind::Contiguous, config, 4);
    let view = cache.view(SeqId(0)).unwrap();
    let q = random_values(n_heads * head_dim, 1);

    let (out, lse) = run_decode(&q, 1, n_heads, head_dim, &[view], &Default::default());
    assert!(out.iter().all(|&x| x == 0.0), "out {out:?}");
    assert!(lse.iter().all(|&x| x == f32::NEG_INFINITY), "lse {lse:?}");

    // With sinks, the sink is the whole denominator: the output stays zero and the
    // log-sum-exp is the sink logit.
    let sinks = [0.5, -1.0, 2.0, 0.0];
    let params = AttentionParams {
        sinks: Some(&sinks),
        ..Default::default()
    };
    let (out, lse) = run_decode(&q, 1, n_heads, head_dim, &[view], &params);
    assert!(out.iter().all(|&x| x == 0.0), "out {out:?}");
    assert_eq!(lse, sinks);
}

#[test]
fn fully_masked_rows_give_zeros() {
    // Two queries against one cached token: causal alignment puts query 0 one position
    // before the token, so it sees nothing.
    let (n_kv_heads, n_heads, head_dim) = (1, 2, 4);
    let config = KvConfig::new(n_kv_heads, head_dim, KvDtype::F32);
    let mut cache = make_cache(CacheKind::Contiguous, config, 4);
    cache.append(SeqId(0), &[1.0; 4], &[3.0; 4], &[10]).unwrap();
    let view = cache.view(SeqId(0)).unwrap();
    let q = random_values(2 * n_heads * head_dim, 5);
    let params = AttentionParams {
        causal: true,
        ..Default::default()
    };
    let (out, lse) = run_decode(&q, 2, n_heads, head_dim, &[view], &params);
    // out: [q_len = 2, n_heads = 2, head_dim = 4]; lse: [n_heads, q_len].
    assert!(
        out[..8].iter().all(|&x| x == 0.0),
        "query 0: {:?}",
        &out[..8]
    );
    assert!(
        out[8..].iter().all(|&x| x == 3.0),
        "query 1: {:?}",
        &out[8..]
    );
    assert_eq!(lse[0], f32::NEG_INFINITY);
    assert_eq!(lse[2], f32::NEG_INFINITY);
    assert!(lse[1].is_finite() && lse[3].is_finite(), "lse {lse:?}");
}

/// Runs one batch of differently sized sequences and returns the output and lse bits.
fn batch_bits(threads: usize, isa: Isa) -> (Vec<u32>, Vec<u32>) {
    let (n_kv_heads, group, head_dim, q_len) = (2, 4, 64, 2);
    let n_heads = n_kv_heads * group;
    let row_len = n_kv_heads * head_dim;
    let lengths = [3000, 0, 1, 700];
    let kinds = [
        CacheKind::Paged { block_size: 16 },
        CacheKind::Contiguous,
        CacheKind::Rolling {
            window: 500,
            sinks: 4,
        },
        CacheKind::Rolling {
            window: 300,
            sinks: 0,
        },
    ];
    let caches: Vec<Box<dyn KvCache>> = lengths
        .iter()
        .zip(kinds)
        .enumerate()
        .map(|(i, (&len, kind))| {
            let config = KvConfig::new(n_kv_heads, head_dim, KvDtype::F32);
            let mut cache = make_cache(kind, config, len.max(1));
            let k = random_values(len * row_len, i as u64);
            let v = random_values(len * row_len, i as u64 + 10);
            let positions: Vec<u32> = (0..len as u32).collect();
            cache.append(SeqId(0), &k, &v, &positions).unwrap();
            cache
        })
        .collect();
    let views: Vec<_> = caches.iter().map(|c| c.view(SeqId(0)).unwrap()).collect();
    let q = random_values(views.len() * q_len * n_heads * head_dim, 77);
    let params = AttentionParams {
        causal: true,
        window: (Some(2000), None),
        isa: Some(isa),
        ..Default::default()
    };
    let (out, lse) = in_pool(threads, || {
        run_decode(&q, q_len, n_heads, head_dim, &views, &params)
    });
    (
        out.iter().map(|x| x.to_bits()).collect(),
        lse.iter().map(|x| x.to_bits()).collect(),
    )
}

#[test]
fn decode_is_bitwise_deterministic() {
    for isa in available_isas() {
        let one = batch_bits(1, isa);
        assert_eq!(one, batch_bits(2, isa), "{isa:?}: 1 vs 2 threads");
        assert_eq!(one, batch_bits(3, isa), "{isa:?}: 1 vs 3 threads");
    }
}

#[test]
fn batch_equals_per_sequence_calls() {
    let (n_kv_heads, group, head_dim, q_len) = (1, 3, 32, 1);
    let n_heads = n_kv_heads * group;
    let row_len = n_kv_heads * head_dim;
    let lengths = [0usize, 1, 257, 64, 513];
    let caches: Vec<Box<dyn KvCache>> = lengths
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let dtype = DTYPES[i % DTYPES.len()];
            let config = KvConfig::new(n_kv_heads, head_dim, dtype);
            let mut cache = make_cache(CacheKind::Paged { block_size: 5 }, config, len.max(1));
            let k = random_values(len * row_len, 100 + i as u64);
            let v = random_values(len * row_len, 200 + i as u64);
            let positions: Vec<u32> = (0..len as u32).map(|p| p * 2).collect();
            cache.append(SeqId(0), &k, &v, &positions).unwrap();
            cache
        })
        .collect();
    // Views of one call must share n_kv_heads and head_dim but may differ in dtype.
    let views: Vec<_> = caches.iter().map(|c| c.view(SeqId(0)).unwrap()).collect();
    let q = random_values(views.len() * q_len * n_heads * head_dim, 3);
    let params = AttentionParams {
        causal: true,
        window: (Some(300), None),
        ..Default::default()
    };
    let (out, lse) = run_decode(&q, q_len, n_heads, head_dim, &views, &params);

    let q_stride = q_len * n_heads * head_dim;
    let lse_stride = n_heads * q_len;
    for (b, view) in views.iter().enumerate() {
        let (one_out, one_lse) = run_decode(
            &q[b * q_stride..(b + 1) * q_stride],
            q_len,
            n_heads,
            head_dim,
            &[*view],
            &params,
        );
        assert_eq!(
            one_out,
            &out[b * q_stride..(b + 1) * q_stride],
            "sequence {b}: out"
        );
        assert_eq!(
            one_lse,
            &lse[b * lse_stride..(b + 1) * lse_stride],
            "sequence {b}: lse"
        );
    }
}

/// Builds a call with one cached token and runs `decode` with the pieces given.
fn decode_error(
    n_heads: usize,
    head_dim: usize,
    n_kv_heads: usize,
    batch: usize,
    params: &AttentionParams,
    out_heads: usize,
    lse_len: usize,
) -> AttendError {
    let config = KvConfig::new(n_kv_heads, 8, KvDtype::F32);
    let mut cache = make_cache(CacheKind::Contiguous, config, 2);
    cache
        .append(
            SeqId(0),
            &vec![0.5; n_kv_heads * 8],
            &vec![0.5; n_kv_heads * 8],
            &[0],
        )
        .unwrap();
    let views = vec![cache.view(SeqId(0)).unwrap(); batch];
    let q = vec![0.1; n_heads * head_dim];
    let q = Bshd::contiguous(&q, 1, 1, n_heads, head_dim).unwrap();
    let mut out = vec![0.0; out_heads * head_dim];
    let mut out = BshdMut::contiguous(&mut out, 1, 1, out_heads, head_dim).unwrap();
    let mut lse = vec![0.0; lse_len];
    decode(q, &views, params, &mut out, Some(&mut lse)).unwrap_err()
}

#[test]
fn bad_input_returns_typed_errors() {
    let ok = AttentionParams::default();
    assert!(matches!(
        decode_error(4, 8, 2, 2, &ok, 4, 4),
        AttendError::ShapeMismatch {
            tensor: "kv",
            dim: "batch",
            found: 2,
            expected: 1,
            ..
        }
    ));
    assert!(matches!(
        decode_error(4, 16, 2, 1, &ok, 4, 4),
        AttendError::ShapeMismatch {
            tensor: "kv",
            dim: "head_dim",
            found: 8,
            expected: 16,
            ..
        }
    ));
    assert!(matches!(
        decode_error(3, 8, 2, 1, &ok, 3, 3),
        AttendError::HeadsNotDivisible {
            n_heads: 3,
            n_kv_heads: 2
        }
    ));
    assert!(matches!(
        decode_error(0, 8, 2, 1, &ok, 0, 0),
        AttendError::ZeroDim {
            tensor: "q",
            dim: "heads"
        }
    ));
    assert!(matches!(
        decode_error(4, 8, 2, 1, &ok, 2, 4),
        AttendError::ShapeMismatch {
            tensor: "out",
            dim: "heads",
            found: 2,
            expected: 4,
            ..
        }
    ));
    assert!(matches!(
        decode_error(4, 8, 2, 1, &ok, 4, 3),
        AttendError::BufferLength {
            buffer: "lse",
            found: 3,
            expected: 4
        }
    ));
    let nan_scale = AttentionParams {
        scale: Some(f32::NAN),
        ..Default::default()
    };
    assert!(matches!(
        decode_error(4, 8, 2, 1, &nan_scale, 4, 4),
        AttendError::InvalidScale { .. }
    ));
    let bad_cap = AttentionParams {
        softcap: Some(-1.0),
        ..Default::default()
    };
    assert!(matches!(
        decode_error(4, 8, 2, 1, &bad_cap, 4, 4),
        AttendError::InvalidSoftcap { .. }
    ));
    let sinks = [0.0; 3];
    let short_sinks = AttentionParams {
        sinks: Some(&sinks),
        ..Default::default()
    };
    assert!(matches!(
        decode_error(4, 8, 2, 1, &short_sinks, 4, 4),
        AttendError::BufferLength {
            buffer: "sinks",
            found: 3,
            expected: 4
        }
    ));
}

#[test]
fn mixed_kv_heads_are_rejected() {
    let head_dim = 4;
    let one = make_cache(
        CacheKind::Contiguous,
        KvConfig::new(1, head_dim, KvDtype::F32),
        1,
    );
    let two = make_cache(
        CacheKind::Contiguous,
        KvConfig::new(2, head_dim, KvDtype::F32),
        1,
    );
    let views = [one.view(SeqId(0)).unwrap(), two.view(SeqId(0)).unwrap()];
    let q = vec![0.0; 2 * 2 * head_dim];
    let q = Bshd::contiguous(&q, 2, 1, 2, head_dim).unwrap();
    let mut out = vec![0.0; 2 * 2 * head_dim];
    let mut out = BshdMut::contiguous(&mut out, 2, 1, 2, head_dim).unwrap();
    let err = decode(q, &views, &Default::default(), &mut out, None).unwrap_err();
    assert!(
        matches!(
            err,
            AttendError::ShapeMismatch {
                tensor: "kv",
                dim: "n_kv_heads",
                found: 2,
                expected: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn strided_views_match_contiguous() {
    use attend::{BshdShape, BshdStrides};

    let (n_kv_heads, n_heads, head_dim, q_len, batch) = (2, 4, 8, 2, 2);
    let config = KvConfig::new(n_kv_heads, head_dim, KvDtype::F16);
    let caches: Vec<Box<dyn KvCache>> = [30usize, 70]
        .iter()
        .map(|&len| {
            let mut cache = make_cache(CacheKind::Paged { block_size: 8 }, config, len);
            let k = random_values(len * n_kv_heads * head_dim, len as u64);
            let v = random_values(len * n_kv_heads * head_dim, len as u64 + 1);
            let positions: Vec<u32> = (0..len as u32).collect();
            cache.append(SeqId(0), &k, &v, &positions).unwrap();
            cache
        })
        .collect();
    let views: Vec<_> = caches.iter().map(|c| c.view(SeqId(0)).unwrap()).collect();
    let params = AttentionParams {
        causal: true,
        ..Default::default()
    };
    let q = random_values(batch * q_len * n_heads * head_dim, 8);
    let (expected, _) = run_decode(&q, q_len, n_heads, head_dim, &views, &params);

    // The same queries and outputs with 3 padding elements after every head, row and batch.
    let shape = BshdShape {
        batch,
        seq_len: q_len,
        heads: n_heads,
        head_dim,
    };
    let strides = BshdStrides {
        head_stride: head_dim + 3,
        seq_stride: n_heads * (head_dim + 3) + 3,
        batch_stride: q_len * (n_heads * (head_dim + 3) + 3) + 3,
    };
    let padded_len = batch * strides.batch_stride;
    let offset = |b: usize, i: usize, h: usize| {
        b * strides.batch_stride + i * strides.seq_stride + h * strides.head_stride
    };
    let mut padded_q = vec![f32::NAN; padded_len];
    for b in 0..batch {
        for i in 0..q_len {
            for h in 0..n_heads {
                let src = ((b * q_len + i) * n_heads + h) * head_dim;
                let dst = offset(b, i, h);
                padded_q[dst..dst + head_dim].copy_from_slice(&q[src..src + head_dim]);
            }
        }
    }
    let mut padded_out = vec![f32::NAN; padded_len];
    let q_view = Bshd::strided(&padded_q, shape, strides).unwrap();
    let mut out_view = BshdMut::strided(&mut padded_out, shape, strides).unwrap();
    decode(q_view, &views, &params, &mut out_view, None).unwrap();

    for b in 0..batch {
        for i in 0..q_len {
            for h in 0..n_heads {
                let src = ((b * q_len + i) * n_heads + h) * head_dim;
                let dst = offset(b, i, h);
                assert_eq!(
                    &padded_out[dst..dst + head_dim],
                    &expected[src..src + head_dim],
                    "batch {b} query {i} head {h}"
                );
            }
        }
    }
    let written = padded_out.iter().filter(|x| !x.is_nan()).count();
    assert_eq!(
        written,
        batch * q_len * n_heads * head_dim,
        "writes outside the view"
    );
}

#[test]
fn huge_window_equals_no_window() {
    let (n_kv_heads, n_heads, head_dim) = (1, 2, 8);
    let config = KvConfig::new(n_kv_heads, head_dim, KvDtype::F32);
    let mut cache = make_cache(CacheKind::Contiguous, config, 40);
    let k = random_values(40 * head_dim, 1);
    let v = random_values(40 * head_dim, 2);
    let positions: Vec<u32> = (0..40).collect();
    cache.append(SeqId(0), &k, &v, &positions).unwrap();
    let view = cache.view(SeqId(0)).unwrap();
    let q = random_values(n_heads * head_dim, 3);

    let unbounded = AttentionParams::default();
    let huge = AttentionParams {
        window: (Some(usize::MAX), Some(usize::MAX)),
        ..Default::default()
    };
    let expected = run_decode(&q, 1, n_heads, head_dim, &[view], &unbounded);
    assert_eq!(
        run_decode(&q, 1, n_heads, head_dim, &[view], &huge),
        expected
    );
}

#[test]
fn head_dims_and_groups_match_reference() {
    // Head dims around the 16-lane vectors and the unrolled copies for 64, 128 and 256.
    // Groups 1 to 9 make the score and value products run every row block: 4, 3, 2 and
    // 1 rows for scores, 6, 4, 3, 2 and 1 for values. The lengths end on and one past
    // the 16-token sub-blocks, the 64-token tiles and the 256-token splits.
    let head_dims = [1, 15, 16, 17, 63, 64, 65, 127, 128, 129, 255, 256, 257];
    let lengths = [15, 16, 17, 63, 64, 65, 255, 256, 257];
    let mut case_idx = 0;
    for head_dim in head_dims {
        for group in 1..=9 {
            for q_len in [1, 2] {
                case_idx += 1;
                for isa in available_isas() {
                    assert_case_matches_reference(&Case {
                        n_kv_heads: 1 + case_idx % 3,
                        group,
                        head_dim,
                        q_len,
                        appended: lengths[case_idx % lengths.len()],
                        position_stride: 1,
                        dtype: DTYPES[case_idx % DTYPES.len()],
                        kind: CacheKind::Contiguous,
                        causal: q_len > 1,
                        left: None,
                        right: None,
                        softcap: None,
                        with_sinks: false,
                        isa,
                        seed: case_idx as u64,
                    });
                }
            }
        }
    }
}

#[test]
fn cache_runs_match_reference() {
    // Paged blocks shorter than a 16-token sub-block, not dividing one, equal to one
    // and equal to a tile, and rolling caches after wrap-around with and without sinks.
    // Each view splits into runs, and a split or the cache may end inside a run, so the
    // decode kernel and its prefetches cross run, tile and split ends at many offsets.
    let kinds = [
        CacheKind::Contiguous,
        CacheKind::Paged { block_size: 1 },
        CacheKind::Paged { block_size: 3 },
        CacheKind::Paged { block_size: 16 },
        CacheKind::Paged { block_size: 17 },
        CacheKind::Paged { block_size: 64 },
        CacheKind::Rolling {
            window: 100,
            sinks: 4,
        },
        CacheKind::Rolling {
            window: 50,
            sinks: 0,
        },
    ];
    let lengths = [
        1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 255, 256, 257, 288, 289, 513,
    ];
    let mut case_idx = 0;
    for kind in kinds {
        for dtype in DTYPES {
            for appended in lengths {
                case_idx += 1;
                for isa in available_isas() {
                    assert_case_matches_reference(&Case {
                        n_kv_heads: 1 + case_idx % 3,
                        group: 1 + case_idx % 4,
                        head_dim: [16, 64, 17, 128][case_idx % 4],
                        q_len: 1 + case_idx % 3,
                        appended,
                        position_stride: 1 + (case_idx % 2) as u32,
                        dtype,
                        kind,
                        causal: case_idx % 2 == 0,
                        left: (case_idx % 3 == 0).then_some(20),
                        right: (case_idx % 3 == 0).then_some(0),
                        softcap: (case_idx % 5 == 0).then_some(5.0),
                        with_sinks: case_idx % 7 == 0,
                        isa,
                        seed: case_idx as u64,
                    });
                }
            }
        }
    }
}

#[test]
fn shared_paged_blocks_match_reference() {
    // Three sequences share blocks: one is the source, one attaches its registered
    // prefix and appends its own tokens, and one is forked from the source and then
    // appends, which copies a shared, partly filled last block on write. Their block
    // tables jump between pool blocks, and the batch decodes them together.
    let (n_kv_heads, group, head_dim) = (2, 3, 64);
    let n_heads = n_kv_heads * group;
    let row_len = n_kv_heads * head_dim;
    let (source, prefixed, forked) = (SeqId(0), SeqId(1), SeqId(2));
    for block_size in [1, 3, 16, 17, 64] {
        for dtype in DTYPES {
            let config = KvConfig::new(n_kv_heads, head_dim, dtype);
            let mut cache = PagedCache::new(config, 1200 / block_size + 8, block_size).unwrap();
            let len = 300;
            let ids: Vec<u32> = (0..len as u32).collect();
            let positions: Vec<u32> = (0..len as u32).collect();
            let k = random_values(len * row_len, block_size as u64);
            let v = random_values(len * row_len, block_size as u64 + 1);
            cache.add_sequence(source).unwrap();
            cache
                .append_tokens(source, &ids, &k, &v, &positions)
                .unwrap();

            let attached = cache
                .add_sequence_with_prefix(prefixed, &ids[..270], &positions[..270])
                .unwrap();
            assert!(attached > 0, "block size {block_size}: no prefix attached");
            let extra = len + 40 - attached;
            let own_ids: Vec<u32> = (0..extra as u32).map(|t| 10_000 + t).collect();
            let own_positions: Vec<u32> = (attached as u32..(attached + extra) as u32).collect();
            let k_own = random_values(extra * row_len, 77);
            let v_own = random_values(extra * row_len, 78);
            cache
                .append_tokens(prefixed, &own_ids, &k_own, &v_own, &own_positions)
                .unwrap();

            cache.fork(source, forked).unwrap();
            let k_fork = random_values(20 * row_len, 79);
            let v_fork = random_values(20 * row_len, 80);
            let fork_positions: Vec<u32> = (len as u32..len as u32 + 20).collect();
            cache
                .append(forked, &k_fork, &v_fork, &fork_positions)
                .unwrap();

            let first_block = cache.block_table(source).unwrap()[0];
            assert_eq!(
                cache.ref_count(first_block),
                Some(3),
                "block size {block_size}: first block not shared by all three sequences"
            );

            let views: Vec<_> = [source, prefixed, forked]
                .into_iter()
                .map(|seq| cache.view(seq).unwrap())
                .collect();
            let q_len = 2;
            let q = random_values(views.len() * q_len * n_heads * head_dim, 81);
            let q_view = Bshd::contiguous(&q, views.len(), q_len, n_heads, head_dim).unwrap();
            let tolerance = tolerance(head_dim, len + 40);
            for isa in available_isas() {
                let params = AttentionParams {
                    causal: true,
                    isa: Some(isa),
                    ..Default::default()
                };
                let (out, lse) = run_decode(&q, q_len, n_heads, head_dim, &views, &params);
                let expected = decode_reference(q_view, &views, &params).unwrap();
                let what = format!("block size {block_size}, {dtype}, {isa:?}");
                assert_close(&format!("{what}: out"), &out, &expected.out, tolerance);
                assert_close(&format!("{what}: lse"), &lse, &expected.lse, tolerance);
            }
        }
    }
}
