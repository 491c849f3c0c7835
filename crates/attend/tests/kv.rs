//! Contiguous and rolling caches, storage types and the common trait, with exact contents.

use attend::kv::{
    ContiguousCache, KvCache, KvConfig, KvDtype, KvError, KvRows, PagedCache, RollingCache, SeqId,
};

const A: SeqId = SeqId(1);
const B: SeqId = SeqId(2);

/// Two kv heads of dim 3: one token's row has 6 values.
fn config(dtype: KvDtype) -> KvConfig {
    KvConfig::new(2, 3, dtype)
}

/// K row of a token: `position * 10 + element`; V row is its negation. Exact in f32, f16 and bf16
/// for the positions used here.
fn k_row(position: u32) -> Vec<f32> {
    (0..6).map(|j| (position * 10 + j) as f32).collect()
}

fn rows(positions: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let k: Vec<f32> = positions.iter().flat_map(|&p| k_row(p)).collect();
    let v = k.iter().map(|x| -x).collect();
    (k, v)
}

fn append(cache: &mut dyn KvCache, seq: SeqId, positions: &[u32]) -> Result<(), KvError> {
    let (k, v) = rows(positions);
    cache.append(seq, &k, &v, positions)
}

/// Checks that `seq` holds exactly the tokens at `positions`, in that order.
fn assert_holds(cache: &dyn KvCache, seq: SeqId, positions: &[u32]) {
    let dense = cache.view(seq).unwrap().to_dense();
    let (k, v) = rows(positions);
    assert_eq!(dense.positions, positions, "positions of {seq}");
    assert_eq!(dense.k, k, "K of {seq}");
    assert_eq!(dense.v, v, "V of {seq}");
    assert_eq!(
        cache.seq_len(seq).unwrap(),
        positions.len(),
        "seq_len of {seq}"
    );
}

#[test]
fn contiguous_scripted_appends() {
    let mut cache = ContiguousCache::new(config(KvDtype::F32), 5).unwrap();
    cache.add_sequence(A).unwrap();
    assert_holds(&cache, A, &[]);
    append(&mut cache, A, &[0, 1]).unwrap();
    assert_holds(&cache, A, &[0, 1]);
    append(&mut cache, A, &[2]).unwrap();
    append(&mut cache, A, &[]).unwrap();
    assert_holds(&cache, A, &[0, 1, 2]);
    assert_eq!(cache.view(A).unwrap().chunk_count(), 1);
    assert_eq!(cache.tokens_seen(A).unwrap(), 3);

    // Past the capacity: an error, and nothing overwritten.
    assert_eq!(
        append(&mut cache, A, &[3, 4, 5]).unwrap_err(),
        KvError::CapacityExceeded {
            seq: A,
            capacity: 5,
            len: 3,
            tokens: 3
        }
    );
    assert_holds(&cache, A, &[0, 1, 2]);
    append(&mut cache, A, &[3, 4]).unwrap();
    assert_holds(&cache, A, &[0, 1, 2, 3, 4]);
    assert!(matches!(
        append(&mut cache, A, &[5]),
        Err(KvError::CapacityExceeded { .. })
    ));

    // Reset empties the sequence and positions may start again.
    cache.reset(A).unwrap();
    assert_holds(&cache, A, &[]);
    append(&mut cache, A, &[0]).unwrap();
    assert_holds(&cache, A, &[0]);
}

#[test]
fn contiguous_fork_copies() {
    let mut cache = ContiguousCache::new(config(KvDtype::F32), 4).unwrap();
    cache.add_sequence(A).unwrap();
    append(&mut cache, A, &[0, 1]).unwrap();
    cache.fork(A, B).unwrap();
    append(&mut cache, A, &[2]).unwrap();
    append(&mut cache, B, &[7]).unwrap();
    assert_holds(&cache, A, &[0, 1, 2]);
    assert_holds(&cache, B, &[0, 1, 7]);
    assert_eq!(
        cache.kv_bytes(),
        2 * 4 * config(KvDtype::F32).bytes_per_token()
    );
    cache.free(A).unwrap();
    assert_eq!(cache.kv_bytes(), 4 * config(KvDtype::F32).bytes_per_token());
}

#[test]
fn rolling_wraps_in_position_order() {
    let mut cache = RollingCache::new(config(KvDtype::F32), 4, 0).unwrap();
    cache.add_sequence(A).unwrap();
    append(&mut cache, A, &[0, 1, 2]).unwrap();
    assert_holds(&cache, A, &[0, 1, 2]);
    append(&mut cache, A, &[3]).unwrap();
    assert_holds(&cache, A, &[0, 1, 2, 3]);
    append(&mut cache, A, &[4, 5]).unwrap();
    assert_holds(&cache, A, &[2, 3, 4, 5]);
    assert_eq!(cache.tokens_seen(A).unwrap(), 6);

    // The ring wrote tokens 4 and 5 over slots 0 and 1, so the oldest run comes first.
    let view = cache.view(A).unwrap();
    assert_eq!(view.chunk_count(), 2);
    assert_eq!(view.chunk(0).unwrap().positions, &[2, 3]);
    assert_eq!(view.chunk(1).unwrap().positions, &[4, 5]);
    let KvRows::F32(first_k) = view.chunk(1).unwrap().k else {
        panic!("f32 cache returned another dtype");
    };
    assert_eq!(first_k, &rows(&[4, 5]).0[..]);
}

#[test]
fn rolling_keeps_positions_after_wrap() {
    // Positions with gaps stay attached to their rows through several wraps.
    let mut cache = RollingCache::new(config(KvDtype::F32), 3, 0).unwrap();
    cache.add_sequence(A).unwrap();
    let positions: Vec<u32> = (0..11).map(|i| 5 + 7 * i).collect();
    for (i, &p) in positions.iter().enumerate() {
        append(&mut cache, A, &[p]).unwrap();
        let start = (i + 1).saturating_sub(3);
        assert_holds(&cache, A, &positions[start..=i]);
    }
}

#[test]
fn rolling_sinks_stay_at_front() {
    let mut cache = RollingCache::new(config(KvDtype::F32), 3, 2).unwrap();
    cache.add_sequence(A).unwrap();
    let mut expected_all = Vec::new();
    for p in 0..9u32 {
        append(&mut cache, A, &[p]).unwrap();
        expected_all.push(p);
        let sinks = &expected_all[..expected_all.len().min(2)];
        let rest = &expected_all[sinks.len()..];
        let tail = &rest[rest.len().saturating_sub(3)..];
        let expected: Vec<u32> = sinks.iter().chain(tail).copied().collect();
        assert_holds(&cache, A, &expected);
    }
    assert_holds(&cache, A, &[0, 1, 6, 7, 8]);
    assert_eq!(cache.view(A).unwrap().chunk_count(), 3);
}

#[test]
fn rolling_long_append_keeps_last_window() {
    let mut cache = RollingCache::new(config(KvDtype::F32), 4, 1).unwrap();
    cache.add_sequence(A).unwrap();
    append(&mut cache, A, &(0..10).collect::<Vec<_>>()).unwrap();
    assert_holds(&cache, A, &[0, 6, 7, 8, 9]);
    append(&mut cache, A, &[10, 11, 12, 13, 14]).unwrap();
    assert_holds(&cache, A, &[0, 11, 12, 13, 14]);
}

#[test]
fn rolling_reset_and_memory_bound() {
    let mut cache = RollingCache::new(config(KvDtype::Bf16), 4, 1).unwrap();
    cache.add_sequence(A).unwrap();
    let bound = 5 * config(KvDtype::Bf16).bytes_per_token();
    assert_eq!(cache.kv_bytes(), bound);
    append(&mut cache, A, &(0..100).collect::<Vec<_>>()).unwrap();
    assert_eq!(cache.kv_bytes(), bound);
    cache.reset(A).unwrap();
    assert_holds(&cache, A, &[]);
    assert_eq!(cache.tokens_seen(A).unwrap(), 0);
    append(&mut cache, A, &[0, 1]).unwrap();
    assert_holds(&cache, A, &[0, 1]);
}

#[test]
fn rolling_window_zero_is_error() {
    assert_eq!(
        RollingCache::new(config(KvDtype::F32), 0, 4).unwrap_err(),
        KvError::InvalidConfig {
            name: "window",
            value: 0,
            expected: "at least 1 token"
        }
    );
}

#[test]
fn chunks_in_clips_token_range() {
    let mut cache = RollingCache::new(config(KvDtype::F32), 4, 0).unwrap();
    cache.add_sequence(A).unwrap();
    append(&mut cache, A, &[0, 1, 2, 3, 4, 5]).unwrap();
    let view = cache.view(A).unwrap();
    let cases: [(usize, usize, &[u32]); 5] = [
        (0, 4, &[2, 3, 4, 5]),
        (1, 3, &[3, 4]),
        (2, 4, &[4, 5]),
        (3, 100, &[5]),
        (2, 2, &[]),
    ];
    for (start, end, expected) in cases {
        let positions: Vec<u32> = view
            .chunks_in(start, end)
            .flat_map(|c| c.positions.to_vec())
            .collect();
        assert_eq!(positions, expected, "tokens {start}..{end}");
    }
    let split: Vec<usize> = view.chunks_in(1, 3).map(|c| c.len()).collect();
    assert_eq!(
        split,
        [1, 1],
        "a range across the wrap gives one piece per chunk"
    );
}

/// Builds every cache kind as a trait object.
fn all_kinds(dtype: KvDtype) -> Vec<(&'static str, Box<dyn KvCache>)> {
    vec![
        (
            "contiguous",
            Box::new(ContiguousCache::new(config(dtype), 64).unwrap()),
        ),
        (
            "rolling",
            Box::new(RollingCache::new(config(dtype), 64, 0).unwrap()),
        ),
        (
            "paged",
            Box::new(PagedCache::new(config(dtype), 8, 4).unwrap()),
        ),
    ]
}

#[test]
fn every_kind_behind_trait() {
    for dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Bf16] {
        for (name, mut cache) in all_kinds(dtype) {
            cache.add_sequence(A).unwrap();
            append(cache.as_mut(), A, &[0, 1, 2]).unwrap();
            append(cache.as_mut(), A, &[3, 4, 5, 6, 7, 8]).unwrap();
            assert_holds(cache.as_ref(), A, &[0, 1, 2, 3, 4, 5, 6, 7, 8]);
            assert_eq!(cache.config().dtype, dtype, "{name}");
            assert_eq!(
                cache.view(A).unwrap().chunk(0).unwrap().k.dtype(),
                dtype,
                "{name}"
            );
        }
    }
}

#[test]
fn every_kind_rejects_bad_input() {
    for (name, mut cache) in all_kinds(KvDtype::F32) {
        let missing = SeqId(99);
        assert_eq!(
            append(cache.as_mut(), missing, &[0]).unwrap_err(),
            KvError::SequenceNotFound { seq: missing },
            "{name}"
        );
        assert!(
            matches!(cache.view(missing), Err(KvError::SequenceNotFound { .. })),
            "{name}"
        );
        assert!(
            matches!(
                cache.seq_len(missing),
                Err(KvError::SequenceNotFound { .. })
            ),
            "{name}"
        );
        assert!(
            matches!(cache.reset(missing), Err(KvError::SequenceNotFound { .. })),
            "{name}"
        );
        assert!(
            matches!(cache.free(missing), Err(KvError::SequenceNotFound { .. })),
            "{name}"
        );
        assert!(
            matches!(
                cache.fork(missing, B),
                Err(KvError::SequenceNotFound { .. })
            ),
            "{name}"
        );

        cache.add_sequence(A).unwrap();
        assert_eq!(
            cache.add_sequence(A).unwrap_err(),
            KvError::SequenceExists { seq: A },
            "{name}"
        );
        append(cache.as_mut(), A, &[4, 5]).unwrap();
        assert_eq!(
            append(cache.as_mut(), A, &[5]).unwrap_err(),
            KvError::PositionNotIncreasing {
                seq: A,
                previous: 5,
                position: 5
            },
            "{name}"
        );
        assert!(matches!(
            append(cache.as_mut(), A, &[9, 8]),
            Err(KvError::PositionNotIncreasing {
                previous: 9,
                position: 8,
                ..
            })
        ));
        let (k, v) = rows(&[6]);
        assert!(matches!(
            cache.append(A, &k[..5], &v, &[6]),
            Err(KvError::ShapeMismatch {
                name: "k",
                len: 5,
                tokens: 1,
                n_kv_heads: 2,
                head_dim: 3
            })
        ));
        assert!(matches!(
            cache.append(A, &k, &v, &[6, 7]),
            Err(KvError::ShapeMismatch { .. })
        ));
        cache.fork(A, B).unwrap();
        assert_eq!(
            cache.fork(A, B).unwrap_err(),
            KvError::SequenceExists { seq: B },
            "{name}"
        );
        assert_holds(cache.as_ref(), A, &[4, 5]);
    }
}

#[test]
fn zero_dimensions_are_errors() {
    for (n_kv_heads, head_dim) in [(0, 4), (4, 0)] {
        let c = KvConfig::new(n_kv_heads, head_dim, KvDtype::F32);
        assert!(matches!(
            ContiguousCache::new(c, 4),
            Err(KvError::InvalidConfig { .. })
        ));
        assert!(matches!(
            RollingCache::new(c, 4, 0),
            Err(KvError::InvalidConfig { .. })
        ));
        assert!(matches!(
            PagedCache::new(c, 4, 4),
            Err(KvError::InvalidConfig { .. })
        ));
    }
}

#[test]
fn bytes_per_token_by_dtype() {
    // 2 heads of dim 3: K and V of 6 values each; int8 adds 2 f32 scales to each.
    assert_eq!(config(KvDtype::F32).bytes_per_token(), 2 * 6 * 4);
    assert_eq!(config(KvDtype::F16).bytes_per_token(), 2 * 6 * 2);
    assert_eq!(config(KvDtype::Bf16).bytes_per_token(), 2 * 6 * 2);
    assert_eq!(config(KvDtype::Int8).bytes_per_token(), 2 * (6 + 2 * 4));
}

/// Pseudo-random values in [-scale, scale].
fn noise(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

#[test]
fn int8_round_trip_within_bound() {
    // Per head, |x - dequantised| <= max|x| / 254 (half a quantisation step), plus 1e-6
    // relative for the f32 products in quantising and dequantising.
    let c = KvConfig::new(3, 17, KvDtype::Int8);
    for scale in [1e-3f32, 1.0, 300.0] {
        let mut cache = ContiguousCache::new(c, 8).unwrap();
        cache.add_sequence(A).unwrap();
        let k = noise(5 * 51, 1, scale);
        let mut v = noise(5 * 51, 2, scale);
        v[17..34].fill(0.0);
        cache.append(A, &k, &v, &[0, 1, 2, 3, 4]).unwrap();
        let dense = cache.view(A).unwrap().to_dense();
        for (name, original, restored) in [("k", &k, &dense.k), ("v", &v, &dense.v)] {
            for (head_idx, (x, y)) in original.chunks(17).zip(restored.chunks(17)).enumerate() {
                let max_abs = x.iter().fold(0.0f32, |m, a| m.max(a.abs()));
                let bound = max_abs * (1.0 / 254.0 + 1e-6);
                for (a, b) in x.iter().zip(y) {
                    assert!(
                        (a - b).abs() <= bound,
                        "{name} head {head_idx}: {a} vs {b}, bound {bound}"
                    );
                }
            }
        }
        assert!(
            dense.v[17..34].iter().all(|&x| x == 0.0),
            "an all-zero head stays zero"
        );

        // The raw rows and scales are exposed for the kernel.
        let chunk = cache.view(A).unwrap().chunk(0).unwrap();
        let KvRows::Int8 { values, scales } = chunk.k else {
            panic!("int8 cache returned another dtype");
        };
        assert_eq!(values.len(), 5 * 51);
        assert_eq!(scales.len(), 5 * 3);
        let max0 = k[..17].iter().fold(0.0f32, |m, a| m.max(a.abs()));
        assert_eq!(scales[0], max0 / 127.0);
        assert!(
            values.iter().all(|&q| q != i8::MIN),
            "values stay in -127..=127"
        );
    }
}

#[test]
fn int8_rejects_non_finite() {
    let mut cache = ContiguousCache::new(KvConfig::new(1, 2, KvDtype::Int8), 4).unwrap();
    cache.add_sequence(A).unwrap();
    let err = cache
        .append(A, &[1.0, 2.0, 3.0, f32::NAN], &[0.0; 4], &[0, 1])
        .unwrap_err();
    assert!(
        matches!(
            err,
            KvError::NonFinite {
                name: "k",
                index: 3,
                ..
            }
        ),
        "{err}"
    );
    let err = cache
        .append(A, &[1.0, 2.0], &[f32::INFINITY, 0.0], &[0])
        .unwrap_err();
    assert!(
        matches!(
            err,
            KvError::NonFinite {
                name: "v",
                index: 0,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        cache.seq_len(A).unwrap(),
        0,
        "a failed append stores nothing"
    );
}

#[test]
fn half_types_round_to_nearest() {
    // f16 keeps 11 significant bits and bf16 8, so the relative error is at most 2^-11 and 2^-8.
    for (dtype, relative) in [(KvDtype::F16, 1.0 / 2048.0), (KvDtype::Bf16, 1.0 / 256.0)] {
        let mut cache = ContiguousCache::new(KvConfig::new(2, 5, dtype), 3).unwrap();
        cache.add_sequence(A).unwrap();
        let k = noise(30, 3, 10.0);
        let v = noise(30, 4, 0.01);
        cache.append(A, &k, &v, &[0, 1, 2]).unwrap();
        let dense = cache.view(A).unwrap().to_dense();
        for (a, b) in k.iter().chain(&v).zip(dense.k.iter().chain(&dense.v)) {
            assert!((a - b).abs() <= a.abs() * relative, "{dtype}: {a} vs {b}");
        }
    }
}

#[test]
fn views_are_send_and_sync() {
    fn shareable<T: Send + Sync>() {}
    shareable::<attend::kv::KvSeqView<'static>>();
    shareable::<attend::kv::KvChunk<'static>>();
    shareable::<PagedCache>();
}

#[test]
fn kinds_agree_bitwise_for_every_dtype() {
    // Quantisation is per token and head, so every kind stores the same bits for the same
    // rows: the rolling cache equals the contiguous cache's last `window` tokens, and the
    // paged cache equals it whole, at lengths on and around a block boundary.
    let c = |dtype| KvConfig::new(3, 5, dtype);
    for dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Bf16, KvDtype::Int8] {
        for len in [1usize, 15, 16, 17, 40] {
            let k = noise(len * 15, len as u64, 2.0);
            let v = noise(len * 15, 100 + len as u64, 0.5);
            let positions: Vec<u32> = (0..len as u32).map(|p| 3 * p + 1).collect();

            let mut contiguous = ContiguousCache::new(c(dtype), 64).unwrap();
            let mut rolling = RollingCache::new(c(dtype), 7, 0).unwrap();
            let mut paged = PagedCache::new(c(dtype), 4, 16).unwrap();
            for cache in [
                &mut contiguous as &mut dyn KvCache,
                &mut rolling,
                &mut paged,
            ] {
                cache.add_sequence(A).unwrap();
                // Half in one call, then one token at a time, as prefill then decode.
                let split = len / 2;
                cache
                    .append(A, &k[..split * 15], &v[..split * 15], &positions[..split])
                    .unwrap();
                for t in split..len {
                    cache
                        .append(
                            A,
                            &k[t * 15..(t + 1) * 15],
                            &v[t * 15..(t + 1) * 15],
                            &positions[t..=t],
                        )
                        .unwrap();
                }
            }

            let full = contiguous.view(A).unwrap().to_dense();
            assert_eq!(
                paged.view(A).unwrap().to_dense(),
                full,
                "{dtype} paged, {len} tokens"
            );
            let kept = len.min(7);
            let window = rolling.view(A).unwrap().to_dense();
            assert_eq!(
                window.positions,
                &full.positions[len - kept..],
                "{dtype} rolling, {len} tokens"
            );
            assert_eq!(
                window.k,
                &full.k[(len - kept) * 15..],
                "{dtype} rolling, {len} tokens"
            );
            assert_eq!(
                window.v,
                &full.v[(len - kept) * 15..],
                "{dtype} rolling, {len} tokens"
            );
        }
    }
}

#[test]
fn row_to_f32_checks_its_arguments() {
    let mut cache = ContiguousCache::new(config(KvDtype::F16), 4).unwrap();
    cache.add_sequence(A).unwrap();
    append(&mut cache, A, &[0, 1]).unwrap();
    let chunk = cache.view(A).unwrap().chunk(0).unwrap();
    let mut row = [0.0f32; 6];
    chunk.k.row_to_f32(1, 3, &mut row).unwrap();
    assert_eq!(row, [10.0, 11.0, 12.0, 13.0, 14.0, 15.0]);
    assert_eq!(
        chunk.k.row_to_f32(2, 3, &mut row).unwrap_err(),
        KvError::RowOutOfRange {
            row_idx: 2,
            rows: 2
        }
    );
    assert!(matches!(
        chunk.k.row_to_f32(0, 4, &mut row),
        Err(KvError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        chunk.k.row_to_f32(0, 0, &mut row),
        Err(KvError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        chunk.k.row_to_f32(0, 3, &mut []),
        Err(KvError::RowOutOfRange { .. })
    ));
}

#[test]
fn dense_bf16_copies_rows_in_position_order() {
    // A wrapped rolling bf16 cache with a sink has three runs: the sink, the ring
    // from its oldest slot, and the ring's start. The bf16 copy must contain the
    // same rows in the same order as the f32 copy, unconverted.
    let mut cache = RollingCache::new(config(KvDtype::Bf16), 3, 1).unwrap();
    cache.add_sequence(A).unwrap();
    append(&mut cache, A, &[0, 1, 2, 3, 4]).unwrap();
    append(&mut cache, A, &[5]).unwrap();
    let view = cache.view(A).unwrap();
    assert_eq!(view.chunk_count(), 3);
    let dense = view.to_dense();
    let bf16_rows = view.to_dense_bf16().expect("a bf16 cache has bf16 rows");
    assert_eq!(bf16_rows.positions, vec![0, 3, 4, 5]);
    assert_eq!(bf16_rows.positions, dense.positions);
    let widen = |rows: &[half::bf16]| rows.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
    assert_eq!(widen(&bf16_rows.k), dense.k);
    assert_eq!(widen(&bf16_rows.v), dense.v);

    // Other storage types have no bf16 rows to copy, even when empty.
    for dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Int8] {
        let mut cache = ContiguousCache::new(config(dtype), 4).unwrap();
        cache.add_sequence(A).unwrap();
        assert!(
            cache.view(A).unwrap().to_dense_bf16().is_none(),
            "{dtype:?}, empty"
        );
        append(&mut cache, A, &[0, 1]).unwrap();
        assert!(
            cache.view(A).unwrap().to_dense_bf16().is_none(),
            "{dtype:?}"
        );
    }
    let mut empty = ContiguousCache::new(config(KvDtype::Bf16), 4).unwrap();
    empty.add_sequence(A).unwrap();
    let rows = empty.view(A).unwrap().to_dense_bf16().unwrap();
    assert!(rows.k.is_empty());
    assert!(rows.v.is_empty());
    assert!(rows.positions.is_empty());
}
