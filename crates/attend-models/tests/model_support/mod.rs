//! Shared helpers of the end-to-end model tests: the real model files, the
//! reference fixtures, and comparisons of logits with a written tolerance.
//!
//! The fixtures come from `scripts/reference/` (see its README): llama.cpp
//! through llama-cpp-python, and exact float64 numpy forward passes over the
//! same GGUF weights. attend quantizes activations to 8 bits before its
//! quantized products, as llama.cpp does, so it sits about 0.15 logits away from
//! the exact references on average (measured for llama.cpp by the fixture
//! scripts: mean 0.16, p99 0.56 on SmolLM2). The tolerances below follow from
//! that, with the reason beside each.

#![allow(dead_code)]

use std::path::PathBuf;

use attend_models::{Decoder, Logits, Session};
use serde_json::Value;

/// The model folder: `$ATTEND_MODELS`, else `~/.cache/attend/models`.
pub fn model_path(file: &str) -> PathBuf {
    let dir = std::env::var_os("ATTEND_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/attend/models")
        });
    let path = dir.join(file);
    assert!(
        path.exists(),
        "model file {} not found; run scripts/fetch-models.sh (or set ATTEND_MODELS)",
        path.display()
    );
    path
}

pub fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("an array of ids")
        .iter()
        .map(|v| v.as_u64().expect("an id") as u32)
        .collect()
}

pub fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .expect("an array of numbers")
        .iter()
        .map(|v| v.as_f64().expect("a number") as f32)
        .collect()
}

/// Index of the largest value.
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

pub fn logsumexp(row: &[f32]) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    f64::from(max)
        + row
            .iter()
            .map(|&v| f64::from(v - max).exp())
            .sum::<f64>()
            .ln()
}

/// What the tests keep of one position's logits: the full row is too large to
/// hold for hundreds of positions of a 262k vocabulary.
pub struct RowSummary {
    pub argmax: u32,
    /// Our logits at the reference's top-5 ids.
    pub at_reference_top5: Vec<f32>,
    pub logsumexp: f64,
    /// Our logits at ids `0, stride, 2 * stride, ...`.
    pub samples: Vec<f32>,
}

/// Runs `ids` teacher-forced through a fresh session in chunks of `chunk`
/// tokens and summarises each position's logits.
pub fn teacher_forced(
    decoder: &Decoder,
    session: &mut Session,
    ids: &[u32],
    reference_top5: &[Vec<u32>],
    sample_stride: usize,
    chunk: usize,
) -> Vec<RowSummary> {
    let vocab = decoder.config().vocab;
    let mut rows = Vec::with_capacity(ids.len());
    for (chunk_idx, piece) in ids.chunks(chunk).enumerate() {
        let logits = decoder
            .forward(session, piece, Logits::All)
            .expect("forward pass");
        for (i, row) in logits.chunks_exact(vocab).enumerate() {
            let position = chunk_idx * chunk + i;
            rows.push(RowSummary {
                argmax: argmax(row),
                at_reference_top5: reference_top5[position]
                    .iter()
                    .map(|&id| row[id as usize])
                    .collect(),
                logsumexp: logsumexp(row),
                samples: row.iter().step_by(sample_stride).copied().collect(),
            });
        }
    }
    rows
}

/// Reference top-1 margins: the gap between the two largest reference logits.
pub fn margins(top5_logits: &[Vec<f32>]) -> Vec<f32> {
    top5_logits.iter().map(|row| row[0] - row[1]).collect()
}

/// Fraction of positions whose argmax agrees with `reference_top1`, counting
/// only positions where the reference margin exceeds `min_margin`.
pub fn agreement(
    ours: &[RowSummary],
    reference_top1: &[u32],
    margins: &[f32],
    min_margin: f32,
) -> (usize, usize) {
    let mut agree = 0;
    let mut total = 0;
    for ((row, &expected), &margin) in ours.iter().zip(reference_top1).zip(margins) {
        if margin > min_margin {
            total += 1;
            agree += usize::from(row.argmax == expected);
        }
    }
    (agree, total)
}

/// Greedy decoding of `max_new` tokens after `prompt` in a fresh session.
pub fn greedy(
    decoder: &Decoder,
    session: &mut Session,
    prompt: &[u32],
    max_new: usize,
    eog: &[u32],
) -> Vec<u32> {
    let mut out = Vec::new();
    let mut logits = Vec::new();
    for piece in prompt.chunks(512) {
        logits = decoder
            .forward(session, piece, Logits::Last)
            .expect("prefill");
    }
    for _ in 0..max_new {
        let id = argmax(&logits);
        out.push(id);
        if eog.contains(&id) {
            break;
        }
        logits = decoder
            .forward(session, &[id], Logits::Last)
            .expect("decode");
    }
    out
}

/// Checks that `ours` equals `expected` up to the first step whose reference
/// top-1 margin is below `tie_margin`: past a near-tie, two correct
/// implementations may pick different tokens and then diverge.
pub fn assert_greedy_prefix(
    name: &str,
    ours: &[u32],
    expected: &[u32],
    margins: &[f32],
    tie_margin: f32,
) {
    let compared = margins
        .iter()
        .position(|&m| m < tie_margin)
        .unwrap_or(expected.len())
        .min(expected.len());
    assert_eq!(
        &ours[..compared.min(ours.len())],
        &expected[..compared],
        "{name}: greedy ids differ within the first {compared} steps (before any near-tie)"
    );
}

/// Tolerances of [`check_teacher_forced`], each with its reason at the call site.
pub struct TeacherForcedLimits {
    /// Tokens per forward call; later chunks attend over a non-empty cache.
    pub chunk: usize,
    /// Storage type of the session's caches.
    pub kv_dtype: attend::kv::KvDtype,
    /// Minimum percentage of top-1 agreement where the reference margin exceeds 0.2.
    pub agree_past_0_2_pct: usize,
    /// Minimum percentage of top-1 agreement over all positions.
    pub agree_overall_pct: usize,
    /// Largest difference at the reference's top-5 ids.
    pub top5: f32,
    /// Largest mean absolute difference over a sampled row.
    pub sampled_mean: f32,
    /// Largest log-sum-exp difference of a sampled row.
    pub logsumexp: f64,
}

/// Returns the limits for [`Activations::F32`](attend_models::quant::Activations::F32)
/// runs with an f32 cache. The only differences from the float64 reference are f32
/// rounding and summation order, so only the closest ties could flip. Logits come
/// within 0.01 of the reference (attend measured at most 6e-4 on both models).
pub fn f32_activation_limits(chunk: usize) -> TeacherForcedLimits {
    TeacherForcedLimits {
        chunk,
        kv_dtype: attend::kv::KvDtype::F32,
        agree_past_0_2_pct: 100,
        agree_overall_pct: 99,
        top5: 0.01,
        sampled_mean: 0.002,
        logsumexp: 0.01,
    }
}

/// Runs the fixture's text teacher-forced and compares every position with the
/// reference: top-1 agreement (always where the reference margin exceeds 0.5),
/// the top-5 logits, and the log-sum-exp and sampled logits of whole rows.
pub fn check_teacher_forced(decoder: &Decoder, fixture_name: &str, limits: &TeacherForcedLimits) {
    let reference = fixture(fixture_name);
    let tf = &reference["teacher_forced"];
    let ids = ids(&tf["ids"]);
    let top1 = self::ids(&tf["top1"]);
    let top5_ids: Vec<Vec<u32>> = tf["top5_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(self::ids)
        .collect();
    let top5_logits: Vec<Vec<f32>> = tf["top5_logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(floats)
        .collect();
    let margins = margins(&top5_logits);
    let sampled_rows = tf["rows"].as_array().unwrap();
    let stride = sampled_rows[0]["sample_stride"].as_u64().unwrap() as usize;

    let mut session = decoder.new_session(ids.len(), limits.kv_dtype).unwrap();
    let rows = teacher_forced(decoder, &mut session, &ids, &top5_ids, stride, limits.chunk);

    let (agree, total) = agreement(&rows, &top1, &margins, 0.5);
    assert_eq!(
        agree, total,
        "top-1 must agree wherever the reference margin exceeds 0.5"
    );
    let (agree, total) = agreement(&rows, &top1, &margins, 0.2);
    assert!(
        agree * 100 >= total * limits.agree_past_0_2_pct,
        "top-1 agreement {agree}/{total} where margin > 0.2"
    );
    let (agree, total) = agreement(&rows, &top1, &margins, f32::NEG_INFINITY);
    eprintln!("{fixture_name}: top-1 agreement {agree}/{total} overall");
    assert!(
        agree * 100 >= total * limits.agree_overall_pct,
        "top-1 agreement {agree}/{total} overall"
    );

    let mut worst = 0.0f32;
    for (row, expected) in rows.iter().zip(&top5_logits) {
        for (a, b) in row.at_reference_top5.iter().zip(expected) {
            worst = worst.max((a - b).abs());
        }
    }
    eprintln!("{fixture_name}: largest top-5 logit difference {worst}");
    assert!(
        worst <= limits.top5,
        "largest top-5 logit difference {worst}"
    );

    for row in sampled_rows {
        let position = row["position"].as_u64().unwrap() as usize;
        let ours = &rows[position];
        let lse = row["logsumexp"].as_f64().unwrap();
        assert!(
            (ours.logsumexp - lse).abs() <= limits.logsumexp,
            "position {position}: logsumexp {} vs {lse}",
            ours.logsumexp
        );
        let samples = floats(&row["sample_logits"]);
        let mean_abs: f32 = ours
            .samples
            .iter()
            .zip(&samples)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / samples.len() as f32;
        assert!(
            mean_abs <= limits.sampled_mean,
            "position {position}: mean |difference| {mean_abs}"
        );
    }
}

/// Decodes every greedy case of a llama.cpp fixture and checks the ids up to the
/// first near-tie (reference margin below 0.2, where llama.cpp and the exact
/// reference start to pick differently).
pub fn check_greedy_cases(decoder: &Decoder, fixture_name: &str, eog: &[u32]) {
    let reference = fixture(fixture_name);
    for case in reference["greedy"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let prompt = ids(&case["prompt_ids"]);
        let expected = ids(&case["generated_ids"]);
        let margins = floats(&case["top1_margins"]);
        let mut session = decoder
            .new_session(prompt.len() + expected.len() + 1, attend::kv::KvDtype::F16)
            .unwrap();
        let ours = greedy(decoder, &mut session, &prompt, expected.len(), eog);
        assert_greedy_prefix(name, &ours, &expected, &margins, 0.2);
    }
}

/// Checks two logit rows of one position computed along different paths: the
/// largest and mean absolute differences, and the argmax wherever `expected`
/// leads by more than 0.5.
pub fn assert_rows_close(
    position: usize,
    ours: &[f32],
    expected: &[f32],
    max_diff: f32,
    mean_diff: f32,
) {
    let diffs: Vec<f32> = ours
        .iter()
        .zip(expected)
        .map(|(a, b)| (a - b).abs())
        .collect();
    let worst = diffs.iter().fold(0.0f32, |m, &d| m.max(d));
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    assert!(
        worst < max_diff,
        "position {position}: max difference {worst}"
    );
    assert!(
        mean < mean_diff,
        "position {position}: mean difference {mean}"
    );
    let mut sorted = expected.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    if sorted[0] - sorted[1] > 0.5 {
        assert_eq!(argmax(ours), argmax(expected), "position {position}");
    }
}
