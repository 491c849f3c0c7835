//! `attend embed`, `attend similarity` and `attend bench embed` as a user runs them:
//! output shapes on the real model, and one-line errors with a non-zero exit for bad
//! input. The model folder is `$ATTEND_MODELS/all-MiniLM-L6-v2` (default
//! `~/.cache/attend/models`); `scripts/fetch-models.sh minilm` fetches it.

use std::path::PathBuf;
use std::process::{Command, Output};

fn attend(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attend"))
        .args(args)
        .output()
        .expect("the attend binary runs")
}

fn models_dir() -> PathBuf {
    std::env::var_os("ATTEND_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            PathBuf::from(home).join(".cache/attend/models")
        })
}

fn minilm_dir() -> String {
    let dir = models_dir().join("all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} has no model.safetensors; run scripts/fetch-models.sh minilm",
        dir.display()
    );
    dir.to_string_lossy().into_owned()
}

/// Asserts a failed run: non-zero exit, no panic, one line on stderr containing
/// every fragment.
fn assert_one_line_error(output: &Output, fragments: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "expected failure, stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    for fragment in fragments {
        assert!(
            stderr.contains(fragment),
            "missing `{fragment}` in: {stderr}"
        );
    }
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("embed_cli_{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn embed_prints_one_line_per_input() {
    let model = minilm_dir();
    let output = attend(&["embed", "--model", &model, "first sentence", "", "third"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3);
    for line in lines {
        let values: Vec<f32> = line.split(' ').map(|v| v.parse().unwrap()).collect();
        assert_eq!(values.len(), 384);
        let norm: f32 = values.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
}

#[test]
fn embed_json_and_file_inputs() {
    let model = minilm_dir();
    let dir = scratch_dir("file");
    let file = dir.join("lines.txt");
    std::fs::write(&file, "one\ntwo\n\nfour\n").unwrap();
    let file = file.to_string_lossy().into_owned();
    let output = attend(&[
        "embed", "--model", &model, "--json", "--file", &file, "zero",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let embeddings = json["embeddings"].as_array().expect("an embeddings array");
    assert_eq!(
        embeddings.len(),
        5,
        "1 TEXT argument and 4 lines, the empty one included"
    );
    assert!(embeddings
        .iter()
        .all(|e| e.as_array().unwrap().len() == 384));
}

#[test]
fn embed_warns_on_truncation() {
    let model = minilm_dir();
    let long = vec!["word"; 300].join(" ");
    let output = attend(&["embed", "--model", &model, &long]);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("TEXT argument 1 was truncated to 256 tokens"),
        "{stderr}"
    );
    assert!(stderr.contains("--max-tokens"), "{stderr}");

    let output = attend(&["embed", "--model", &model, "--max-tokens", "512", &long]);
    assert!(output.status.success());
    assert!(!String::from_utf8_lossy(&output.stderr).contains("truncated"));
}

#[test]
fn similarity_ranks_paraphrase_higher() {
    let model = minilm_dir();
    let score = |a: &str, b: &str| -> f64 {
        let output = attend(&["similarity", "--model", &model, a, b]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let same = score("A cat sits on the mat.", "A cat sits on the mat.");
    let paraphrase = score("A cat sits on the mat.", "A kitten is sitting on a rug.");
    let unrelated = score("A cat sits on the mat.", "Interest rates rose in March.");
    assert!((same - 1.0).abs() < 1e-5, "{same}");
    assert!(paraphrase > unrelated, "{paraphrase} against {unrelated}");
}

#[test]
fn folder_without_config_fails() {
    let dir = scratch_dir("empty");
    let dir = dir.to_string_lossy().into_owned();
    let output = attend(&["embed", "--model", &dir, "text"]);
    assert_one_line_error(&output, &["config.json", "not found"]);
}

#[test]
fn missing_default_model_names_fetch_script() {
    let output = Command::new(env!("CARGO_BIN_EXE_attend"))
        .args(["embed", "text"])
        .env("ATTEND_MODELS", scratch_dir("no_models"))
        .output()
        .unwrap();
    assert_one_line_error(&output, &["scripts/fetch-models.sh minilm", "--model"]);
}

#[test]
fn gguf_model_fails() {
    let dir = scratch_dir("gguf");
    let file = dir.join("model.gguf");
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend([0u8; 16]);
    std::fs::write(&file, bytes).unwrap();
    let file = file.to_string_lossy().into_owned();
    let output = attend(&["embed", "--model", &file, "text"]);
    assert_one_line_error(&output, &["GGUF", "sentence-transformers"]);
}

#[test]
fn max_tokens_out_of_range_fails() {
    let model = minilm_dir();
    let output = attend(&["embed", "--model", &model, "--max-tokens", "513", "text"]);
    assert_one_line_error(&output, &["513", "2 to 512"]);
}

#[test]
fn bench_rejects_bad_sizes() {
    let model = minilm_dir();
    let output = attend(&["bench", "embed", "--model", &model, "--batch", "0"]);
    assert_one_line_error(&output, &["--batch 0"]);
    let output = attend(&["bench", "embed", "--model", &model, "--batch", "100000000"]);
    assert_one_line_error(&output, &["--batch 100000000", "at most 4096"]);
    let output = attend(&["bench", "embed", "--model", &model, "--threads", "0"]);
    assert_one_line_error(&output, &["--threads 0", "at least 1"]);
    let output = attend(&["bench", "embed", "--model", &model, "--tokens", "600"]);
    assert_one_line_error(&output, &["--tokens 600", "2 to 512"]);
}

#[test]
fn no_input_fails() {
    let model = minilm_dir();
    let output = attend(&["embed", "--model", &model]);
    assert_one_line_error(&output, &["no input", "--file"]);
}
