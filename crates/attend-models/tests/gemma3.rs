//! Gemma 3 270M Q4_K_M end to end: teacher-forced logits against an exact
//! float64 forward pass of the same weights (cross-checked against Hugging Face
//! transformers by the fixture script), greedy continuations against llama.cpp,
//! the sliding-window cache against a full cache, and the cache size against the
//! planner. Needs the model from `scripts/fetch-models.sh`.

mod model_support;

use attend::kv::{plan_kv_memory, KvDtype, KvPlanRequest};
use attend_models::quant::Activations;
use attend_models::{Decoder, Engine, Logits, SlidingCache};
use model_support::*;

const MODEL: &str = "gemma-3-270m-q4_k_m.gguf";

fn decoder() -> Decoder {
    Decoder::open(model_path(MODEL)).expect("load Gemma 3")
}

#[test]
fn config_follows_the_architecture() {
    let d = decoder();
    let c = d.config();
    assert_eq!(c.architecture, "gemma3");
    assert_eq!(
        (c.n_layers, c.hidden, c.n_heads, c.n_kv_heads, c.head_dim),
        (18, 640, 4, 1, 256)
    );
    assert_eq!(c.vocab, 262_144);
    let global: Vec<usize> = (0..c.n_layers)
        .filter(|&i| c.layers[i].window.is_none())
        .collect();
    assert_eq!(global, vec![5, 11, 17]);
    assert!(c.layers.iter().filter_map(|l| l.window).all(|w| w == 512));
    assert_eq!(c.ropes[0].base, 1_000_000.0);
    assert_eq!(c.ropes[1].base, 10_000.0);
    assert_eq!(c.query_scale, 1.0 / 16.0);
    assert_eq!(c.embed_scale, Some(640f32.sqrt()));
    assert!(c.qk_norm);
    assert!(c.post_norms);
    assert_eq!(c.final_softcap, None);
}

#[test]
fn f32_activations_match_exact_reference() {
    // attend measured 701 of 701 and a largest top-5 difference of 5e-4.
    let mut d = decoder();
    d.set_activations(Activations::F32);
    check_teacher_forced(&d, "gemma3_numpy.json", &f32_activation_limits(200));
}

/// Limits of the 8-bit-activation runs against the exact reference. The 701-token
/// text is longer than the 512-token window, and chunks of 200 make later chunks
/// attend through wrapped rolling caches. llama.cpp agrees with this reference on
/// 93.9% of top-1 overall and 99.0% where the margin exceeds 0.2. Its largest
/// top-5 difference is 1.32, its worst sampled row 0.57 and its worst log-sum-exp
/// 0.85, all at the last position, where attend measured a sampled mean of 0.91.
fn q8_limits(kv_dtype: KvDtype) -> TeacherForcedLimits {
    TeacherForcedLimits {
        chunk: 200,
        kv_dtype,
        agree_past_0_2_pct: 98,
        agree_overall_pct: 92,
        top5: 1.5,
        sampled_mean: 1.2,
        logsumexp: 1.0,
    }
}

#[test]
fn teacher_forced_matches_exact_reference() {
    // attend measured 95.0% overall and 100% where the margin exceeds 0.2.
    check_teacher_forced(&decoder(), "gemma3_numpy.json", &q8_limits(KvDtype::F32));
}

#[test]
fn bf16_cache_matches_exact_reference() {
    // On a CPU with bf16 dot products, prefill over a bf16 cache runs the attention
    // kernel on bf16 q, k and v (elsewhere the rows are widened to f32). attend
    // measured 94.6% overall and a largest top-5 difference of 1.13, against 95.0%
    // and 0.93 with an f32 cache.
    check_teacher_forced(&decoder(), "gemma3_numpy.json", &q8_limits(KvDtype::Bf16));
}

#[test]
fn greedy_matches_llamacpp_until_near_tie() {
    check_greedy_cases(&decoder(), "gemma3_llamacpp.json", &[1, 106]);
}

#[test]
fn rolling_cache_equals_full_cache_past_the_window() {
    // 700 tokens in chunks of 300, then 40 single tokens: the sliding layers' rolling
    // caches wrap several times. The full-cache session applies the same window
    // as a mask over every token it keeps.
    let reference = fixture("gemma3_numpy.json");
    let ids = ids(&reference["teacher_forced"]["ids"]);
    let d = decoder();
    let vocab = d.config().vocab;
    let mut rolling = d.new_session(800, KvDtype::F32).unwrap();
    let mut full = d
        .new_session_with(800, KvDtype::F32, SlidingCache::Full)
        .unwrap();
    for session in [&mut rolling, &mut full] {
        for piece in ids[..600].chunks(300) {
            d.forward(session, piece, Logits::None).unwrap();
        }
    }
    for &id in &ids[600..640] {
        let a = d.forward(&mut rolling, &[id], Logits::Last).unwrap();
        let b = d.forward(&mut full, &[id], Logits::Last).unwrap();
        let position = rolling.position() - 1;
        // The decode kernel walks a wrapped rolling cache in up to three chunks, so
        // its sums run in another order than over the full cache. Differences of
        // about 1e-7 then flip a few 8-bit activation roundings per token, and the
        // caches drift apart: measured over these 40 steps, max 0.73 to 1.32 and
        // mean 0.10 to 0.43 (llama.cpp differs from exact arithmetic by more). The
        // kernel-level equality of the two caches is tested exactly in the attend
        // crate (cache_metamorphic.rs); this checks the engine wires them alike.
        assert_eq!(a.len(), vocab);
        assert_rows_close(position, &a, &b, 2.5, 0.6);
    }
    assert!(rolling.kv_bytes() < full.kv_bytes());
}

#[test]
fn kv_cache_bytes_equal_plan_at_8k() {
    let d = decoder();
    let session = d.new_session(8192, KvDtype::F16).unwrap();
    let plan = plan_kv_memory(&KvPlanRequest {
        layers: 18,
        n_kv_heads: 1,
        head_dim: 256,
        context: 8192,
        batch: 1,
        dtype: KvDtype::F16,
        window: Some(512),
        sliding_layers: 15,
        block_size: None,
    })
    .unwrap();
    assert_eq!(session.kv_bytes() as u64, plan.total_bytes);
    // Three global layers hold 8192 tokens, fifteen sliding layers 512, at
    // 1 kv head x 256 dims x (K and V) x 2 bytes per token.
    assert_eq!(plan.total_bytes, (3 * 8192 + 15 * 512) * 256 * 2 * 2);
}

#[test]
fn chat_uses_builtin_template() {
    let engine = Engine::open(model_path(MODEL)).unwrap();
    let messages = [attend_models::chat::ChatMessage::new("user", "Hi")];
    let prompt = engine.encode_chat(&messages, true).unwrap();
    // <bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n, with one BOS.
    assert_eq!(prompt[0], 2);
    assert_ne!(
        prompt[1], 2,
        "the template writes BOS; encoding must not add a second"
    );
    let text = engine.tokenizer().decode(&prompt, true).unwrap();
    assert!(text.ends_with("<start_of_turn>model\n"), "{text:?}");
}
