//! Tokenizer ids of the real SmolLM2 and Gemma 3 files against llama.cpp.
//!
//! The expected ids come from `scripts/reference/tokenizer_ids.py`, which runs
//! llama.cpp's tokenizer (through llama-cpp-python) on the same files.

use std::path::PathBuf;

use attend_models::tokenizer::{StreamDecoder, Tokenizer};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    model_file: String,
    n_vocab: usize,
    bos_id: u32,
    eos_id: u32,
    eog_ids: Vec<u32>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids_add_special_parse_special: Vec<u32>,
    ids_plain: Vec<u32>,
    detokenized_special: String,
}

fn fixture(name: &str) -> Fixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("tokenizer_{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("invalid {}: {e}", path.display()))
}

fn model_path(file: &str) -> PathBuf {
    let dir = match std::env::var_os("ATTEND_MODELS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is not set"))
            .join(".cache/attend/models"),
    };
    let path = dir.join(file);
    assert!(
        path.exists(),
        "model file {} is missing: run scripts/fetch-models.sh (or set ATTEND_MODELS)",
        path.display()
    );
    path
}

fn load(name: &str) -> (Fixture, Tokenizer) {
    let fixture = fixture(name);
    let path = model_path(&fixture.model_file);
    let gguf = attend_models::gguf::Gguf::open(&path)
        .unwrap_or_else(|e| panic!("failed to open {}: {e}", path.display()));
    let tokenizer = Tokenizer::from_gguf(&gguf)
        .unwrap_or_else(|e| panic!("failed to build the tokenizer of {}: {e}", path.display()));
    (fixture, tokenizer)
}

fn check_ids(name: &str) {
    let (fixture, tokenizer) = load(name);
    assert_eq!(tokenizer.n_vocab(), fixture.n_vocab);
    assert_eq!(tokenizer.bos_id(), Some(fixture.bos_id));
    assert_eq!(tokenizer.eos_id(), Some(fixture.eos_id));
    assert_eq!(tokenizer.eog_ids(), fixture.eog_ids.as_slice());

    let mut failures = Vec::new();
    for case in &fixture.cases {
        let with_special = tokenizer.encode(&case.text, true, true).unwrap();
        if with_special != case.ids_add_special_parse_special {
            failures.push(format!(
                "{:?} (add_special, parse_special):\n  got      {:?}\n  expected {:?}",
                case.text, with_special, case.ids_add_special_parse_special
            ));
        }
        let plain = tokenizer.encode(&case.text, false, false).unwrap();
        if plain != case.ids_plain {
            failures.push(format!(
                "{:?} (plain):\n  got      {:?}\n  expected {:?}",
                case.text, plain, case.ids_plain
            ));
        }
    }
    assert!(failures.is_empty(), "{name}: {}", failures.join("\n"));
}

fn check_decode(name: &str) {
    let (fixture, tokenizer) = load(name);
    for case in &fixture.cases {
        // Decoding with special tokens shown matches llama.cpp's detokenizer.
        let with_special_text = tokenizer
            .decode(&case.ids_add_special_parse_special, true)
            .unwrap();
        assert_eq!(
            with_special_text, case.detokenized_special,
            "{name}: {:?}",
            case.text
        );

        // Plain ids decode back to the exact text.
        let round_trip = tokenizer.decode(&case.ids_plain, false).unwrap();
        assert_eq!(round_trip, case.text, "{name}: round trip");
    }
}

fn check_stream(name: &str) {
    let (fixture, tokenizer) = load(name);
    for case in &fixture.cases {
        let mut decoder = StreamDecoder::new(false);
        let mut text = String::new();
        for &id in &case.ids_plain {
            let piece = decoder.push(&tokenizer, id).unwrap();
            assert!(!piece.contains('\u{FFFD}'), "{name}: {:?}", case.text);
            text.push_str(&piece);
        }
        assert!(!decoder.has_pending(), "{name}: {:?}", case.text);
        text.push_str(&decoder.finish());
        assert_eq!(text, case.text, "{name}: streamed");
    }
}

#[test]
fn smollm2_ids_match_llama_cpp() {
    check_ids("smollm2");
}

#[test]
fn gemma3_ids_match_llama_cpp() {
    check_ids("gemma3");
}

#[test]
fn smollm2_decode_round_trips() {
    check_decode("smollm2");
}

#[test]
fn gemma3_decode_round_trips() {
    check_decode("gemma3");
}

#[test]
fn smollm2_stream_decodes_whole_characters() {
    check_stream("smollm2");
}

#[test]
fn gemma3_stream_decodes_whole_characters() {
    check_stream("gemma3");
}

#[test]
fn gemma3_byte_fallback_streams_one_character() {
    let (_, tokenizer) = load("gemma3");
    // U+10348 (Gothic hwair) is four bytes; Gemma 3 has no token for it.
    let ids = tokenizer.encode("𐍈", false, false).unwrap();
    assert_eq!(
        ids.len(),
        4,
        "expected four byte-fallback tokens, got {ids:?}"
    );
    let mut decoder = StreamDecoder::new(false);
    let pieces: Vec<String> = ids
        .iter()
        .map(|&id| decoder.push(&tokenizer, id).unwrap())
        .collect();
    assert_eq!(pieces, vec!["", "", "", "𐍈"]);
}

#[test]
fn special_tokens_are_single_ids() {
    let (_, smollm) = load("smollm2");
    let im_start = smollm.token_id("<|im_start|>").unwrap();
    assert_eq!(
        smollm.encode("<|im_start|>", false, true).unwrap(),
        vec![im_start]
    );
    assert!(smollm.encode("<|im_start|>", false, false).unwrap().len() > 1);

    let (_, gemma) = load("gemma3");
    let start_of_turn = gemma.token_id("<start_of_turn>").unwrap();
    assert_eq!(
        gemma.encode("<start_of_turn>", false, true).unwrap(),
        vec![start_of_turn]
    );
    assert!(gemma.is_eog(gemma.token_id("<end_of_turn>").unwrap()));
}
