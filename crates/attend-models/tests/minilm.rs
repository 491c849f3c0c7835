//! all-MiniLM-L6-v2 against sentence-transformers: token ids, embeddings, truncation
//! and batch invariance.
//!
//! The reference is tests/fixtures/minilm_embeddings.json, written by
//! scripts/reference/minilm_reference.py (sentence-transformers on the CPU in f32).
//! The model folder is `$ATTEND_MODELS/all-MiniLM-L6-v2` (default
//! `~/.cache/attend/models`); `scripts/fetch-models.sh minilm` fetches it.

use std::path::PathBuf;
use std::sync::OnceLock;

use attend_models::bert::{cosine_similarity, BertError, SentenceEncoder};
use attend_models::linear::LinearKernel;
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    model: FixtureModel,
    sentences: Vec<FixtureSentence>,
}

#[derive(Deserialize)]
struct FixtureModel {
    max_seq_length: usize,
    dim: usize,
}

#[derive(Deserialize)]
struct FixtureSentence {
    name: String,
    text: String,
    /// The full tokenization, without truncation.
    ids: Vec<u32>,
    /// The ids sentence-transformers fed the model, after truncation.
    ids_used: Vec<u32>,
    truncated: bool,
    embedding: Vec<f32>,
}

/// Minimum cosine against the reference. Both sides compute in f32 with different
/// summation orders (attend's kernels against PyTorch's). The fixture records a
/// float32 against float64 cosine of 1.0 to 10 digits, so 0.9999 leaves room for
/// rounding but not for a wrong operation.
const MIN_COSINE: f64 = 0.9999;

/// Maximum absolute difference per component. The fixture rounds to 6 significant
/// digits, so components near 0.1 carry up to 5e-7 of rounding. f32 arithmetic in
/// another order adds a few ulps of the hidden states on top.
const MAX_COMPONENT_DIFF: f32 = 2e-6;

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let text = include_str!("fixtures/minilm_embeddings.json");
        serde_json::from_str(text).expect("minilm_embeddings.json is valid")
    })
}

fn model_dir() -> PathBuf {
    let models = std::env::var_os("ATTEND_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            PathBuf::from(home).join(".cache/attend/models")
        });
    let dir = models.join("all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} has no model.safetensors; run scripts/fetch-models.sh minilm",
        dir.display()
    );
    dir
}

fn encoder() -> &'static SentenceEncoder {
    static ENCODER: OnceLock<SentenceEncoder> = OnceLock::new();
    ENCODER.get_or_init(|| SentenceEncoder::load(&model_dir()).expect("MiniLM loads"))
}

#[test]
fn token_ids_match_reference() {
    let encoder = encoder();
    assert_eq!(encoder.max_tokens(), fixture().model.max_seq_length);
    for sentence in &fixture().sentences {
        let tokens = encoder.tokenize(&sentence.text).unwrap();
        assert_eq!(tokens.ids, sentence.ids_used, "ids of `{}`", sentence.name);
        assert_eq!(
            tokens.truncated, sentence.truncated,
            "truncated flag of `{}`",
            sentence.name
        );
    }
}

#[test]
fn max_tokens_512_keeps_full_tokenization() {
    let mut encoder = SentenceEncoder::load(&model_dir()).unwrap();
    encoder.set_max_tokens(512).unwrap();
    for sentence in &fixture().sentences {
        let tokens = encoder.tokenize(&sentence.text).unwrap();
        assert_eq!(tokens.ids, sentence.ids, "ids of `{}`", sentence.name);
        assert!(!tokens.truncated, "`{}` is under 512 tokens", sentence.name);
    }
}

#[test]
fn truncated_input_ends_with_sep() {
    let long = fixture()
        .sentences
        .iter()
        .find(|s| s.truncated)
        .expect("the fixture has a truncated sentence");
    let tokens = encoder().tokenize(&long.text).unwrap();
    assert_eq!(tokens.ids.len(), 256);
    assert_eq!(tokens.ids[0], 101, "[CLS] first");
    assert_eq!(tokens.ids[255], 102, "[SEP] last");
    assert_eq!(
        tokens.ids[..255],
        long.ids[..255],
        "the first 255 ids are kept"
    );
}

#[test]
fn max_tokens_out_of_range_rejected() {
    let mut encoder = SentenceEncoder::load(&model_dir()).unwrap();
    for requested in [0, 1, 513, usize::MAX] {
        let err = encoder.set_max_tokens(requested).unwrap_err();
        assert!(
            matches!(err, BertError::MaxTokens { requested: r, max_positions: 512 } if r == requested),
            "{requested}: {err}"
        );
    }
    assert_eq!(
        encoder.max_tokens(),
        256,
        "a rejected value leaves the length unchanged"
    );
}

#[test]
fn embeddings_match_sentence_transformers() {
    let fixture = fixture();
    let texts: Vec<&str> = fixture.sentences.iter().map(|s| s.text.as_str()).collect();
    let embeddings = encoder().embed(&texts).unwrap();
    assert_eq!(embeddings.len(), texts.len());
    for (sentence, embedding) in fixture.sentences.iter().zip(&embeddings) {
        assert_eq!(
            embedding.len(),
            fixture.model.dim,
            "width of `{}`",
            sentence.name
        );
        let norm = embedding
            .iter()
            .map(|&v| f64::from(v).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-5,
            "`{}` has norm {norm}",
            sentence.name
        );
        let cosine = cosine_similarity(embedding, &sentence.embedding);
        assert!(
            cosine >= MIN_COSINE,
            "`{}`: cosine {cosine} against sentence-transformers, expected >= {MIN_COSINE}",
            sentence.name
        );
        for (dim_idx, (&ours, &reference)) in embedding.iter().zip(&sentence.embedding).enumerate()
        {
            assert!(
                (ours - reference).abs() <= MAX_COMPONENT_DIFF,
                "`{}` dim {dim_idx}: {ours} against sentence-transformers' {reference}",
                sentence.name
            );
        }
    }
}

#[test]
fn embedding_alone_equals_in_batch() {
    // Sentences of 2 to 256 tokens in one packed batch, against each one alone.
    let texts: Vec<&str> = fixture()
        .sentences
        .iter()
        .map(|s| s.text.as_str())
        .collect();
    let encoder = encoder();
    let batched = encoder.embed(&texts).unwrap();
    let reversed: Vec<&str> = texts.iter().rev().copied().collect();
    let batched_reversed = encoder.embed(&reversed).unwrap();
    for (idx, text) in texts.iter().enumerate() {
        let alone = encoder.embed(&[*text]).unwrap().remove(0);
        let in_reversed = &batched_reversed[texts.len() - 1 - idx];
        for (dim_idx, &a) in alone.iter().enumerate() {
            let diff = (a - batched[idx][dim_idx]).abs();
            assert!(
                diff <= 1e-6,
                "input {idx}, dim {dim_idx}: alone {a}, batched {}",
                batched[idx][dim_idx]
            );
            let diff = (a - in_reversed[dim_idx]).abs();
            assert!(
                diff <= 1e-6,
                "input {idx}, dim {dim_idx}: alone {a}, reversed batch {}",
                in_reversed[dim_idx]
            );
        }
        // Every step is row-wise or per sequence, so with the AVX-512 linear kernel
        // (whose sums do not depend on the row count) the bits agree too.
        if LinearKernel::detect() == LinearKernel::Avx512 {
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&alone), bits(&batched[idx]), "input {idx} bits");
            assert_eq!(
                bits(&alone),
                bits(in_reversed),
                "input {idx} bits, reversed"
            );
        }
    }
}

#[test]
fn batch_over_token_budget_splits_invisibly() {
    // 18 truncated sentences of 256 tokens and short ones between them: 4700 tokens,
    // more than one packed forward pass holds.
    let fixture = fixture();
    let long = &fixture.sentences.iter().find(|s| s.truncated).unwrap().text;
    let texts: Vec<&str> = (0..36)
        .map(|i| {
            if i % 2 == 0 {
                long.as_str()
            } else {
                "a short one"
            }
        })
        .collect();
    let encoder = encoder();
    let total: usize = texts
        .iter()
        .map(|t| encoder.tokenize(t).unwrap().ids.len())
        .sum();
    assert!(
        total > attend_models::bert::MAX_TOKENS_PER_FORWARD,
        "{total} tokens"
    );
    let batched = encoder.embed(&texts).unwrap();
    let long_alone = encoder.embed(&[long.as_str()]).unwrap().remove(0);
    let short_alone = encoder.embed(&["a short one"]).unwrap().remove(0);
    for (idx, embedding) in batched.iter().enumerate() {
        let alone = if idx % 2 == 0 {
            &long_alone
        } else {
            &short_alone
        };
        for (dim_idx, (&a, &b)) in alone.iter().zip(embedding).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6,
                "input {idx}, dim {dim_idx}: alone {a}, batched {b}"
            );
        }
    }
}

#[test]
fn empty_batch_gives_no_embeddings() {
    let none: [&str; 0] = [];
    assert!(encoder().embed(&none).unwrap().is_empty());
}

#[test]
fn related_sentences_are_closer() {
    let embeddings = encoder()
        .embed(&[
            "A man is playing a guitar.",
            "Someone plays an acoustic guitar.",
            "The stock market fell sharply today.",
        ])
        .unwrap();
    let related = cosine_similarity(&embeddings[0], &embeddings[1]);
    let unrelated = cosine_similarity(&embeddings[0], &embeddings[2]);
    assert!(
        related > unrelated + 0.3,
        "related {related}, unrelated {unrelated}"
    );
}
