//! `attend generate`, `chat`, `tokenize`, `perplexity` and `kv-plan` as a user
//! runs them against the real GGUF models. The tests check greedy output
//! against llama.cpp's, the JSON fields, the KV cache size against `kv-plan`
//! and tokenizer ids against the fixtures, and expect one-line errors with a
//! non-zero exit for bad input, to the bench commands too. The models live in
//! `$ATTEND_MODELS` (default `$HOME/.cache/attend/models`);
//! `scripts/fetch-models.sh` fetches them.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";
const COLORS_PROMPT: &str = "The three primary colors of light are";

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

/// Returns the path of a model file, failing with the fetch command when it is missing.
fn model(file: &str) -> String {
    let path = models_dir().join(file);
    assert!(
        path.is_file(),
        "{} is missing; run scripts/fetch-models.sh",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../attend-models/tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn ids(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .expect("an array of ids")
        .iter()
        .map(|v| v.as_u64().expect("an id"))
        .collect()
}

/// Runs attend, asserts success and parses stdout as one JSON object.
fn attend_json(args: &[&str]) -> Value {
    let output = attend(args);
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
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
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("model_cli_{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes the first `bytes` bytes of a model file into the scratch folder.
fn truncated_copy(file: &str, bytes: usize, name: &str) -> String {
    let data = std::fs::read(model(file)).unwrap();
    let path = scratch_dir(name).join(file);
    std::fs::write(&path, &data[..bytes]).unwrap();
    path.to_string_lossy().into_owned()
}

fn greedy_colors(model_file: &str, extra: &[&str]) -> Value {
    let model = model(model_file);
    let mut args = vec![
        "generate",
        "--model",
        &model,
        "--json",
        "--temperature",
        "0",
        "--max-tokens",
        "20",
    ];
    if !extra.contains(&"--ctx") {
        args.extend_from_slice(&["--ctx", "64"]);
    }
    // With 8-bit activations the first token of this prompt is a near tie (see
    // `greedy_generate_matches_llamacpp`), so the text tests use f32 activations,
    // which follow llama.cpp's greedy text for 19 tokens.
    if !extra.contains(&"--activations") {
        args.extend_from_slice(&["--activations", "f32"]);
    }
    args.extend_from_slice(extra);
    args.push(COLORS_PROMPT);
    attend_json(&args)
}

fn llamacpp_greedy(name: &str) -> Value {
    let reference = fixture("smollm2_llamacpp.json");
    let case = reference["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .find(|case| case["name"] == name)
        .unwrap_or_else(|| panic!("no greedy case {name}"))
        .clone();
    case
}

#[test]
fn greedy_generate_matches_llamacpp() {
    // llama.cpp's first token here, " the" (260), wins by only 0.03 logits over ':'
    // (42). With f32 activations attend follows llama.cpp for 19 tokens. Token 19
    // wins by 0.047, which 8-bit activation rounding does flip, so the comparison
    // stops before it.
    let case = llamacpp_greedy("colors");
    let margins = case["top1_margins"].as_array().unwrap();
    assert!(margins[1..19].iter().all(|m| m.as_f64().unwrap() >= 0.2));
    let json = greedy_colors(SMOLLM2, &[]);
    assert_eq!(ids(&json["prompt_tokens"]), ids(&case["prompt_ids"]));
    assert_eq!(
        ids(&json["tokens"])[..19],
        ids(&case["generated_ids"])[..19]
    );

    // With 8-bit activations the two are 0.0014 apart in attend's logits (the
    // products run each prompt token through the decode kernels, and the 8-bit
    // rounding of each layer's input moves logits by more than that). The first
    // token must be one of the two.
    let json = greedy_colors(SMOLLM2, &["--activations", "q8"]);
    let first = ids(&json["tokens"])[0];
    assert!(first == 260 || first == 42, "first token {first}");
}

#[test]
fn f32_activations_generate_the_same_text() {
    // The f32-activation products move logits by far less than the 0.2 margins of
    // the first 19 steps, so the greedy text is llama.cpp's there too.
    let case = llamacpp_greedy("colors");
    let json = greedy_colors(SMOLLM2, &["--activations", "f32"]);
    assert_eq!(
        ids(&json["tokens"])[..19],
        ids(&case["generated_ids"])[..19]
    );
}

#[test]
fn greedy_code_matches_llamacpp() {
    // Every one of the first 17 tokens wins by at least 0.2 logits in
    // llama.cpp, so the match does not depend on the cache type.
    let case = llamacpp_greedy("code");
    let margins = case["top1_margins"].as_array().unwrap();
    assert!(margins[..17].iter().all(|m| m.as_f64().unwrap() >= 0.2));
    for dtype in ["f16", "f32"] {
        let json = attend_json(&[
            "generate",
            "--model",
            &model(SMOLLM2),
            "--json",
            "--temperature",
            "0",
            "--max-tokens",
            "17",
            "--ctx",
            "64",
            "--kv-dtype",
            dtype,
            case["prompt"].as_str().unwrap(),
        ]);
        assert_eq!(ids(&json["prompt_tokens"]), ids(&case["prompt_ids"]));
        assert_eq!(
            ids(&json["tokens"]),
            ids(&case["generated_ids"])[..17],
            "{dtype}"
        );
    }
}

#[test]
fn greedy_generate_is_deterministic() {
    for model_file in [SMOLLM2, GEMMA3] {
        let first = greedy_colors(model_file, &[]);
        let second = greedy_colors(model_file, &[]);
        assert_eq!(first["tokens"], second["tokens"], "{model_file}");
        assert_eq!(first["text"], second["text"], "{model_file}");
    }
}

#[test]
fn seeded_sampling_repeats() {
    let model = model(SMOLLM2);
    let run = |seed: &str| {
        attend_json(&[
            "generate",
            "--model",
            &model,
            "--json",
            "--temperature",
            "1.0",
            "--seed",
            seed,
            "--max-tokens",
            "12",
            "--ctx",
            "64",
            "Once upon a time",
        ])
    };
    let first = run("7");
    let second = run("7");
    assert_eq!(first["tokens"], second["tokens"]);
    assert_eq!(first["text"], second["text"]);
}

#[test]
fn generate_json_fields_and_types() {
    let json = greedy_colors(SMOLLM2, &[]);
    assert!(json["prompt_tokens"].as_array().unwrap().len() == 7);
    assert!(json["prompt_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .all(Value::is_u64));
    assert_eq!(json["tokens"].as_array().unwrap().len(), 20);
    assert!(json["tokens"].as_array().unwrap().iter().all(Value::is_u64));
    assert!(json["text"]
        .as_str()
        .unwrap()
        .starts_with(" the primary colors"));
    assert!(json["prefill_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(json["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(json["kv_cache_bytes"].as_u64().unwrap() > 0);
    assert_eq!(json["stop_reason"], "max_tokens");
}

#[test]
fn stop_string_ends_text() {
    let json = greedy_colors(SMOLLM2, &["--stop", "blue"]);
    let text = json["text"].as_str().unwrap();
    assert_eq!(text, " the primary colors of light: red, ");
    assert_eq!(json["stop_reason"], "stop_string");
    assert_eq!(json["stop_string"], "blue");
}

#[test]
fn stop_on_first_token_has_no_decode_rate() {
    // Greedy decoding starts with " the", so the stop string ends generation
    // before any sampled token is fed back and no decode step is timed.
    let json = greedy_colors(SMOLLM2, &["--stop", "the"]);
    assert_eq!(json["stop_reason"], "stop_string");
    assert_eq!(json["tokens"].as_array().unwrap().len(), 1);
    assert!(json["decode_tokens_per_s"].is_null(), "{json}");
    assert!(json["prefill_tokens_per_s"].as_f64().unwrap() > 0.0);

    let output = attend(&[
        "generate",
        "--model",
        &model(SMOLLM2),
        "--temperature",
        "0",
        "--ctx",
        "64",
        "--activations",
        "f32",
        "--stop",
        "the",
        COLORS_PROMPT,
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("decode: 1 tokens, no rate"), "{stderr}");
}

#[test]
fn bench_generate_without_decode_has_no_rate() {
    let model = model(SMOLLM2);
    let args = [
        "bench",
        "generate",
        "--model",
        &model,
        "--prompt-tokens",
        "4",
    ];
    let mut json_args = args.to_vec();
    json_args.extend_from_slice(&["--gen-tokens", "0", "--quiet", "--json"]);
    let json = attend_json(&json_args);
    assert!(json["decode_tokens_per_s"].is_null(), "{json}");
    assert!(json["prefill_tokens_per_s"].as_f64().unwrap() > 0.0);

    let mut text_args = args.to_vec();
    text_args.extend_from_slice(&["--gen-tokens", "0", "--quiet"]);
    let output = attend(&text_args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("tg0: no rate"), "{stdout}");
}

#[test]
fn full_context_is_stop_reason() {
    let json = greedy_colors(SMOLLM2, &["--ctx", "12"]);
    assert_eq!(json["stop_reason"], "context_full");
    // The 7 prompt tokens and 5 generated ones fill the 12 positions; the
    // sixth generated token is sampled but never fed.
    assert_eq!(json["tokens"].as_array().unwrap().len(), 6);
}

#[test]
fn kv_cache_bytes_equal_kv_plan() {
    // 600 tokens is past Gemma 3's 512-token window, so its sliding layers hold
    // fewer tokens than its global layers.
    for model_file in [SMOLLM2, GEMMA3] {
        let model = model(model_file);
        for (ctx, dtype) in [("100", "f16"), ("600", "f16"), ("600", "int8")] {
            let generated = attend_json(&[
                "generate",
                "--model",
                &model,
                "--json",
                "--max-tokens",
                "1",
                "--ctx",
                ctx,
                "--kv-dtype",
                dtype,
                "hi",
            ]);
            let plan = attend_json(&[
                "kv-plan",
                "--model",
                &model,
                "--context",
                ctx,
                "--dtype",
                dtype,
                "--json",
            ]);
            assert_eq!(
                generated["kv_cache_bytes"], plan["total_bytes"],
                "{model_file} at --ctx {ctx} {dtype}"
            );
        }
    }
}

#[test]
fn kv_plan_reads_gemma_window() {
    let plan = attend_json(&[
        "kv-plan",
        "--model",
        &model(GEMMA3),
        "--context",
        "8192",
        "--json",
    ]);
    let explicit = attend_json(&[
        "kv-plan",
        "--layers",
        "18",
        "--kv-heads",
        "1",
        "--head-dim",
        "256",
        "--context",
        "8192",
        "--window",
        "512",
        "--sliding-layers",
        "15",
        "--json",
    ]);
    assert_eq!(plan, explicit);
    assert_eq!(plan["total_bytes"], 33_030_144);
}

#[test]
fn tokenize_json_matches_fixtures() {
    for (model_file, name) in [
        (SMOLLM2, "tokenizer_smollm2.json"),
        (GEMMA3, "tokenizer_gemma3.json"),
    ] {
        let model = model(model_file);
        let reference = fixture(name);
        for case in reference["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let json = attend_json(&["tokenize", "--model", &model, "--json", "--", text]);
            assert_eq!(
                ids(&json["ids"]),
                ids(&case["ids_add_special_parse_special"]),
                "{model_file}: {text:?}"
            );
            let plain = attend_json(&[
                "tokenize",
                "--model",
                &model,
                "--json",
                "--no-special",
                "--no-parse-special",
                "--",
                text,
            ]);
            assert_eq!(
                ids(&plain["ids"]),
                ids(&case["ids_plain"]),
                "{model_file} plain: {text:?}"
            );
        }
    }
}

#[test]
fn perplexity_json_fields() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../attend-models/tests/fixtures/ppl_text.txt"),
    )
    .unwrap();
    // About 220 tokens: three chunks of 64, so the test stays short.
    let path = scratch_dir("perplexity").join("short.txt");
    std::fs::write(&path, &text[..1000]).unwrap();
    let json = attend_json(&[
        "perplexity",
        "--model",
        &model(SMOLLM2),
        "--file",
        path.to_str().unwrap(),
        "--ctx",
        "64",
        "--json",
    ]);
    let ppl = json["ppl"].as_f64().unwrap();
    assert!(ppl > 1.0, "ppl {ppl}");
    assert!(ppl < 1000.0, "ppl {ppl}");
    assert!(json["ppl_stderr"].as_f64().unwrap() > 0.0);
    let chunks = json["chunks"].as_u64().unwrap();
    assert!(chunks >= 2, "chunks {chunks}");
    assert_eq!(json["scored_tokens"].as_u64().unwrap(), chunks * 31);
}

/// Runs a chat on `input` and returns the prompt token count of each turn,
/// read from the stats lines.
fn chat_prefills(model_file: &str, input: &str) -> Vec<usize> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_attend"))
        .args([
            "chat",
            "--model",
            &model(model_file),
            "--temperature",
            "0",
            "--max-tokens",
            "8",
            "--ctx",
            "512",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    stderr
        .split("prefill: ")
        .skip(1)
        .map(|rest| rest.split(' ').next().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn chat_reuses_cache_between_turns() {
    let prefills = chat_prefills(
        SMOLLM2,
        "What is the capital of France?\nAnd of Germany?\nThanks. Say goodbye.\n",
    );
    assert_eq!(prefills.len(), 3, "{prefills:?}");
    // The first turn feeds the system prompt and the question (37 tokens); a
    // later turn feeds only its own message and the template around it.
    assert_eq!(prefills[0], 37);
    assert!(prefills[1] < 20, "{prefills:?}");
    assert!(prefills[2] < 20, "{prefills:?}");
}

#[test]
fn chat_line_of_spaces_quits() {
    // The banner tells the user that an empty line quits, and a line of spaces
    // looks the same on a terminal.
    let prefills = chat_prefills(SMOLLM2, "Hi\n   \nThis turn is never read.\n");
    assert_eq!(prefills.len(), 1, "{prefills:?}");
}

#[test]
fn closed_pipe_does_not_panic() {
    // About 100 KB of ids, more than a pipe buffers.
    let text = "word ".repeat(20_000);
    let mut child = Command::new(env!("CARGO_BIN_EXE_attend"))
        .args(["tokenize", "--model", &model(SMOLLM2), &text])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 10];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    child.wait().unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn missing_model_file() {
    let output = attend(&["generate", "--model", "/nonexistent/model.gguf", "hi"]);
    assert_one_line_error(
        &output,
        &["/nonexistent/model.gguf", "not found", "--model"],
    );
}

#[test]
fn non_gguf_file() {
    let path = scratch_dir("non_gguf").join("notes.gguf");
    std::fs::write(&path, "hello, not a model\n").unwrap();
    let path = path.to_str().unwrap();
    for command in ["generate", "tokenize"] {
        let output = attend(&[command, "--model", path, "hi"]);
        assert_one_line_error(&output, &[path, "not a GGUF file", "--model"]);
    }
    let output = attend(&["kv-plan", "--model", path, "--context", "8"]);
    assert_one_line_error(&output, &[path, "not a GGUF file"]);
}

#[test]
fn truncated_gguf_header() {
    let path = truncated_copy(SMOLLM2, 100_000, "truncated_header");
    let output = attend(&["generate", "--model", &path, "hi"]);
    assert_one_line_error(&output, &[&path, "truncated", "scripts/fetch-models.sh"]);
}

#[test]
fn truncated_gguf_tensor_data() {
    let path = truncated_copy(SMOLLM2, 3_000_000, "truncated_data");
    let output = attend(&["generate", "--model", &path, "hi"]);
    assert_one_line_error(
        &output,
        &[
            &path,
            "token_embd.weight",
            "truncated",
            "scripts/fetch-models.sh",
        ],
    );
}

#[test]
fn gguf_given_to_embed() {
    let path = model(GEMMA3);
    let output = attend(&["embed", "--model", &path, "hi"]);
    assert_one_line_error(&output, &[&path, "GGUF", "config.json"]);
}

#[test]
fn minilm_folder_given_to_generate() {
    let dir = models_dir().join("all-MiniLM-L6-v2");
    assert!(
        dir.is_dir(),
        "{} is missing; run scripts/fetch-models.sh",
        dir.display()
    );
    let dir = dir.to_string_lossy().into_owned();
    let output = attend(&["generate", "--model", &dir, "hi"]);
    assert_one_line_error(&output, &[&dir, "folder", "GGUF", "attend embed"]);
}

#[test]
fn prompt_longer_than_context() {
    let prompt = "word ".repeat(300);
    let output = attend(&[
        "generate",
        "--model",
        &model(SMOLLM2),
        "--ctx",
        "64",
        &prompt,
    ]);
    assert_one_line_error(&output, &["context of 64 tokens", "--ctx"]);
}

#[test]
fn context_zero() {
    let output = attend(&["generate", "--ctx", "0", "hi"]);
    assert_one_line_error(&output, &["--ctx 0", "at least 2"]);
}

#[test]
fn threads_zero() {
    let output = attend(&["generate", "--threads", "0", "hi"]);
    assert_one_line_error(&output, &["--threads 0", "at least 1"]);
}

#[test]
fn empty_stop_string() {
    let output = attend(&["generate", "--stop", "", "hi"]);
    assert_one_line_error(&output, &["--stop \"\"", "text to stop at"]);
}

#[test]
fn kv_plan_without_a_shape_names_both_sources() {
    let output = attend(&["kv-plan", "--context", "100"]);
    assert_one_line_error(&output, &["--model", "--layers"]);
}

#[test]
fn threads_beyond_the_bound() {
    // A huge count would start threads until the machine ran out; every command
    // that takes --threads checks it before starting any.
    let attention = "bench attention --seq-len 8 --heads 1 --head-dim 8 --threads";
    let matmul = "bench matmul --type q4_0 --rows 8 --cols 32 --threads";
    for command in [
        "generate --threads 100000 hi".to_string(),
        format!("{attention} 5000"),
        format!("{attention} 0"),
        format!("{matmul} 1025"),
    ] {
        let args: Vec<&str> = command.split(' ').collect();
        let output = attend(&args);
        assert_one_line_error(&output, &["--threads", "pass at"]);
    }
}

#[test]
fn rayon_threads_beyond_the_bound() {
    // Without --threads, rayon would start RAYON_NUM_THREADS workers.
    let output = Command::new(env!("CARGO_BIN_EXE_attend"))
        .args([
            "bench",
            "attention",
            "--seq-len",
            "8",
            "--heads",
            "1",
            "--head-dim",
            "8",
        ])
        .env("RAYON_NUM_THREADS", "100000")
        .output()
        .expect("the attend binary runs");
    assert_one_line_error(&output, &["RAYON_NUM_THREADS=100000", "at most 1024"]);
}

#[test]
fn bench_attention_rejects_zero_sizes() {
    let sizes = [
        ("--seq-len", "8"),
        ("--kv-len", "8"),
        ("--batch", "1"),
        ("--heads", "2"),
        ("--kv-heads", "2"),
        ("--head-dim", "8"),
    ];
    for (zero_option, _) in sizes {
        let mut args = vec!["bench", "attention"];
        for (option, value) in sizes {
            args.push(option);
            args.push(if option == zero_option { "0" } else { value });
        }
        let output = attend(&args);
        let message = format!("{zero_option} 0 is invalid");
        assert_one_line_error(&output, &[&message, "at least 1"]);
    }
}

#[test]
fn negative_temperature() {
    let output = attend(&["generate", "--temperature", "-1", "hi"]);
    assert_one_line_error(&output, &["temperature -1", ">= 0"]);
}

#[test]
fn top_p_out_of_range() {
    for value in ["0", "1.5"] {
        let output = attend(&["generate", "--top-p", value, "hi"]);
        assert_one_line_error(&output, &[&format!("top-p {value}"), "(0, 1]"]);
    }
}

#[test]
fn invalid_activations() {
    let output = attend(&["generate", "--activations", "f16", "hi"]);
    assert_one_line_error(&output, &["`f16`", "q8 or f32"]);
}

#[test]
fn invalid_kv_dtype() {
    let output = attend(&["generate", "--kv-dtype", "q4", "hi"]);
    assert_one_line_error(&output, &["'q4'", "--kv-dtype", "f16"]);
}

#[test]
fn empty_prompt() {
    let output = attend(&["generate", "--model", &model(SMOLLM2), ""]);
    assert_one_line_error(&output, &["prompt \"\"", "no tokens"]);
}

#[test]
fn unknown_flag() {
    let output = attend(&["generate", "--bogus", "hi"]);
    assert_one_line_error(&output, &["'--bogus'", "--help"]);
}

#[test]
fn missing_prompt_argument() {
    let output = attend(&["generate"]);
    assert_one_line_error(&output, &["<PROMPT>", "--help"]);
}

#[test]
fn perplexity_context_too_small() {
    let output = attend(&["perplexity", "--file", "unused.txt", "--ctx", "2"]);
    assert_one_line_error(&output, &["--ctx 2", "at least 4"]);
}

#[test]
fn kv_plan_context_zero() {
    let output = attend(&["kv-plan", "--model", &model(SMOLLM2), "--context", "0"]);
    assert_one_line_error(&output, &["--context 0", "at least 1"]);
}

#[test]
fn empty_models_dir_names_fetch_script() {
    let dir = scratch_dir("empty_models");
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let file = file.to_str().unwrap();
    let cases: [&[&str]; 5] = [
        &["generate", "hi"],
        &["chat"],
        &["tokenize", "hi"],
        &["perplexity", "--file", file],
        &["bench", "generate"],
    ];
    for args in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_attend"))
            .args(args)
            .env("ATTEND_MODELS", &dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_one_line_error(&output, &["scripts/fetch-models.sh", SMOLLM2]);
    }
}

/// Runs attend in a scratch folder with `ATTEND_MODELS` removed and `HOME`
/// set to `home` (`None` removes it too).
fn attend_with_home(args: &[&str], home: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_attend"));
    command
        .args(args)
        .current_dir(scratch_dir("home_cwd"))
        .env_remove("ATTEND_MODELS")
        .stdin(Stdio::null());
    match home {
        Some(home) => command.env("HOME", home),
        None => command.env_remove("HOME"),
    };
    command.output().unwrap()
}

#[test]
fn default_models_dir_needs_absolute_home() {
    let cases: [&[&str]; 3] = [
        &["generate", "hi"],
        &["embed", "hi"],
        &["bench", "generate"],
    ];
    for args in cases {
        let output = attend_with_home(args, None);
        assert_one_line_error(&output, &["HOME is unset", "ATTEND_MODELS", "--model"]);

        let output = attend_with_home(args, Some(""));
        assert_one_line_error(&output, &["HOME is unset or empty", "ATTEND_MODELS"]);

        let output = attend_with_home(args, Some("relative/home"));
        assert_one_line_error(
            &output,
            &[
                "HOME=relative/home is not an absolute path",
                "ATTEND_MODELS",
            ],
        );
    }
}

#[test]
fn models_override_works_without_home() {
    model(SMOLLM2);
    let output = Command::new(env!("CARGO_BIN_EXE_attend"))
        .args(["tokenize", "hi"])
        .env("ATTEND_MODELS", models_dir())
        .env_remove("HOME")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!output.stdout.is_empty(), "no token ids printed");
}

/// Returns the help text of a command's `--threads` option.
fn threads_help(command: &str) -> String {
    let mut args: Vec<&str> = command.split(' ').collect();
    args.push("--help");
    let output = attend(&args);
    assert!(output.status.success(), "{command} --help failed");
    let help = String::from_utf8_lossy(&output.stdout).into_owned();
    let lines: Vec<&str> = help.lines().map(str::trim).collect();
    let index = lines
        .iter()
        .position(|line| line.starts_with("--threads"))
        .unwrap_or_else(|| panic!("{command} --help has no --threads: {help}"));
    // clap puts the text beside the option, or on the next line when the
    // command's help is wide.
    let text = lines[index]
        .trim_start_matches("--threads <THREADS>")
        .trim();
    if text.is_empty() {
        lines[index + 1].to_string()
    } else {
        text.to_string()
    }
}

#[test]
fn threads_help_is_the_same_everywhere() {
    let expected =
        "Worker threads [default: $RAYON_NUM_THREADS, else one per available logical CPU]";
    for command in [
        "bench generate",
        "bench decode",
        "bench attention",
        "bench embed",
        "bench matmul",
        "bench machine",
        "generate",
        "chat",
        "perplexity",
    ] {
        assert_eq!(threads_help(command), expected, "{command}");
    }
}

#[test]
fn bench_default_threads_follow_rayon() {
    let smollm2 = model(SMOLLM2);
    let minilm = models_dir().join("all-MiniLM-L6-v2");
    let minilm = minilm.to_str().unwrap();
    let attention = "attention --seq-len 8 --heads 1 --head-dim 8 --min-time-ms 0 --min-runs 1";
    let decode = "decode --kv-len 8 --heads 1 --kv-heads 1 --head-dim 8 --runs 1";
    let generate = format!("generate --model {smollm2} --prompt-tokens 1 --gen-tokens 0 --quiet");
    let embed = format!("embed --model {minilm} --batch 1 --tokens 2");
    let matmul = "matmul --type q4_0 --rows 8 --cols 32 --working-set-mib 1 --seconds 0.01";
    let machine = "machine --gemm-size 8 --copy-mib 1 --seconds 0.01";
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    for command in [attention, decode, &generate, &embed, matmul, machine] {
        let mut args = vec!["bench"];
        args.extend(command.split(' '));
        args.push("--json");
        for (rayon_threads, expected) in [(None, cores), (Some("1"), 1)] {
            let mut run = Command::new(env!("CARGO_BIN_EXE_attend"));
            run.args(&args);
            match rayon_threads {
                Some(value) => run.env("RAYON_NUM_THREADS", value),
                None => run.env_remove("RAYON_NUM_THREADS"),
            };
            let output = run.output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "{command}: {stderr}");
            let json: Value = serde_json::from_slice(&output.stdout).unwrap();
            assert_eq!(
                json["threads"], expected,
                "{command} with {rayon_threads:?}"
            );
        }
    }
}
