//! RoPE against a float64 twin written from the Hugging Face definitions, plus properties.

use attend::rope::{
    inverse_frequencies, Rope, RopeConfig, RopeError, RopeLayout, RopeScaling, YarnParams,
};
use proptest::prelude::*;
use std::f64::consts::PI;

/// Output tolerance against the f64 twin for inputs in [-1, 1]. The table entries are f32
/// (relative rounding 6e-8) and each output is two f32 products and a sum, so the error is
/// a few 1e-7. The bound 2e-6 leaves room for attention factors up to about 2.
const TOLERANCE: f64 = 2e-6;

// ---- the slow twin -------------------------------------------------------------------

/// `inv_freq` and attention factor in f64, structured as the Hugging Face compute
/// functions in `modeling_rope_utils.py` are, one array operation per line.
fn twin_inv_freq(config: &RopeConfig, seq_len: usize) -> (Vec<f64>, f64) {
    let dim = config.rotary_dim as f64;
    let exponents: Vec<f64> = (0..config.rotary_dim)
        .step_by(2)
        .map(|j| j as f64 / dim)
        .collect();
    let default =
        |base: f64| -> Vec<f64> { exponents.iter().map(|e| 1.0 / base.powf(*e)).collect() };
    let base = config.base;
    match &config.scaling {
        RopeScaling::None => (default(base), 1.0),
        RopeScaling::Linear { factor } => (default(base).iter().map(|f| f / factor).collect(), 1.0),
        RopeScaling::DynamicNtk {
            factor,
            max_position_embeddings,
        } => {
            let m = *max_position_embeddings;
            let seq_len = if seq_len > m { seq_len } else { m } as f64;
            let b = base * ((factor * seq_len / m as f64) - (factor - 1.0)).powf(dim / (dim - 2.0));
            (default(b), 1.0)
        }
        RopeScaling::Yarn(p) => {
            let mscale = |scale: f64, m: f64| {
                if scale <= 1.0 {
                    1.0
                } else {
                    0.1 * m * scale.ln() + 1.0
                }
            };
            let attention = match (p.attention_factor, p.mscale, p.mscale_all_dim) {
                (Some(a), _, _) => a,
                (None, Some(m), Some(ma)) if m != 0.0 && ma != 0.0 => {
                    mscale(p.factor, m) / mscale(p.factor, ma)
                }
                _ => mscale(p.factor, 1.0),
            };
            let find_dim = |rot: f64| {
                (dim * ((p.original_max_position_embeddings as f64) / (rot * 2.0 * PI)).ln())
                    / (2.0 * base.ln())
            };
            let (mut low, mut high) = (find_dim(p.beta_fast), find_dim(p.beta_slow));
            if p.truncate {
                low = low.floor();
                high = high.ceil();
            }
            let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
            if low == high {
                high += 0.001;
            }
            let pos_freqs: Vec<f64> = exponents.iter().map(|e| base.powf(*e)).collect();
            let extra: Vec<f64> = pos_freqs.iter().map(|f| 1.0 / f).collect();
            let inter: Vec<f64> = pos_freqs.iter().map(|f| 1.0 / (p.factor * f)).collect();
            let ramp: Vec<f64> = (0..exponents.len())
                .map(|i| ((i as f64 - low) / (high - low)).clamp(0.0, 1.0))
                .collect();
            let extra_factor: Vec<f64> = ramp.iter().map(|r| 1.0 - r).collect();
            let inv = (0..exponents.len())
                .map(|i| inter[i] * (1.0 - extra_factor[i]) + extra[i] * extra_factor[i])
                .collect();
            (inv, attention)
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let old = *original_max_position_embeddings as f64;
            let low_wl = old / low_freq_factor;
            let high_wl = old / high_freq_factor;
            let inv = default(base);
            let wavelen: Vec<f64> = inv.iter().map(|f| 2.0 * PI / f).collect();
            // torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
            let llama: Vec<f64> = (0..inv.len())
                .map(|i| {
                    if wavelen[i] > low_wl {
                        inv[i] / factor
                    } else {
                        inv[i]
                    }
                })
                .collect();
            let smooth: Vec<f64> = wavelen
                .iter()
                .map(|w| (old / w - low_freq_factor) / (high_freq_factor - low_freq_factor))
                .collect();
            let smoothed: Vec<f64> = (0..inv.len())
                .map(|i| (1.0 - smooth[i]) * llama[i] / factor + smooth[i] * llama[i])
                .collect();
            let out = (0..inv.len())
                .map(|i| {
                    let medium = wavelen[i] >= high_wl && wavelen[i] <= low_wl;
                    if medium {
                        smoothed[i]
                    } else {
                        llama[i]
                    }
                })
                .collect();
            (out, 1.0)
        }
        RopeScaling::LongRope {
            short_factor,
            long_factor,
            factor,
            original_max_position_embeddings,
            attention_factor,
        } => {
            let ext = if seq_len > *original_max_position_embeddings {
                long_factor
            } else {
                short_factor
            };
            let inv = exponents
                .iter()
                .zip(ext)
                .map(|(e, x)| 1.0 / (x * base.powf(*e)))
                .collect();
            let attention = attention_factor.unwrap_or(if *factor <= 1.0 {
                1.0
            } else {
                (1.0 + factor.ln() / (*original_max_position_embeddings as f64).ln()).sqrt()
            });
            (inv, attention)
        }
    }
}

/// Rotates `x: [tokens, n_heads, head_dim]` in f64 with the given frequencies.
fn twin_rotate(
    config: &RopeConfig,
    inv: &[f64],
    attention: f64,
    x: &[f32],
    n_heads: usize,
    positions: &[u32],
) -> Vec<f64> {
    let head_dim = config.head_dim;
    let half = config.rotary_dim / 2;
    let mut out: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for (t, &p) in positions.iter().enumerate() {
        for h in 0..n_heads {
            let row = &mut out[(t * n_heads + h) * head_dim..][..head_dim];
            for (i, freq) in inv.iter().enumerate() {
                let (ia, ib) = match config.layout {
                    RopeLayout::HalfSplit => (i, i + half),
                    RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                };
                let angle = p as f64 * freq;
                let (c, s) = (angle.cos() * attention, angle.sin() * attention);
                let (a, b) = (row[ia], row[ib]);
                row[ia] = a * c - b * s;
                row[ib] = b * c + a * s;
            }
        }
    }
    out
}

fn test_input(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            (((i as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(seed.wrapping_mul(40503))
                >> 8)
                % 2001) as f32
                / 1000.0
                - 1.0
        })
        .collect()
}

fn assert_close(actual: &[f32], expected: &[f64], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (*a as f64 - e).abs() <= TOLERANCE,
            "{what}: element {i} is {a}, expected {e}"
        );
    }
}

fn all_scalings(half: usize) -> Vec<(&'static str, RopeScaling)> {
    let mut yarn_mscale = YarnParams::new(4.0, 64);
    yarn_mscale.mscale = Some(0.707);
    yarn_mscale.mscale_all_dim = Some(1.0);
    let mut yarn_untruncated = YarnParams::new(8.0, 128);
    yarn_untruncated.truncate = false;
    yarn_untruncated.beta_fast = 16.0;
    yarn_untruncated.beta_slow = 2.0;
    vec![
        ("none", RopeScaling::None),
        ("linear", RopeScaling::Linear { factor: 2.5 }),
        (
            "dynamic",
            RopeScaling::DynamicNtk {
                factor: 2.0,
                max_position_embeddings: 64,
            },
        ),
        ("yarn", RopeScaling::Yarn(YarnParams::new(4.0, 64))),
        ("yarn mscale", RopeScaling::Yarn(yarn_mscale)),
        ("yarn untruncated", RopeScaling::Yarn(yarn_untruncated)),
        (
            "llama3",
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64,
            },
        ),
        (
            "longrope",
            RopeScaling::LongRope {
                short_factor: (0..half).map(|i| 1.0 + 0.1 * i as f64).collect(),
                long_factor: (0..half).map(|i| 2.0 + 0.5 * i as f64).collect(),
                factor: 4.0,
                original_max_position_embeddings: 64,
                attention_factor: None,
            },
        ),
    ]
}

// ---- tests ---------------------------------------------------------------------------

#[test]
fn hand_computed_rotation() {
    // head_dim 4, base 100: theta = [1, 0.1]. Half-split pairs are (0, 2) and (1, 3).
    let mut rope = Rope::new(RopeConfig::new(4, 100.0, RopeLayout::HalfSplit)).unwrap();
    let mut x = vec![1.0f32, 0.0, 0.0, 1.0];
    rope.apply(&mut x, 1, &[1]).unwrap();
    let expected = [1f64.cos(), -(0.1f64.sin()), 1f64.sin(), 0.1f64.cos()];
    assert_close(&x, &expected, "half-split");

    // Interleaved pairs are (0, 1) and (2, 3).
    let mut rope = Rope::new(RopeConfig::new(4, 100.0, RopeLayout::Interleaved)).unwrap();
    let mut x = vec![1.0f32, 0.0, 0.0, 1.0];
    rope.apply(&mut x, 1, &[2]).unwrap();
    let expected = [2f64.cos(), 2f64.sin(), -(0.2f64.sin()), 0.2f64.cos()];
    assert_close(&x, &expected, "interleaved");
}

#[test]
fn every_variant_and_layout_matches_twin() {
    for layout in [RopeLayout::HalfSplit, RopeLayout::Interleaved] {
        // Full and partial rotary, including a head_dim off every SIMD width.
        for (head_dim, rotary_dim) in [(16, 16), (10, 6), (64, 64), (7, 4)] {
            for (name, scaling) in all_scalings(rotary_dim / 2) {
                let config = RopeConfig {
                    head_dim,
                    rotary_dim,
                    base: 10000.0,
                    layout,
                    scaling,
                    max_position: None,
                };
                let n_heads = 3;
                // Positions stay below 64, so dynamic NTK and LongRoPE use their trained set.
                let positions = [0u32, 1, 2, 17, 63, 5, 0];
                let x = test_input(positions.len() * n_heads * head_dim, 7);
                let mut rotated = x.clone();
                let mut rope = Rope::new(config.clone()).unwrap();
                rope.apply(&mut rotated, n_heads, &positions).unwrap();

                let (inv, attention) = twin_inv_freq(&config, 64);
                let expected = twin_rotate(&config, &inv, attention, &x, n_heads, &positions);
                assert_close(
                    &rotated,
                    &expected,
                    &format!("{name} {layout:?} {head_dim}/{rotary_dim}"),
                );
            }
        }
    }
}

#[test]
fn inverse_frequencies_match_twin() {
    for (name, scaling) in all_scalings(32) {
        let config = RopeConfig {
            head_dim: 64,
            rotary_dim: 64,
            base: 500000.0,
            layout: RopeLayout::HalfSplit,
            scaling,
            max_position: None,
        };
        for seq_len in [1, 64, 65, 1000] {
            let (inv, attention) = inverse_frequencies(&config, seq_len).unwrap();
            let (twin, twin_attention) = twin_inv_freq(&config, seq_len);
            assert!(
                (attention - twin_attention).abs() <= 1e-12,
                "{name}: attention {attention} vs {twin_attention}"
            );
            for (i, (a, b)) in inv.iter().zip(&twin).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-12 * b.abs(),
                    "{name} seq_len {seq_len}: inv_freq[{i}] {a} vs {b}"
                );
            }
        }
    }
}

fn frequencies(head_dim: usize, scaling: RopeScaling, seq_len: usize) -> (Vec<f64>, f64) {
    let config = RopeConfig {
        scaling,
        ..RopeConfig::new(head_dim, 10000.0, RopeLayout::HalfSplit)
    };
    inverse_frequencies(&config, seq_len).unwrap()
}

fn assert_frequencies(actual: &[f64], expected: &[f64], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= 1e-12 * e.abs(),
            "{what}: inv_freq[{i}] is {a}, expected {e}"
        );
    }
}

#[test]
fn hand_computed_frequencies() {
    // Base 10000. Dim 8 has plain frequencies 10000^(-i/4) = 1, 0.1, 0.01, 0.001; dim 4 has
    // 1 and 0.01.

    // YaRN, factor 4, trained on 64 tokens: the correction dims are
    // 8 ln(64 / (32 * 2 pi)) / (2 ln 10000) = -0.50 (floor -1, clamped to 0) and
    // 8 ln(64 / (2 pi)) / (2 ln 10000) = 1.01 (ceil 2). The ramp (i - 0) / 2 gives
    // extrapolation weights 1, 0.5, 0, 0, so inv_freq = 1, 0.5 * 0.1 / 4 + 0.5 * 0.1,
    // 0.01 / 4, 0.001 / 4.
    let (inv, attention) = frequencies(8, RopeScaling::Yarn(YarnParams::new(4.0, 64)), 0);
    assert_frequencies(&inv, &[1.0, 0.0625, 0.0025, 0.00025], "yarn");
    assert!((attention - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-15);

    // Dynamic NTK, factor 2, trained on 32, at 64 tokens: base' = 10000 * (2 * 64 / 32 - 1)^(4 / 2)
    // = 90000, so the second frequency is 1 / 300.
    let dynamic = RopeScaling::DynamicNtk {
        factor: 2.0,
        max_position_embeddings: 32,
    };
    assert_frequencies(
        &frequencies(4, dynamic.clone(), 64).0,
        &[1.0, 1.0 / 300.0],
        "dynamic at 64",
    );
    assert_frequencies(
        &frequencies(4, dynamic, 20).0,
        &[1.0, 0.01],
        "dynamic within training",
    );

    // Llama 3, factor 8, low 1, high 4, trained on 1000: wavelengths 2 pi and 200 pi. The
    // first is below 1000 / 4 and stays; the second lies between 250 and 1000 and blends
    // with smooth = (1000 / (200 pi) - 1) / 3.
    let smooth = (1000.0 / (200.0 * PI) - 1.0) / 3.0;
    let (inv, _) = frequencies(
        4,
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 1000,
        },
        0,
    );
    assert_frequencies(
        &inv,
        &[1.0, (1.0 - smooth) * 0.01 / 8.0 + smooth * 0.01],
        "llama3",
    );
    // Trained on 100 instead, 200 pi exceeds 100 / 1 and is divided by the factor.
    let (inv, _) = frequencies(
        4,
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 100,
        },
        0,
    );
    assert_frequencies(&inv, &[1.0, 0.01 / 8.0], "llama3 low frequency");

    // LongRoPE trained on 16 with factor 2: attention sqrt(1 + ln 2 / ln 16) = sqrt(1.25).
    let longrope = RopeScaling::LongRope {
        short_factor: vec![1.0, 2.0],
        long_factor: vec![4.0, 8.0],
        factor: 2.0,
        original_max_position_embeddings: 16,
        attention_factor: None,
    };
    let (inv, attention) = frequencies(4, longrope.clone(), 16);
    assert_frequencies(&inv, &[1.0, 0.005], "longrope short");
    assert!((attention - 1.25f64.sqrt()).abs() < 1e-15);
    assert_frequencies(
        &frequencies(4, longrope, 17).0,
        &[0.25, 0.00125],
        "longrope long",
    );
}

#[test]
fn yarn_attention_factor_hand_values() {
    // 0.1 * ln(4) + 1 without mscale; ratio of the two mscales with it.
    let config = |p: YarnParams| RopeConfig {
        scaling: RopeScaling::Yarn(p),
        ..RopeConfig::new(8, 10000.0, RopeLayout::HalfSplit)
    };
    let (_, a) = inverse_frequencies(&config(YarnParams::new(4.0, 64)), 0).unwrap();
    assert!((a - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-15);
    let mut p = YarnParams::new(4.0, 64);
    p.mscale = Some(1.0);
    p.mscale_all_dim = Some(1.0);
    let (_, a) = inverse_frequencies(&config(p), 0).unwrap();
    assert_eq!(a, 1.0);
}

#[test]
fn linear_scaling_divides_positions() {
    // Linear scaling with factor 2 at position 2p equals plain RoPE at position p.
    let plain = RopeConfig::new(8, 10000.0, RopeLayout::HalfSplit);
    let scaled = RopeConfig {
        scaling: RopeScaling::Linear { factor: 2.0 },
        ..plain.clone()
    };
    let x = test_input(8, 3);
    let mut a = x.clone();
    let mut b = x.clone();
    Rope::new(plain).unwrap().apply(&mut a, 1, &[21]).unwrap();
    Rope::new(scaled).unwrap().apply(&mut b, 1, &[42]).unwrap();
    for (p, q) in a.iter().zip(&b) {
        assert!((p - q).abs() <= 1e-6, "{p} vs {q}");
    }
}

#[test]
fn restarting_positions_repeat_rotation() {
    // A packed batch of two sequences: positions 0, 1, 2 then 0, 1 again.
    let mut rope = Rope::new(RopeConfig::new(6, 10000.0, RopeLayout::Interleaved)).unwrap();
    let token = test_input(2 * 6, 11);
    let mut x: Vec<f32> = token.iter().cycle().take(5 * 12).copied().collect();
    rope.apply(&mut x, 2, &[0, 1, 2, 0, 1]).unwrap();
    assert_eq!(&x[0..12], &x[36..48], "position 0 twice");
    assert_eq!(&x[12..24], &x[48..60], "position 1 twice");
    assert_eq!(&x[0..12], &token[..], "position 0 is the identity");
}

#[test]
fn partial_rotary_leaves_tail_untouched() {
    let config = RopeConfig {
        rotary_dim: 4,
        ..RopeConfig::new(10, 10000.0, RopeLayout::HalfSplit)
    };
    let mut rope = Rope::new(config).unwrap();
    let x = test_input(3 * 2 * 10, 5);
    let mut y = x.clone();
    rope.apply(&mut y, 2, &[3, 4, 5]).unwrap();
    for row in 0..6 {
        assert_eq!(
            &y[row * 10 + 4..row * 10 + 10],
            &x[row * 10 + 4..row * 10 + 10],
            "row {row}"
        );
        assert_ne!(
            &y[row * 10..row * 10 + 4],
            &x[row * 10..row * 10 + 4],
            "row {row} rotated"
        );
    }
}

#[test]
fn apply_qk_matches_separate_calls() {
    let mut rope = Rope::new(RopeConfig::new(8, 10000.0, RopeLayout::HalfSplit)).unwrap();
    let positions = [4u32, 9];
    let q = test_input(2 * 6 * 8, 1);
    let k = test_input(2 * 2 * 8, 2);
    let (mut q1, mut k1) = (q.clone(), k.clone());
    rope.apply_qk(&mut q1, 6, &mut k1, 2, &positions).unwrap();
    let (mut q2, mut k2) = (q, k);
    rope.apply(&mut q2, 6, &positions).unwrap();
    rope.apply(&mut k2, 2, &positions).unwrap();
    assert_eq!(q1, q2);
    assert_eq!(k1, k2);
}

#[test]
fn table_extension_is_exact() {
    // Growing the table step by step gives the same bits as building it at once.
    let config = RopeConfig::new(16, 10000.0, RopeLayout::HalfSplit);
    let mut grown = Rope::new(config.clone()).unwrap();
    let x = test_input(16, 9);
    for p in [0u32, 10, 100, 1000] {
        let mut y = x.clone();
        grown.apply(&mut y, 1, &[p]).unwrap();
    }
    assert!(grown.table_len() >= 1001);
    let mut fresh = Rope::new(config).unwrap();
    let (mut a, mut b) = (x.clone(), x);
    grown.apply(&mut a, 1, &[999]).unwrap();
    fresh.apply(&mut b, 1, &[999]).unwrap();
    assert_eq!(a, b);
}

#[test]
fn dynamic_ntk_grows_and_resets() {
    let config = RopeConfig {
        scaling: RopeScaling::DynamicNtk {
            factor: 2.0,
            max_position_embeddings: 32,
        },
        ..RopeConfig::new(8, 10000.0, RopeLayout::HalfSplit)
    };
    let mut rope = Rope::new(config.clone()).unwrap();
    let trained = rope.inv_freq().to_vec();
    let x = test_input(8, 4);

    // Within the trained length, plain frequencies.
    let mut y = x.clone();
    rope.apply(&mut y, 1, &[31]).unwrap();
    assert_eq!(rope.inv_freq(), &trained[..]);

    // Position 99: seq_len 100 > 32, the base grows.
    let mut y = x.clone();
    rope.apply(&mut y, 1, &[99]).unwrap();
    let (twin, _) = twin_inv_freq(&config, 100);
    assert_close(
        &y,
        &twin_rotate(&config, &twin, 1.0, &x, 1, &[99]),
        "dynamic at 100",
    );

    // A shorter call that is still past 32 keeps the grown frequencies, as Hugging Face does.
    let mut y = x.clone();
    rope.apply(&mut y, 1, &[50]).unwrap();
    assert_close(
        &y,
        &twin_rotate(&config, &twin, 1.0, &x, 1, &[50]),
        "dynamic kept",
    );

    // Below the trained length, back to the trained frequencies.
    let mut y = x.clone();
    rope.apply(&mut y, 1, &[3]).unwrap();
    assert_eq!(rope.inv_freq(), &trained[..]);
}

#[test]
fn longrope_switches_factor_lists() {
    let config = RopeConfig {
        scaling: RopeScaling::LongRope {
            short_factor: vec![1.0, 1.5],
            long_factor: vec![3.0, 5.0],
            factor: 2.0,
            original_max_position_embeddings: 16,
            attention_factor: Some(1.25),
        },
        ..RopeConfig::new(4, 10000.0, RopeLayout::HalfSplit)
    };
    let mut rope = Rope::new(config.clone()).unwrap();
    let x = test_input(2 * 4, 8);
    for (positions, seq_len) in [([3u32, 15], 16), ([3, 16], 17), ([2, 0], 3)] {
        let mut y = x.clone();
        rope.apply(&mut y, 1, &positions).unwrap();
        let (inv, attention) = twin_inv_freq(&config, seq_len);
        assert_eq!(attention, 1.25);
        assert_close(
            &y,
            &twin_rotate(&config, &inv, attention, &x, 1, &positions),
            "longrope",
        );
    }
}

#[test]
fn empty_and_single_inputs() {
    let mut rope = Rope::new(RopeConfig::new(2, 10000.0, RopeLayout::HalfSplit)).unwrap();
    rope.apply(&mut [], 4, &[]).unwrap();
    let mut x = [0.5f32, -0.5];
    rope.apply(&mut x, 1, &[0]).unwrap();
    assert_eq!(x, [0.5, -0.5]);
}

#[test]
fn invalid_configs_are_errors() {
    let base = RopeConfig::new(8, 10000.0, RopeLayout::HalfSplit);
    let odd = RopeConfig {
        rotary_dim: 5,
        ..base.clone()
    };
    assert_eq!(
        Rope::new(odd).unwrap_err(),
        RopeError::InvalidRotaryDim { rotary_dim: 5 }
    );
    let zero = RopeConfig {
        rotary_dim: 0,
        ..base.clone()
    };
    assert_eq!(
        Rope::new(zero).unwrap_err(),
        RopeError::InvalidRotaryDim { rotary_dim: 0 }
    );
    let wide = RopeConfig {
        rotary_dim: 10,
        ..base.clone()
    };
    assert_eq!(
        Rope::new(wide).unwrap_err(),
        RopeError::RotaryDimTooLarge {
            rotary_dim: 10,
            head_dim: 8
        }
    );
    for bad_base in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let config = RopeConfig {
            base: bad_base,
            ..base.clone()
        };
        assert!(
            matches!(
                Rope::new(config).unwrap_err(),
                RopeError::InvalidBase { .. }
            ),
            "base {bad_base}"
        );
    }
    let linear = RopeConfig {
        scaling: RopeScaling::Linear { factor: 0.0 },
        ..base.clone()
    };
    assert!(matches!(
        Rope::new(linear).unwrap_err(),
        RopeError::InvalidScaling { name: "factor", .. }
    ));
    let llama3 = RopeConfig {
        scaling: RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 4.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        },
        ..base.clone()
    };
    assert!(matches!(
        Rope::new(llama3).unwrap_err(),
        RopeError::InvalidScaling {
            name: "high_freq_factor",
            ..
        }
    ));
    let longrope = RopeConfig {
        scaling: RopeScaling::LongRope {
            short_factor: vec![1.0; 3],
            long_factor: vec![1.0; 4],
            factor: 2.0,
            original_max_position_embeddings: 16,
            attention_factor: None,
        },
        ..base.clone()
    };
    assert_eq!(
        Rope::new(longrope).unwrap_err(),
        RopeError::FactorListLength {
            name: "short_factor",
            len: 3,
            expected: 4
        }
    );
    let dynamic_one_pair = RopeConfig {
        head_dim: 2,
        rotary_dim: 2,
        scaling: RopeScaling::DynamicNtk {
            factor: 2.0,
            max_position_embeddings: 16,
        },
        ..base.clone()
    };
    assert_eq!(
        Rope::new(dynamic_one_pair).unwrap_err(),
        RopeError::InvalidRotaryDim { rotary_dim: 2 }
    );
    let yarn_base_one = RopeConfig {
        base: 1.0,
        scaling: RopeScaling::Yarn(YarnParams::new(2.0, 16)),
        ..base
    };
    assert!(matches!(
        Rope::new(yarn_base_one).unwrap_err(),
        RopeError::InvalidBase { .. }
    ));
}

#[test]
fn invalid_inputs_are_errors() {
    let config = RopeConfig {
        max_position: Some(100),
        ..RopeConfig::new(4, 10000.0, RopeLayout::HalfSplit)
    };
    let mut rope = Rope::new(config).unwrap();
    let mut x = vec![0.0f32; 8];
    assert_eq!(
        rope.apply(&mut x, 1, &[5, 100]).unwrap_err(),
        RopeError::PositionOutOfRange {
            position: 100,
            max_position: 100
        }
    );
    rope.apply(&mut x, 1, &[5, 99]).unwrap();
    assert!(rope.table_len() <= 100, "table bounded by max_position");
    assert!(matches!(
        rope.apply(&mut x, 1, &[5]).unwrap_err(),
        RopeError::ShapeMismatch {
            name: "x",
            len: 8,
            tokens: 1,
            ..
        }
    ));
    let mut k = vec![0.0f32; 4];
    assert!(matches!(
        rope.apply_qk(&mut x, 1, &mut k, 1, &[1, 2]).unwrap_err(),
        RopeError::ShapeMismatch { name: "k", .. }
    ));
}

#[test]
fn unbounded_table_allocation_is_error() {
    // The largest u32 position needs a table of 2^32 rows of 2^20 pairs, which cannot fit.
    let mut rope = Rope::new(RopeConfig::new(1 << 21, 10000.0, RopeLayout::HalfSplit)).unwrap();
    let mut x = vec![0.0f32; 1 << 21];
    assert!(matches!(
        rope.apply(&mut x, 1, &[u32::MAX]).unwrap_err(),
        RopeError::TableAllocation { .. }
    ));
}

fn rotated_dot(rope: &mut Rope, q: &[f32], k: &[f32], q_pos: u32, k_pos: u32) -> f64 {
    let (mut q, mut k) = (q.to_vec(), k.to_vec());
    rope.apply(&mut q, 1, &[q_pos]).unwrap();
    rope.apply(&mut k, 1, &[k_pos]).unwrap();
    q.iter().zip(&k).map(|(a, b)| *a as f64 * *b as f64).sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// q(m) . k(n) depends only on m - n for every variant with a fixed frequency set.
    #[test]
    fn dot_depends_on_relative_position(
        half in 1usize..12,
        interleaved in any::<bool>(),
        variant in 0usize..4,
        q_pos in 0u32..2000,
        k_pos in 0u32..2000,
        shift in 0u32..2000,
        seed in any::<u32>(),
    ) {
        let head_dim = 2 * half;
        let scaling = match variant {
            0 => RopeScaling::None,
            1 => RopeScaling::Linear { factor: 3.0 },
            2 => RopeScaling::Yarn(YarnParams::new(4.0, 256)),
            _ => RopeScaling::Llama3 {
                factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0,
                original_max_position_embeddings: 256,
            },
        };
        let layout = if interleaved { RopeLayout::Interleaved } else { RopeLayout::HalfSplit };
        let config = RopeConfig { scaling, ..RopeConfig::new(head_dim, 10000.0, layout) };
        let mut rope = Rope::new(config).unwrap();
        let q = test_input(head_dim, seed);
        let k = test_input(head_dim, seed ^ 0x5555);
        let a = rotated_dot(&mut rope, &q, &k, q_pos, k_pos);
        let b = rotated_dot(&mut rope, &q, &k, q_pos + shift, k_pos + shift);
        // Each of up to 22 products carries the f32 table error (about 1e-7 relative per
        // factor, times an attention factor up to 1.14 squared).
        prop_assert!((a - b).abs() <= 1e-5, "{} vs {}", a, b);
    }
}
