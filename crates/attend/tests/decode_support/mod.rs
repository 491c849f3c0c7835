//! Helpers shared by the decode and cache metamorphic tests.

#![allow(dead_code)]

use attend::kv::KvSeqView;
use attend::kv::{ContiguousCache, KvCache, KvConfig, KvDtype, PagedCache, RollingCache, SeqId};
use attend::{decode, AttentionParams, Bshd, BshdMut};

/// Returns `len` values uniform in [-1, 1) from a xorshift64 stream.
pub fn random_values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// A cache kind and its size parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CacheKind {
    Contiguous,
    Paged { block_size: usize },
    Rolling { window: usize, sinks: usize },
}

/// The cache kinds every metamorphic test runs over; the rolling window is large enough
/// to hold `max_tokens`, so it never drops a token.
pub fn lossless_kinds(max_tokens: usize) -> Vec<CacheKind> {
    vec![
        CacheKind::Contiguous,
        CacheKind::Paged { block_size: 16 },
        CacheKind::Paged { block_size: 1 },
        CacheKind::Paged { block_size: 7 },
        CacheKind::Rolling {
            window: max_tokens,
            sinks: 0,
        },
        CacheKind::Rolling {
            window: max_tokens - 3,
            sinks: 3,
        },
    ]
}

pub const DTYPES: [KvDtype; 4] = [KvDtype::F32, KvDtype::F16, KvDtype::Bf16, KvDtype::Int8];

/// Creates an empty cache of `kind` holding up to `max_tokens` tokens, with sequence 0.
pub fn make_cache(kind: CacheKind, config: KvConfig, max_tokens: usize) -> Box<dyn KvCache> {
    let mut cache: Box<dyn KvCache> = match kind {
        CacheKind::Contiguous => Box::new(ContiguousCache::new(config, max_tokens).unwrap()),
        CacheKind::Paged { block_size } => Box::new(
            PagedCache::new(config, max_tokens.div_ceil(block_size) + 1, block_size).unwrap(),
        ),
        CacheKind::Rolling { window, sinks } => {
            Box::new(RollingCache::new(config, window, sinks).unwrap())
        }
    };
    cache.add_sequence(SeqId(0)).unwrap();
    cache
}

/// Runs [`decode`] and returns `(out, lse)`, contiguous.
///
/// # Shapes
/// `q: [batch, q_len, n_heads, head_dim]`; `out: [batch, q_len, n_heads, head_dim]`,
/// `lse: [batch, n_heads, q_len]`.
pub fn run_decode(
    q: &[f32],
    q_len: usize,
    n_heads: usize,
    head_dim: usize,
    kv: &[KvSeqView],
    params: &AttentionParams,
) -> (Vec<f32>, Vec<f32>) {
    let batch = kv.len();
    let q = Bshd::contiguous(q, batch, q_len, n_heads, head_dim).unwrap();
    let mut out = vec![f32::NAN; batch * q_len * n_heads * head_dim];
    let mut lse = vec![f32::NAN; batch * n_heads * q_len];
    let mut out_view = BshdMut::contiguous(&mut out, batch, q_len, n_heads, head_dim).unwrap();
    decode(q, kv, params, &mut out_view, Some(&mut lse)).unwrap();
    (out, lse)
}

/// Largest absolute rounding error of one stored value in [-1, 1] for `dtype`.
///
/// f16 has 11 significant bits and bf16 8, so rounding to nearest errs by at most half a
/// unit in the last place: 2^-12 and 2^-9 below 1. Int8 rounds `x / scale` to an integer
/// with `scale = max |x| / 127 <= 1 / 127`, so it errs by at most `scale / 2 = 1 / 254`.
pub fn storage_error(dtype: KvDtype) -> f64 {
    match dtype {
        KvDtype::F32 => 0.0,
        KvDtype::F16 => 2f64.powi(-12),
        KvDtype::Bf16 => 2f64.powi(-9),
        KvDtype::Int8 => 1.0 / 254.0,
    }
}

/// Bound on an output element's change when K and V (values in [-1, 1]) are stored with
/// rounding error `delta`, for queries in [-1, 1] and scale `1 / sqrt(head_dim)`.
///
/// The V error moves the output, a convex combination of V rows, by at most `delta`. A
/// score moves by at most `scale * |q|_1 * delta <= sqrt(head_dim) * delta`, and softmax
/// weights then move by at most twice that in l1 norm (to first order), which moves the
/// output by at most `2 * sqrt(head_dim) * delta * max |v|`. The factor 1.5 covers the
/// second-order terms, and 1e-4 the f32 arithmetic of two different kernels.
pub fn storage_bound(dtype: KvDtype, head_dim: usize) -> f64 {
    let delta = storage_error(dtype);
    1.5 * (delta + 2.0 * (head_dim as f64).sqrt() * delta) + 1e-4
}

/// Asserts `|got - expected| <= tolerance` element by element; equal infinities match.
pub fn assert_within(what: &str, got: &[f32], expected: &[f32], tolerance: f64) {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    for (i, (&x, &y)) in got.iter().zip(expected).enumerate() {
        if x == y {
            continue;
        }
        let error = (f64::from(x) - f64::from(y)).abs();
        assert!(
            error <= tolerance,
            "{what}[{i}]: {x} vs {y}, error {error:e} > tolerance {tolerance:e}"
        );
    }
}

/// As [`assert_within`] against f64 expectations.
pub fn assert_within_f64(what: &str, got: &[f32], expected: &[f64], tolerance: f64) {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    for (i, (&x, &y)) in got.iter().zip(expected).enumerate() {
        let x = f64::from(x);
        if x == y {
            continue;
        }
        let error = (x - y).abs();
        assert!(
            error <= tolerance,
            "{what}[{i}]: {x} vs {y}, error {error:e} > tolerance {tolerance:e}"
        );
    }
}
