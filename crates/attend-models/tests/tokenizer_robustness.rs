//! Tokenizers built from arbitrary (possibly corrupt) metadata never panic.
//!
//! A GGUF file is untrusted input: whatever its tokenizer keys contain, building the
//! tokenizer either fails with an error or gives one whose encode and decode return
//! errors rather than panicking.

use attend_models::tokenizer::{StreamDecoder, Tokenizer, TokenizerModel, TokenizerSpec};
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::TestRunner;

fn token_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ab ]{0,3}",
        Just("<0x61>".to_string()),
        Just("<s>".to_string()),
        Just("\u{2581}a".to_string()),
        Just("Ġa".to_string()),
        Just(String::new()),
        "\\PC{1,2}",
    ]
}

fn spec() -> impl Strategy<Value = TokenizerSpec> {
    prop::collection::vec(token_text(), 1..12)
        .prop_flat_map(|tokens| {
            let n = tokens.len();
            (
                Just(tokens),
                any::<bool>(),
                // Mostly one type per token, sometimes out of range or the wrong length.
                prop_oneof![
                    4 => prop::collection::vec(1i32..7, n..=n).prop_map(Some),
                    1 => prop::collection::vec(-1i32..9, 0..14).prop_map(Some),
                    1 => Just(None),
                ],
                // Merges from pairs of token texts, plus some that are not.
                prop::collection::vec(
                    prop_oneof![
                        3 => (0..n, 0..n).prop_map(|(l, r)| (l, r, None)),
                        1 => "[ab<>sĠ ]{0,5}".prop_map(|m| (0, 0, Some(m))),
                    ],
                    0..8,
                ),
                prop::option::of(0u32..14),
                prop::option::of(0u32..14),
                any::<(bool, bool, bool)>(),
                prop::option::of(prop::sample::select(vec!["smollm", "gpt2", "default"])),
            )
        })
        .prop_map(
            |(mut tokens, is_bpe, mut token_types, merge_picks, bos_id, eos_id, flags, pre)| {
                // A merge of two tokens also adds the joined token, as real vocabularies do.
                let original_len = tokens.len();
                let mut merges = Vec::new();
                for (left, right, raw) in merge_picks {
                    match raw {
                        Some(raw) => merges.push(raw),
                        None => {
                            let (l, r) = (tokens[left].clone(), tokens[right].clone());
                            merges.push(format!("{l} {r}"));
                            tokens.push(format!("{l}{r}"));
                        }
                    }
                }
                if let Some(types) = token_types.as_mut().filter(|t| t.len() == original_len) {
                    types.resize(tokens.len(), 1);
                }
                let n = tokens.len();
                // Ids mostly in range, sometimes exactly one past the end.
                let bos_id = bos_id.map(|id| id % (n as u32 + 1));
                let eos_id = eos_id.map(|id| id % (n as u32 + 1));
                TokenizerSpec {
                    model: if is_bpe {
                        TokenizerModel::Gpt2Bpe
                    } else {
                        TokenizerModel::SentencePiece
                    },
                    pre: pre.map(str::to_string),
                    scores: Some((0..n).map(|i| (i as f32 * 0.37).sin()).collect()),
                    token_types,
                    tokens,
                    merges: Some(merges),
                    bos_id,
                    eos_id,
                    eot_id: None,
                    eom_id: None,
                    unknown_id: None,
                    padding_id: None,
                    add_bos: flags.0,
                    add_eos: flags.1,
                    add_space_prefix: flags.2,
                }
            },
        )
}

#[test]
fn arbitrary_metadata_never_panics() {
    let built = AtomicUsize::new(0);
    let cases = 1024;
    let mut runner = TestRunner::new(ProptestConfig::with_cases(cases));
    let inputs = (
        spec(),
        "[ab <>sĠé\u{2581}]{0,16}",
        prop::collection::vec(0u32..20, 0..8),
    );
    runner
        .run(&inputs, |(spec, text, ids)| {
            let Ok(tokenizer) = Tokenizer::from_spec(spec) else {
                return Ok(());
            };
            built.fetch_add(1, Ordering::Relaxed);
            for (add_special, parse_special) in [(false, false), (true, true)] {
                let _ = tokenizer.encode(&text, add_special, parse_special);
            }
            let _ = tokenizer.decode(&ids, true);
            let mut decoder = StreamDecoder::new(false);
            for &id in &ids {
                let _ = decoder.push(&tokenizer, id);
            }
            decoder.finish();
            Ok(())
        })
        .unwrap();

    // The property proves nothing unless many specs are valid; about a quarter are.
    let built = built.load(Ordering::Relaxed);
    assert!(
        built >= cases as usize / 10,
        "only {built} of {cases} specs built a tokenizer"
    );
}
