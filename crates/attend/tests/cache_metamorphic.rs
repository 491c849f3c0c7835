//! Metamorphic tests that tie the caches to the kernels: the same attention computed
//! through a cache, token by token, and in one full pass must agree.

mod decode_support;

use attend::kv::{ContiguousCache, KvCache, KvConfig, KvDtype, PagedCache, SeqId};
use attend::{attention, attention_with_mods, AttentionParams, Bshd, BshdMut};
use decode_support::*;

const N_KV_HEADS: usize = 2;
const GROUP: usize = 3;
const N_HEADS: usize = N_KV_HEADS * GROUP;
const HEAD_DIM: usize = 16;
const ROW_LEN: usize = N_KV_HEADS * HEAD_DIM;
const Q_ROW_LEN: usize = N_HEADS * HEAD_DIM;

/// Tolerance between two f32 kernels computing the same attention over the same values:
/// each is within `8 * u * (head_dim + kv_len + 64)` of the exact result (see the decode
/// tests), so they are within twice that of each other.
fn kernel_tolerance(kv_len: usize) -> f64 {
    2.0 * 8.0 * 5.960_464_477_539_063e-8 * (HEAD_DIM + kv_len + 64) as f64
}

/// Runs the tiled kernel over a whole sequence and returns `[tokens, n_heads, head_dim]`.
fn full_pass(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    tokens: usize,
    params: &AttentionParams,
    mask: Option<&(dyn Fn(usize, usize, usize, usize) -> bool + Sync)>,
) -> Vec<f32> {
    let q = Bshd::contiguous(q, 1, tokens, N_HEADS, HEAD_DIM).unwrap();
    let k = Bshd::contiguous(k, 1, tokens, N_KV_HEADS, HEAD_DIM).unwrap();
    let v = Bshd::contiguous(v, 1, tokens, N_KV_HEADS, HEAD_DIM).unwrap();
    let mut out = vec![f32::NAN; tokens * Q_ROW_LEN];
    let mut out_view = BshdMut::contiguous(&mut out, 1, tokens, N_HEADS, HEAD_DIM).unwrap();
    match mask {
        None => attention(q, k, v, params, &mut out_view, None).unwrap(),
        Some(mask) => {
            let no_score_mod = attend::mask::NoScoreMod;
            attention_with_mods(q, k, v, params, &mask, &no_score_mod, &mut out_view, None).unwrap()
        }
    }
    out
}

/// Appends `prefill` tokens at once, then the rest one at a time, decoding the new
/// token's query after each append, and returns the decoded rows `[tokens, n_heads,
/// head_dim]` (the prefill rows decoded as one multi-query call).
fn prefill_then_decode(
    cache: &mut dyn KvCache,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    tokens: usize,
    prefill: usize,
    params: &AttentionParams,
) -> Vec<f32> {
    let seq = SeqId(0);
    let positions: Vec<u32> = (0..tokens as u32).collect();
    cache
        .append(
            seq,
            &k[..prefill * ROW_LEN],
            &v[..prefill * ROW_LEN],
            &positions[..prefill],
        )
        .unwrap();
    let mut out = Vec::with_capacity(tokens * Q_ROW_LEN);
    if prefill > 0 {
        let view = cache.view(seq).unwrap();
        let (rows, _) = run_decode(
            &q[..prefill * Q_ROW_LEN],
            prefill,
            N_HEADS,
            HEAD_DIM,
            &[view],
            params,
        );
        out.extend_from_slice(&rows);
    }
    for t in prefill..tokens {
        let rows = t * ROW_LEN..(t + 1) * ROW_LEN;
        cache
            .append(seq, &k[rows.clone()], &v[rows], &positions[t..t + 1])
            .unwrap();
        let view = cache.view(seq).unwrap();
        let q_t = &q[t * Q_ROW_LEN..(t + 1) * Q_ROW_LEN];
        let (row, _) = run_decode(q_t, 1, N_HEADS, HEAD_DIM, &[view], params);
        out.extend_from_slice(&row);
    }
    out
}

#[test]
fn prefill_then_decodes_equal_full_pass() {
    let causal = AttentionParams {
        causal: true,
        ..Default::default()
    };
    // Ends on a paged block (16), a tile (64) and a split (256) boundary and one past each.
    for tokens in [16, 17, 64, 65, 256, 257] {
        let q = random_values(tokens * Q_ROW_LEN, 1);
        let k = random_values(tokens * ROW_LEN, 2);
        let v = random_values(tokens * ROW_LEN, 3);
        let exact = full_pass(&q, &k, &v, tokens, &causal, None);
        for dtype in DTYPES {
            for kind in lossless_kinds(tokens) {
                for prefill in [0, tokens / 2, tokens - 1] {
                    let config = KvConfig::new(N_KV_HEADS, HEAD_DIM, dtype);
                    let mut cache = make_cache(kind, config, tokens);
                    let decoded =
                        prefill_then_decode(cache.as_mut(), &q, &k, &v, tokens, prefill, &causal);
                    let what = format!("{kind:?} {dtype} tokens {tokens} prefill {prefill}");

                    // Against a full pass over the values as the cache stores them.
                    let stored = cache.view(SeqId(0)).unwrap().to_dense();
                    assert_eq!(
                        stored.positions.len(),
                        tokens,
                        "{what}: cache holds every token"
                    );
                    let same_values = full_pass(&q, &stored.k, &stored.v, tokens, &causal, None);
                    assert_within(&what, &decoded, &same_values, kernel_tolerance(tokens));

                    // Against the full pass over the unrounded f32 values.
                    let bound = storage_bound(dtype, HEAD_DIM);
                    assert_within(&format!("{what} vs f32"), &decoded, &exact, bound);
                }
            }
        }
    }
}

#[test]
fn rolling_after_wrap_equals_windowed_pass() {
    let window = 50;
    let tokens = 300;
    let q = random_values(tokens * Q_ROW_LEN, 11);
    let k = random_values(tokens * ROW_LEN, 12);
    let v = random_values(tokens * ROW_LEN, 13);
    for dtype in DTYPES {
        let config = KvConfig::new(N_KV_HEADS, HEAD_DIM, dtype);
        // The stored values of a contiguous cache equal those of the rolling cache token
        // by token (both quantise each row on its own).
        let mut full = ContiguousCache::new(config, tokens).unwrap();
        full.add_sequence(SeqId(0)).unwrap();
        let positions: Vec<u32> = (0..tokens as u32).collect();
        full.append(SeqId(0), &k, &v, &positions).unwrap();
        let stored = full.view(SeqId(0)).unwrap().to_dense();

        // A window of W tokens is the query and the W - 1 keys before it.
        let windowed = AttentionParams {
            causal: true,
            window: (Some(window - 1), None),
            ..Default::default()
        };
        let expected = full_pass(&q, &stored.k, &stored.v, tokens, &windowed, None);

        // The cache alone bounds what decode sees, and the same window passed to decode
        // changes nothing.
        let causal = AttentionParams {
            causal: true,
            ..Default::default()
        };
        for params in [causal, windowed] {
            let kind = CacheKind::Rolling { window, sinks: 0 };
            let mut cache = make_cache(kind, config, tokens);
            let decoded =
                prefill_then_decode(cache.as_mut(), &q, &k, &v, tokens, window - 1, &params);
            assert_eq!(
                cache.seq_len(SeqId(0)).unwrap(),
                window,
                "{dtype}: ring is full"
            );
            assert_within(
                &format!("{dtype} {:?}", params.window),
                &decoded,
                &expected,
                kernel_tolerance(tokens),
            );
        }
    }
}

#[test]
fn rolling_with_sinks_equals_sink_mask_pass() {
    let (window, sinks, tokens) = (40, 4, 200);
    let q = random_values(tokens * Q_ROW_LEN, 21);
    let k = random_values(tokens * ROW_LEN, 22);
    let v = random_values(tokens * ROW_LEN, 23);
    let causal = AttentionParams {
        causal: true,
        ..Default::default()
    };
    // Query t keeps the first `sinks` tokens and the last `window` tokens up to itself.
    let mask = move |_: usize, _: usize, q_idx: usize, kv_idx: usize| {
        kv_idx < sinks || kv_idx + window > q_idx
    };
    for dtype in DTYPES {
        let config = KvConfig::new(N_KV_HEADS, HEAD_DIM, dtype);
        let mut full = ContiguousCache::new(config, tokens).unwrap();
        full.add_sequence(SeqId(0)).unwrap();
        let positions: Vec<u32> = (0..tokens as u32).collect();
        full.append(SeqId(0), &k, &v, &positions).unwrap();
        let stored = full.view(SeqId(0)).unwrap().to_dense();
        let expected = full_pass(&q, &stored.k, &stored.v, tokens, &causal, Some(&mask));

        let mut cache = make_cache(CacheKind::Rolling { window, sinks }, config, tokens);
        let decoded = prefill_then_decode(cache.as_mut(), &q, &k, &v, tokens, 10, &causal);
        assert_within(
            &format!("{dtype}"),
            &decoded,
            &expected,
            kernel_tolerance(tokens),
        );
    }
}

#[test]
fn forked_sequences_decode_their_own_history() {
    let config = KvConfig::new(N_KV_HEADS, HEAD_DIM, KvDtype::Bf16);
    let (prefix, extra) = (37, 20);
    let k = random_values((prefix + 2 * extra) * ROW_LEN, 31);
    let v = random_values((prefix + 2 * extra) * ROW_LEN, 32);
    let q = random_values(Q_ROW_LEN, 33);
    let causal = AttentionParams {
        causal: true,
        ..Default::default()
    };
    let (parent, child) = (SeqId(1), SeqId(2));
    let mut paged = PagedCache::new(config, 64, 16).unwrap();
    paged.add_sequence(parent).unwrap();
    let positions: Vec<u32> = (0..(prefix + extra) as u32).collect();
    paged
        .append(
            parent,
            &k[..prefix * ROW_LEN],
            &v[..prefix * ROW_LEN],
            &positions[..prefix],
        )
        .unwrap();
    paged.fork(parent, child).unwrap();

    let decode_seq = |cache: &dyn KvCache, seq: SeqId| {
        run_decode(
            &q,
            1,
            N_HEADS,
            HEAD_DIM,
            &[cache.view(seq).unwrap()],
            &causal,
        )
        .0
    };
    assert_eq!(
        decode_seq(&paged, parent),
        decode_seq(&paged, child),
        "before any write"
    );

    // Each sequence then appends its own tokens: the parent the next `extra` rows of k
    // and v, the child the `extra` rows after those, at the same positions.
    let parent_rows = prefix * ROW_LEN..(prefix + extra) * ROW_LEN;
    let child_rows = (prefix + extra) * ROW_LEN..(prefix + 2 * extra) * ROW_LEN;
    let new_positions = &positions[prefix..];
    paged
        .append(
            parent,
            &k[parent_rows.clone()],
            &v[parent_rows.clone()],
            new_positions,
        )
        .unwrap();
    paged
        .append(
            child,
            &k[child_rows.clone()],
            &v[child_rows.clone()],
            new_positions,
        )
        .unwrap();

    for (seq, rows) in [(parent, parent_rows), (child, child_rows)] {
        let mut own = ContiguousCache::new(config, prefix + extra).unwrap();
        own.add_sequence(seq).unwrap();
        let history_k = [&k[..prefix * ROW_LEN], &k[rows.clone()]].concat();
        let history_v = [&v[..prefix * ROW_LEN], &v[rows]].concat();
        own.append(seq, &history_k, &history_v, &positions).unwrap();
        assert_within(
            &format!("sequence {seq}"),
            &decode_seq(&paged, seq),
            &decode_seq(&own, seq),
            kernel_tolerance(prefix + extra),
        );
    }
}
