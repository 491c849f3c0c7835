//! The multi-head attention module against a float64 composition of reference
//! projections and the attention oracle, with and without caches.

mod decode_support;

use attend::kv::{KvCache, KvConfig, KvDtype, KvError, SeqId};
use attend::mha::{DenseLinear, HeadNorm, Linear, MhaConfig, MhaError, MultiHeadAttention};
use attend::rope::{Rope, RopeConfig, RopeLayout};
use attend::{attention_reference, AttendError, AttentionParams, Bshd};
use decode_support::*;

/// Tolerance of the module against the f64 composition, relative to `1 + |expected|`.
///
/// Inputs and weights give O(1) activations. The f32 projections sum at most 64
/// products, about 64 * 2^-24 relative error each. The kernel is within 8 * u *
/// (head_dim + kv_len + 64) of the oracle, under 1e-4 at kv_len 70. The output
/// projection adds another sum of 64 terms, so 5e-4 covers the chain.
const TOLERANCE: f64 = 5e-4;

/// One layer's weights, kept in f32 for the reference.
#[derive(Clone)]
struct Weights {
    config: MhaConfig,
    context_width: usize,
    q: Vec<f32>,
    q_bias: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
}

impl Weights {
    fn new(config: MhaConfig, context_width: usize, seed: u64) -> Self {
        let q_width = config.n_heads * config.head_dim;
        let kv_width = config.n_kv_heads * config.head_dim;
        let scaled = |len: usize, fan_in: usize, seed: u64| {
            let scale = 1.0 / (fan_in as f32).sqrt();
            random_values(len, seed)
                .into_iter()
                .map(|x| x * scale)
                .collect::<Vec<_>>()
        };
        Self {
            config,
            context_width,
            q: scaled(q_width * config.hidden, config.hidden, seed),
            q_bias: random_values(q_width, seed + 1),
            k: scaled(kv_width * context_width, context_width, seed + 2),
            v: scaled(kv_width * context_width, context_width, seed + 3),
            o: scaled(config.hidden * q_width, q_width, seed + 4),
        }
    }

    fn layer(&self) -> MultiHeadAttention {
        let c = self.config;
        let (q_width, kv_width) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let linear = |w: &[f32], out: usize, inp: usize| -> Box<dyn Linear> {
            Box::new(DenseLinear::new(w.to_vec(), out, inp).unwrap())
        };
        let q = DenseLinear::new(self.q.clone(), q_width, c.hidden)
            .unwrap()
            .with_bias(self.q_bias.clone())
            .unwrap();
        MultiHeadAttention::new(
            c,
            Box::new(q),
            linear(&self.k, kv_width, self.context_width),
            linear(&self.v, kv_width, self.context_width),
            linear(&self.o, c.hidden, q_width),
        )
        .unwrap()
    }
}

/// Computes `x W^T (+ bias)` in f64. `x: [tokens, inp]`, `w: [out, inp]`.
fn linear_f64(x: &[f64], w: &[f32], bias: Option<&[f32]>, out: usize, inp: usize) -> Vec<f64> {
    let tokens = x.len() / inp;
    let mut y = vec![0.0; tokens * out];
    for t in 0..tokens {
        for o in 0..out {
            let dot: f64 = (0..inp)
                .map(|i| x[t * inp + i] * f64::from(w[o * inp + i]))
                .sum();
            y[t * out + o] = dot + bias.map_or(0.0, |b| f64::from(b[o]));
        }
    }
    y
}

fn to_f32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}

fn rms_norm() -> HeadNorm {
    Box::new(|row: &mut [f32]| {
        let mean_square = row.iter().map(|x| x * x).sum::<f32>() / row.len() as f32;
        let inverse = 1.0 / (mean_square + 1e-6).sqrt();
        row.iter_mut().for_each(|x| *x *= inverse);
    })
}

/// What the reference applies between projection and attention.
struct Hooks<'a> {
    rope: Option<(Rope, &'a [u32])>,
    norm: Option<HeadNorm>,
}

/// The f64 composition: reference projections, the same norm and RoPE on the f32
/// rounding of q and k, the attention oracle, and the output projection in f64.
fn reference(
    w: &Weights,
    x: &[f32],
    context: &[f32],
    params: &AttentionParams,
    hooks: Hooks,
) -> Vec<f32> {
    let c = w.config;
    let (q_width, kv_width) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    let tokens = x.len() / c.hidden;
    let kv_tokens = context.len() / w.context_width;
    let mut q = to_f32(&linear_f64(
        &to_f64(x),
        &w.q,
        Some(&w.q_bias),
        q_width,
        c.hidden,
    ));
    let mut k = to_f32(&linear_f64(
        &to_f64(context),
        &w.k,
        None,
        kv_width,
        w.context_width,
    ));
    let v = to_f32(&linear_f64(
        &to_f64(context),
        &w.v,
        None,
        kv_width,
        w.context_width,
    ));
    if let Some(norm) = &hooks.norm {
        q.chunks_exact_mut(c.head_dim).for_each(norm);
        k.chunks_exact_mut(c.head_dim).for_each(norm);
    }
    if let Some((mut rope, positions)) = hooks.rope {
        rope.apply(&mut q, c.n_heads, positions).unwrap();
        rope.apply(&mut k, c.n_kv_heads, positions).unwrap();
    }
    let qv = Bshd::contiguous(&q, 1, tokens, c.n_heads, c.head_dim).unwrap();
    let kv = Bshd::contiguous(&k, 1, kv_tokens, c.n_kv_heads, c.head_dim).unwrap();
    let vv = Bshd::contiguous(&v, 1, kv_tokens, c.n_kv_heads, c.head_dim).unwrap();
    let attended = attention_reference(qv, kv, vv, params).unwrap();
    to_f32(&linear_f64(&attended.out, &w.o, None, c.hidden, q_width))
}

fn config(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> MhaConfig {
    MhaConfig {
        hidden: 24,
        n_heads,
        n_kv_heads,
        head_dim,
        scale: None,
        causal: true,
        window: (None, None),
        softcap: None,
    }
}

fn rope(head_dim: usize) -> Rope {
    Rope::new(RopeConfig::new(head_dim, 10_000.0, RopeLayout::HalfSplit)).unwrap()
}

fn assert_close(what: &str, got: &[f32], expected: &[f32]) {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    for (i, (&x, &y)) in got.iter().zip(expected).enumerate() {
        let error = (f64::from(x) - f64::from(y)).abs();
        assert!(
            error <= TOLERANCE * (1.0 + f64::from(y).abs()),
            "{what}[{i}]: {x} vs {y}, error {error:e}"
        );
    }
}

#[test]
fn self_attention_matches_composition() {
    let head_dim = 8;
    for (n_heads, n_kv_heads) in [(4, 4), (6, 2), (4, 1)] {
        for tokens in [1, 7, 70] {
            for (with_rope, with_norm) in [(false, false), (true, false), (true, true)] {
                for (causal, window, scale) in [
                    (true, (None, None), None),
                    (false, (None, None), Some(0.3)),
                    (true, (Some(5), None), None),
                ] {
                    let mut c = config(n_heads, n_kv_heads, head_dim);
                    c.causal = causal;
                    c.window = window;
                    c.scale = scale;
                    let w = Weights::new(c, c.hidden, tokens as u64);
                    let mut layer = w.layer();
                    if with_rope {
                        layer = layer.with_rope(rope(head_dim)).unwrap();
                    }
                    if with_norm {
                        layer = layer.with_q_norm(rms_norm()).with_k_norm(rms_norm());
                    }
                    let x = random_values(tokens * c.hidden, 9);
                    let positions: Vec<u32> = (3..3 + tokens as u32).collect();
                    let mut out = vec![f32::NAN; tokens * c.hidden];
                    layer.forward(&x, &positions, &mut out).unwrap();

                    let params = AttentionParams {
                        causal,
                        window,
                        scale,
                        ..Default::default()
                    };
                    let hooks = Hooks {
                        rope: with_rope.then(|| (rope(head_dim), &positions[..])),
                        norm: with_norm.then(rms_norm),
                    };
                    let expected = reference(&w, &x, &x, &params, hooks);
                    let what = format!(
                        "heads {n_heads}/{n_kv_heads} tokens {tokens} rope {with_rope} norm {with_norm} causal {causal} window {window:?}"
                    );
                    assert_close(&what, &out, &expected);
                }
            }
        }
    }
}

#[test]
fn cross_attention_matches_composition() {
    let c = config(6, 3, 8);
    let context_width = 10;
    for context_tokens in [1, 5, 13] {
        let w = Weights::new(c, context_width, 40 + context_tokens as u64);
        let mut layer = w.layer().with_rope(rope(8)).unwrap();
        let x = random_values(4 * c.hidden, 1);
        let context = random_values(context_tokens * context_width, 2);
        let mut out = vec![f32::NAN; 4 * c.hidden];
        layer.forward_cross(&x, &context, &mut out).unwrap();

        // Cross-attention sees every context token and rotates nothing.
        let params = AttentionParams::default();
        let hooks = Hooks {
            rope: None,
            norm: None,
        };
        let expected = reference(&w, &x, &context, &params, hooks);
        assert_close(&format!("context {context_tokens}"), &out, &expected);
    }
}

/// Feeds `x` through `layer` with `cache` in the given chunk sizes (1 means decode) and
/// returns the concatenated outputs.
fn run_chunks(
    layer: &mut MultiHeadAttention,
    cache: &mut dyn KvCache,
    x: &[f32],
    positions: &[u32],
    chunks: &[usize],
) -> Vec<f32> {
    let hidden = layer.config().hidden;
    let mut outputs = Vec::new();
    let mut start = 0;
    for &len in chunks {
        let mut out = vec![f32::NAN; len * hidden];
        layer
            .forward_cached(
                &x[start * hidden..(start + len) * hidden],
                &positions[start..start + len],
                cache,
                SeqId(0),
                &mut out,
            )
            .unwrap();
        outputs.extend_from_slice(&out);
        start += len;
    }
    assert_eq!(start, positions.len(), "chunks cover the sequence");
    outputs
}

#[test]
fn cached_chunks_equal_full_forward() {
    let head_dim = 8;
    let c = config(6, 2, head_dim);
    let tokens = 40;
    let chunks = [9, 1, 1, 16, 1, 1, 1, 10];
    let x = random_values(tokens * c.hidden, 5);
    let positions: Vec<u32> = (0..tokens as u32).collect();
    let w = Weights::new(c, c.hidden, 77);
    let mut full = vec![f32::NAN; tokens * c.hidden];
    w.layer()
        .with_rope(rope(head_dim))
        .unwrap()
        .forward(&x, &positions, &mut full)
        .unwrap();

    for kind in lossless_kinds(tokens) {
        let config = KvConfig::new(c.n_kv_heads, head_dim, KvDtype::F32);
        let mut cache = make_cache(kind, config, tokens);
        let mut layer = w.layer().with_rope(rope(head_dim)).unwrap();
        let cached = run_chunks(&mut layer, cache.as_mut(), &x, &positions, &chunks);
        assert_close(&format!("{kind:?}"), &cached, &full);
    }
}

#[test]
fn rolling_cache_equals_windowed_forward() {
    let head_dim = 8;
    let window = 12;
    let mut c = config(4, 2, head_dim);
    c.window = (Some(window - 1), None);
    let tokens = 50;
    // A prefill chunk longer than the ring, then decodes past several wraps.
    let chunks: Vec<usize> = [20].into_iter().chain(std::iter::repeat_n(1, 30)).collect();
    let x = random_values(tokens * c.hidden, 15);
    let positions: Vec<u32> = (0..tokens as u32).collect();
    let w = Weights::new(c, c.hidden, 78);
    let mut full = vec![f32::NAN; tokens * c.hidden];
    w.layer().forward(&x, &positions, &mut full).unwrap();

    let config = KvConfig::new(c.n_kv_heads, head_dim, KvDtype::F32);
    let mut cache = make_cache(CacheKind::Rolling { window, sinks: 0 }, config, tokens);
    let mut layer = w.layer();
    let cached = run_chunks(&mut layer, cache.as_mut(), &x, &positions, &chunks);
    assert_eq!(cache.seq_len(SeqId(0)).unwrap(), window);
    assert_close("rolling", &cached, &full);
}

#[test]
fn gapped_positions_mask_by_position() {
    // Positions with gaps make the prefill over cached rows mask by position. A causal
    // mask by position equals the causal mask by index, so the full forward must agree.
    let head_dim = 8;
    let c = config(4, 4, head_dim);
    let tokens = 30;
    let chunks = [10, 1, 12, 1, 6];
    let x = random_values(tokens * c.hidden, 25);
    let positions: Vec<u32> = (0..tokens as u32).map(|t| t * 3 + t % 2).collect();
    let w = Weights::new(c, c.hidden, 79);
    let mut full = vec![f32::NAN; tokens * c.hidden];
    w.layer()
        .with_rope(rope(head_dim))
        .unwrap()
        .forward(&x, &positions, &mut full)
        .unwrap();

    let config = KvConfig::new(c.n_kv_heads, head_dim, KvDtype::F32);
    let mut cache = make_cache(CacheKind::Paged { block_size: 4 }, config, tokens);
    let mut layer = w.layer().with_rope(rope(head_dim)).unwrap();
    let cached = run_chunks(&mut layer, cache.as_mut(), &x, &positions, &chunks);
    assert_close("gapped", &cached, &full);
}

#[test]
fn decode_batch_equals_single_decodes() {
    let head_dim = 8;
    let c = config(6, 3, head_dim);
    let w = Weights::new(c, c.hidden, 80);
    let config = KvConfig::new(c.n_kv_heads, head_dim, KvDtype::Bf16);
    let lengths = [5usize, 0, 17];
    let seqs = [SeqId(0), SeqId(1), SeqId(2)];

    // Two identical caches: one decoded as a batch, one sequence at a time.
    let mut caches: Vec<Box<dyn KvCache>> = (0..2)
        .map(|_| {
            let mut cache = make_cache(CacheKind::Paged { block_size: 4 }, config, 64);
            cache.add_sequence(SeqId(1)).unwrap();
            cache.add_sequence(SeqId(2)).unwrap();
            cache
        })
        .collect();
    let mut layer = w.layer().with_rope(rope(head_dim)).unwrap();
    for cache in caches.iter_mut() {
        for (&seq, &len) in seqs.iter().zip(&lengths) {
            if len == 0 {
                continue;
            }
            let x = random_values(len * c.hidden, seq.0);
            let positions: Vec<u32> = (0..len as u32).collect();
            let mut out = vec![0.0; len * c.hidden];
            layer
                .forward_cached(&x, &positions, cache.as_mut(), seq, &mut out)
                .unwrap();
        }
    }

    let x = random_values(seqs.len() * c.hidden, 99);
    let positions: Vec<u32> = lengths.iter().map(|&len| len as u32).collect();
    let mut batched = vec![f32::NAN; seqs.len() * c.hidden];
    layer
        .decode_batch(&x, &positions, caches[0].as_mut(), &seqs, &mut batched)
        .unwrap();
    for (b, &seq) in seqs.iter().enumerate() {
        let rows = b * c.hidden..(b + 1) * c.hidden;
        let mut single = vec![f32::NAN; c.hidden];
        layer
            .forward_cached(
                &x[rows.clone()],
                &positions[b..b + 1],
                caches[1].as_mut(),
                seq,
                &mut single,
            )
            .unwrap();
        assert_close(&format!("sequence {b}"), &batched[rows], &single);
    }
}

#[test]
fn bad_input_returns_typed_errors() {
    let c = config(4, 2, 8);
    let w = Weights::new(c, c.hidden, 1);

    let err = DenseLinear::new(vec![0.0; 5], 2, 3).unwrap_err();
    assert_eq!(
        err,
        MhaError::BufferLength {
            name: "weight",
            found: 5,
            expected: 6
        }
    );

    let linear = |out: usize, inp: usize| -> Box<dyn Linear> {
        Box::new(DenseLinear::new(vec![0.0; out * inp], out, inp).unwrap())
    };
    let err = MultiHeadAttention::new(
        c,
        linear(32, 24),
        linear(8, 24),
        linear(16, 24),
        linear(24, 32),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            MhaError::ProjectionShape {
                projection: "k",
                found_out: 8,
                expected_out: 16,
                ..
            }
        ),
        "{err}"
    );
    let err = MultiHeadAttention::new(
        config(4, 3, 8),
        linear(32, 24),
        linear(24, 24),
        linear(24, 24),
        linear(24, 32),
    )
    .unwrap_err();
    assert_eq!(
        err,
        MhaError::Attention(AttendError::HeadsNotDivisible {
            n_heads: 4,
            n_kv_heads: 3
        })
    );

    let err = w.layer().with_rope(rope(4)).unwrap_err();
    assert_eq!(
        err,
        MhaError::RopeHeadDim {
            rope_head_dim: 4,
            head_dim: 8
        }
    );

    let mut layer = w.layer();
    let mut out = vec![0.0; 2 * c.hidden];
    let err = layer
        .forward(&vec![0.0; 2 * c.hidden - 1], &[0, 1], &mut out)
        .unwrap_err();
    assert_eq!(
        err,
        MhaError::BufferLength {
            name: "x",
            found: 47,
            expected: 48
        }
    );

    let config = KvConfig::new(c.n_kv_heads, c.head_dim, KvDtype::F32);
    let mut cache = make_cache(CacheKind::Contiguous, config, 2);
    let x = vec![0.1; c.hidden];
    let mut out = vec![0.0; c.hidden];
    let err = layer
        .forward_cached(&x, &[0], cache.as_mut(), SeqId(9), &mut out)
        .unwrap_err();
    assert_eq!(
        err,
        MhaError::Cache(KvError::SequenceNotFound { seq: SeqId(9) })
    );

    // A full cache rejects the append before anything changes.
    let x3 = vec![0.1; 3 * c.hidden];
    let mut out3 = vec![0.0; 3 * c.hidden];
    let err = layer
        .forward_cached(&x3, &[0, 1, 2], cache.as_mut(), SeqId(0), &mut out3)
        .unwrap_err();
    assert!(
        matches!(err, MhaError::Cache(KvError::CapacityExceeded { .. })),
        "{err}"
    );
    assert_eq!(cache.seq_len(SeqId(0)).unwrap(), 0);
}
