//! Sampling filters, seeded draws and stop conditions.

use attend_models::sampling::{
    apply_repetition_penalty, apply_temperature, argmax, min_p, top_k, top_p, Candidate, Sampler,
    SamplingError, SamplingParams, StopChecker, StopOutput, StopReason,
};

fn candidates(logits: &[f32]) -> Vec<Candidate> {
    logits
        .iter()
        .enumerate()
        .map(|(id, &logit)| Candidate {
            id: id as u32,
            logit,
        })
        .collect()
}

fn ids(candidates: &[Candidate]) -> Vec<u32> {
    candidates.iter().map(|c| c.id).collect()
}

fn sorted_ids(candidates: &[Candidate]) -> Vec<u32> {
    let mut v = ids(candidates);
    v.sort_unstable();
    v
}

/// Logits whose softmax is exactly `probs` (up to f32 rounding of the logs).
fn logits_of(probs: &[f64]) -> Vec<f32> {
    probs.iter().map(|p| p.ln() as f32).collect()
}

#[test]
fn top_k_keeps_k_largest() {
    let mut c = candidates(&[0.5, 3.0, -1.0, 2.0, 1.0]);
    top_k(&mut c, 2);
    assert_eq!(ids(&c), vec![1, 3]);
}

#[test]
fn top_k_zero_and_large_keep_all() {
    let mut c = candidates(&[0.5, 3.0, -1.0]);
    top_k(&mut c, 0);
    assert_eq!(ids(&c), vec![0, 1, 2]);
    let mut c = candidates(&[0.5, 3.0, -1.0]);
    top_k(&mut c, 10);
    assert_eq!(c.len(), 3);
}

#[test]
fn top_k_ties_prefer_lower_id() {
    let mut c = candidates(&[1.0, 2.0, 2.0, 2.0]);
    top_k(&mut c, 2);
    assert_eq!(ids(&c), vec![1, 2]);
}

#[test]
fn top_p_keeps_smallest_covering_prefix() {
    // Probabilities 0.5, 0.3, 0.15, 0.05. Thresholds sit off the exact cumulative
    // sums (0.5, 0.8, 0.95), where f32 logits make the comparison a coin toss.
    let logits = logits_of(&[0.05, 0.5, 0.15, 0.3]);
    let cases: &[(f32, &[u32])] = &[
        (0.4, &[1]),
        (0.49, &[1]),
        (0.6, &[1, 3]),
        (0.79, &[1, 3]),
        (0.81, &[1, 3, 2]),
        (0.96, &[1, 3, 2, 0]),
        (1.0, &[1, 3, 2, 0]),
    ];
    for &(p, expected) in cases {
        let mut c = candidates(&logits);
        top_p(&mut c, p);
        if p < 1.0 {
            assert_eq!(ids(&c), expected, "top_p {p}");
        } else {
            assert_eq!(sorted_ids(&c), vec![0, 1, 2, 3], "top_p {p}");
        }
    }
}

#[test]
fn top_p_keeps_at_least_one() {
    let mut c = candidates(&[0.0, 0.0]);
    top_p(&mut c, 1e-6);
    assert_eq!(ids(&c), vec![0]);
}

#[test]
fn min_p_keeps_relative_to_max() {
    // Probabilities 0.5, 0.3, 0.15, 0.05: with min_p 0.3 the bar is 0.15.
    let logits = logits_of(&[0.05, 0.5, 0.15, 0.3]);
    let cases: &[(f32, &[u32])] = &[
        (0.0, &[0, 1, 2, 3]),
        (0.05, &[0, 1, 2, 3]),
        (0.2, &[1, 2, 3]),
        (0.5, &[1, 3]),
        (0.7, &[1]),
        (1.0, &[1]),
    ];
    for &(p, expected) in cases {
        let mut c = candidates(&logits);
        min_p(&mut c, p);
        assert_eq!(sorted_ids(&c), expected, "min_p {p}");
    }
}

#[test]
fn temperature_scales_and_zero_keeps_max() {
    let mut c = candidates(&[1.0, -2.0, 4.0]);
    apply_temperature(&mut c, 2.0);
    let logits: Vec<f32> = c.iter().map(|c| c.logit).collect();
    assert_eq!(logits, vec![0.5, -1.0, 2.0]);
    let mut c = candidates(&[1.0, -2.0, 4.0]);
    apply_temperature(&mut c, 0.0);
    assert_eq!(ids(&c), vec![2]);
}

#[test]
fn repetition_penalty_divides_positive_multiplies_negative() {
    let mut logits = vec![2.0, -2.0, 0.0, 3.0, 1.0];
    apply_repetition_penalty(&mut logits, &[0, 1, 2, 0, 0], 2.0).unwrap();
    // Token 0 appears three times but is penalised once.
    assert_eq!(logits, vec![1.0, -4.0, 0.0, 3.0, 1.0]);
}

#[test]
fn repetition_penalty_uses_last_n_only() {
    let params = SamplingParams {
        repeat_penalty: 100.0,
        repeat_last_n: 2,
        ..SamplingParams::greedy()
    };
    let mut sampler = Sampler::new(params).unwrap();
    // Token 0 is best, but it is in the last two tokens and gets pushed below token 1.
    assert_eq!(sampler.sample(&[5.0, 4.0, 0.0], &[2, 0]).unwrap(), 1);
    // Here token 0 is only older than the window, so it is not penalised.
    assert_eq!(sampler.sample(&[5.0, 4.0, 0.0], &[0, 2, 2]).unwrap(), 0);
}

#[test]
fn repetition_penalty_rejects_bad_history() {
    let mut logits = vec![0.0; 3];
    let err = apply_repetition_penalty(&mut logits, &[3], 1.5).unwrap_err();
    assert_eq!(
        err,
        SamplingError::HistoryIdOutOfRange { id: 3, n_vocab: 3 }
    );
}

#[test]
fn temperature_zero_equals_greedy() {
    let logits: Vec<f32> = (0..50)
        .map(|i| ((i * 37) % 23) as f32 * 0.3 - 2.0)
        .collect();
    let expected = argmax(&logits).unwrap();
    for seed in 0..5 {
        let params = SamplingParams {
            temperature: 0.0,
            seed,
            ..SamplingParams::default()
        };
        let mut sampler = Sampler::new(params).unwrap();
        assert_eq!(sampler.sample(&logits, &[]).unwrap(), expected);
    }
    let mut greedy = Sampler::new(SamplingParams::greedy()).unwrap();
    assert_eq!(greedy.sample(&logits, &[]).unwrap(), expected);
}

#[test]
fn argmax_ties_prefer_lower_id() {
    assert_eq!(argmax(&[1.0, 3.0, 3.0]).unwrap(), 1);
}

fn run(params: &SamplingParams, steps: usize) -> Vec<u32> {
    let mut sampler = Sampler::new(params.clone()).unwrap();
    let logits: Vec<f32> = (0..20).map(|i| (i as f32 * 0.7).sin()).collect();
    let mut history = Vec::new();
    for _ in 0..steps {
        let id = sampler.sample(&logits, &history).unwrap();
        history.push(id);
    }
    history
}

#[test]
fn same_seed_same_output() {
    let params = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        seed: 1234,
        ..SamplingParams::default()
    };
    let first = run(&params, 200);
    assert_eq!(first, run(&params, 200));
    let other = SamplingParams {
        seed: 1235,
        ..params
    };
    assert_ne!(first, run(&other, 200));
}

#[test]
fn sampling_frequencies_match_softmax() {
    // Expected probabilities after temperature 2: softmax(ln(p) / 2) = sqrt(p) / sum.
    let probs = [0.5, 0.3, 0.15, 0.05];
    let logits = logits_of(&probs);
    let roots: Vec<f64> = probs.iter().map(|p: &f64| p.sqrt()).collect();
    let total: f64 = roots.iter().sum();
    let expected: Vec<f64> = roots.iter().map(|r| r / total).collect();

    let params = SamplingParams {
        temperature: 2.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        seed: 7,
        ..SamplingParams::default()
    };
    let mut sampler = Sampler::new(params).unwrap();
    let draws = 20_000;
    let mut counts = [0usize; 4];
    for _ in 0..draws {
        counts[sampler.sample(&logits, &[]).unwrap() as usize] += 1;
    }
    // The standard error of each frequency is at most sqrt(0.25 / 20000) = 0.0035;
    // 0.02 is more than five of them, so a correct sampler fails about never.
    for (index, &count) in counts.iter().enumerate() {
        let freq = count as f64 / draws as f64;
        assert!(
            (freq - expected[index]).abs() < 0.02,
            "token {index}: frequency {freq}, expected {}",
            expected[index]
        );
    }
}

#[test]
fn filtered_tokens_are_never_drawn() {
    let probs = [0.4, 0.3, 0.2, 0.1];
    let logits = logits_of(&probs);
    let params = SamplingParams {
        temperature: 1.0,
        top_k: 3,
        top_p: 0.65,
        min_p: 0.0,
        seed: 3,
        ..SamplingParams::default()
    };
    let mut sampler = Sampler::new(params).unwrap();
    for _ in 0..2000 {
        let id = sampler.sample(&logits, &[]).unwrap();
        assert!(id == 0 || id == 1, "drew filtered token {id}");
    }
}

#[test]
fn masked_logits_are_never_drawn() {
    let logits = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.0];
    let params = SamplingParams {
        temperature: 1.0,
        seed: 11,
        ..SamplingParams::default()
    };
    let mut sampler = Sampler::new(params).unwrap();
    for _ in 0..500 {
        let id = sampler.sample(&logits, &[]).unwrap();
        assert!(id == 1 || id == 3, "drew masked token {id}");
    }
}

#[test]
fn invalid_settings_are_typed_errors() {
    let base = SamplingParams::default();
    let cases = [
        (
            SamplingParams {
                temperature: -0.1,
                ..base.clone()
            },
            SamplingError::InvalidTemperature(-0.1),
        ),
        (
            SamplingParams {
                top_p: 0.0,
                ..base.clone()
            },
            SamplingError::InvalidTopP(0.0),
        ),
        (
            SamplingParams {
                top_p: 1.5,
                ..base.clone()
            },
            SamplingError::InvalidTopP(1.5),
        ),
        (
            SamplingParams {
                min_p: -0.5,
                ..base.clone()
            },
            SamplingError::InvalidMinP(-0.5),
        ),
        (
            SamplingParams {
                repeat_penalty: 0.0,
                ..base.clone()
            },
            SamplingError::InvalidRepeatPenalty(0.0),
        ),
    ];
    for (params, expected) in cases {
        assert_eq!(Sampler::new(params).unwrap_err(), expected);
    }
    let nan = SamplingParams {
        temperature: f32::NAN,
        ..base.clone()
    };
    assert!(matches!(
        Sampler::new(nan).unwrap_err(),
        SamplingError::InvalidTemperature(_)
    ));
    let nan_top_p = SamplingParams {
        top_p: f32::NAN,
        ..base
    };
    assert!(matches!(
        Sampler::new(nan_top_p).unwrap_err(),
        SamplingError::InvalidTopP(_)
    ));
}

#[test]
fn invalid_logits_are_typed_errors() {
    for params in [SamplingParams::default(), SamplingParams::greedy()] {
        let mut sampler = Sampler::new(params).unwrap();
        assert!(matches!(
            sampler.sample(&[0.0, f32::NAN], &[]),
            Err(SamplingError::InvalidLogit { index: 1, .. })
        ));
        assert!(matches!(
            sampler.sample(&[f32::INFINITY, 0.0], &[]),
            Err(SamplingError::InvalidLogit { index: 0, .. })
        ));
        assert_eq!(sampler.sample(&[], &[]), Err(SamplingError::EmptyLogits));
        assert_eq!(
            sampler.sample(&[f32::NEG_INFINITY; 3], &[]),
            Err(SamplingError::NoCandidates)
        );
    }
}

#[test]
fn stop_on_end_of_generation_and_budget() {
    let mut checker = StopChecker::new(&[2, 7], &[], 3);
    assert_eq!(checker.push_token(5), None);
    assert_eq!(checker.push_token(7), Some(StopReason::EndOfGeneration(7)));
    let mut checker = StopChecker::new(&[2], &[], 3);
    assert_eq!(checker.push_token(5), None);
    assert_eq!(checker.push_token(6), None);
    assert_eq!(checker.push_token(8), Some(StopReason::MaxTokens));
}

#[test]
fn stop_string_across_pieces_is_never_shown() {
    let mut checker = StopChecker::new(&[], &["\nUser:".to_string()], 100);
    let mut shown = String::new();
    let mut stop = None;
    for piece in ["Hello", " there\n", "Us", "er", ": next"] {
        let StopOutput { text, stop: s } = checker.push_text(piece);
        shown.push_str(&text);
        if s.is_some() {
            stop = s;
            break;
        }
    }
    assert_eq!(shown, "Hello there");
    assert_eq!(stop, Some(StopReason::StopString("\nUser:".to_string())));
}

#[test]
fn false_start_of_stop_string_is_released() {
    let mut checker = StopChecker::new(&[], &["END".to_string()], 100);
    assert_eq!(checker.push_text("the EN").text, "the ");
    assert_eq!(
        checker.push_text("D").stop,
        Some(StopReason::StopString("END".into()))
    );
    let mut checker = StopChecker::new(&[], &["END".to_string()], 100);
    assert_eq!(checker.push_text("the EN").text, "the ");
    assert_eq!(checker.push_text("ding").text, "ENding");
    assert_eq!(checker.push_text(" E").text, " ");
    assert_eq!(checker.finish(), "E");
}

#[test]
fn earliest_stop_string_wins() {
    let stops = ["world".to_string(), "lo".to_string()];
    let mut checker = StopChecker::new(&[], &stops, 100);
    let out = checker.push_text("hello world");
    assert_eq!(out.text, "hel");
    assert_eq!(out.stop, Some(StopReason::StopString("lo".into())));
}

#[test]
fn stop_strings_respect_char_boundaries() {
    let mut checker = StopChecker::new(&[], &["é!".to_string()], 100);
    assert_eq!(checker.push_text("caf").text, "caf");
    assert_eq!(checker.push_text("é").text, "");
    assert_eq!(checker.push_text("s").text, "és");
}

#[test]
fn top_k_matches_full_sort() {
    // Many ties, so the partial selection must break them the same way as a full sort.
    let logits: Vec<f32> = (0..500).map(|i| ((i * 7919) % 13) as f32).collect();
    for k in [1, 2, 13, 40, 499, 500, 501] {
        // k = 0 keeps everything unsorted, so it is not compared here.
        let mut partial = candidates(&logits);
        top_k(&mut partial, k);
        let mut full = candidates(&logits);
        full.sort_by(|a, b| b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id)));
        full.truncate(k);
        assert_eq!(ids(&partial), ids(&full), "k = {k}");
    }
}
