//! `attend embed`, `attend similarity` and `attend bench embed`: sentence embeddings
//! from a sentence-transformers BERT folder, all-MiniLM-L6-v2 by default.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use attend_models::bert::{cosine_similarity, SentenceEncoder};
use attend_models::linear::{Linear, LinearKernel};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

/// Folder name of the default model under the models directory.
const DEFAULT_MODEL: &str = "all-MiniLM-L6-v2";

/// Sentences per forward pass. Results do not depend on it (each sentence is encoded
/// independently inside the packed batch); it bounds memory and paces the progress bar.
const SENTENCES_PER_BATCH: usize = 32;

/// Options of `attend embed`.
#[derive(Debug, Clone, Args)]
pub struct EmbedArgs {
    /// Model folder with config.json, model.safetensors and tokenizer.json
    /// [default: $ATTEND_MODELS/all-MiniLM-L6-v2, else ~/.cache/attend/models/all-MiniLM-L6-v2].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Print `{"embeddings": [[...], ...]}` instead of one line of numbers per input.
    #[arg(long)]
    pub json: bool,
    /// Truncation length in tokens, [CLS] and [SEP] included [default: the folder's
    /// max_seq_length, 256 for all-MiniLM-L6-v2; at most the model's 512 positions].
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Text file to embed, one sentence per line (after the TEXT arguments).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Sentences to embed.
    pub texts: Vec<String>,
}

/// Options of `attend similarity`.
#[derive(Debug, Clone, Args)]
pub struct SimilarityArgs {
    /// Model folder, as for `attend embed`.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Truncation length in tokens, as for `attend embed`.
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// First sentence.
    pub a: String,
    /// Second sentence.
    pub b: String,
}

/// Options of `attend bench embed`.
#[derive(Debug, Clone, Args)]
pub struct BenchEmbedArgs {
    /// Model folder, as for `attend embed`.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Sentences per batch.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Tokens per sentence, [CLS] and [SEP] included.
    #[arg(long, default_value_t = 128)]
    pub tokens: usize,
    #[arg(long, help = crate::common::THREADS_HELP)]
    pub threads: Option<usize>,
    /// Print one JSON object with `sentences_per_s` instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `attend embed` and prints one embedding per input to stdout.
///
/// # Errors
/// A one-line message naming the model folder, file or option that failed.
pub fn run_embed(args: &EmbedArgs) -> Result<(), String> {
    let mut texts = args.texts.clone();
    if let Some(file) = &args.file {
        let content = std::fs::read_to_string(file)
            .map_err(|err| format!("cannot read --file {}: {err}", file.display()))?;
        texts.extend(content.lines().map(str::to_string));
    }
    if texts.is_empty() {
        return Err("no input to embed; pass TEXT arguments or --file LINES.txt".to_string());
    }
    let encoder = load_encoder(args.model.as_deref(), args.max_tokens)?;

    let progress = if args.file.is_some() {
        // Draws on stderr only when it is a terminal.
        let bar = ProgressBar::new(texts.len() as u64);
        if let Ok(style) =
            ProgressStyle::with_template("{bar:40} {pos}/{len} sentences {per_sec} eta {eta}")
        {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut embeddings = Vec::with_capacity(texts.len());
    for (chunk_idx, chunk) in texts.chunks(SENTENCES_PER_BATCH).enumerate() {
        let mut batch = Vec::with_capacity(chunk.len());
        for (offset, text) in chunk.iter().enumerate() {
            let tokens = encoder.tokenize(text).map_err(|err| err.to_string())?;
            if tokens.truncated {
                let index = chunk_idx * SENTENCES_PER_BATCH + offset;
                let what = input_name(index, args.texts.len(), args.file.as_deref());
                progress.suspend(|| tracing::warn!("{what} {}", encoder.truncation_note()));
            }
            batch.push(tokens.ids);
        }
        embeddings.extend(encoder.embed_ids(&batch).map_err(|err| err.to_string())?);
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();

    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let written = if args.json {
        serde_json::to_writer(&mut out, &serde_json::json!({ "embeddings": embeddings }))
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        embeddings.iter().try_for_each(|embedding| {
            let line: Vec<String> = embedding.iter().map(f32::to_string).collect();
            writeln!(out, "{}", line.join(" "))
        })
    };
    written
        .and_then(|()| out.flush())
        .map_err(|err| format!("cannot write the embeddings to stdout: {err}"))
}

/// Names input `index` for messages: the TEXT argument, or the line of `--file`.
fn input_name(index: usize, n_args: usize, file: Option<&Path>) -> String {
    match file {
        Some(file) if index >= n_args => {
            format!("line {} of {}", index - n_args + 1, file.display())
        }
        _ => format!("TEXT argument {}", index + 1),
    }
}

/// Runs `attend similarity` and prints the cosine similarity of the two sentences.
///
/// # Errors
/// As [`run_embed`].
pub fn run_similarity(args: &SimilarityArgs) -> Result<(), String> {
    let encoder = load_encoder(args.model.as_deref(), args.max_tokens)?;
    let embeddings = encoder
        .embed(&[args.a.as_str(), args.b.as_str()])
        .map_err(|err| err.to_string())?;
    println!("{:.6}", cosine_similarity(&embeddings[0], &embeddings[1]));
    Ok(())
}

/// The largest `attend bench embed --batch`. The benchmark embeds the whole batch
/// in one call, at least three times (warm-up and timed runs), so a larger batch
/// runs for hours on a small machine and adds nothing to the measurement.
const MAX_BENCH_BATCH: usize = 4096;

/// Runs `attend bench embed`: times embedding `--batch` sentences of `--tokens`
/// tokens (tokenization included, as sentence-transformers' `encode` does), and an
/// f32 GEMM at the feed-forward shape in the same run as the baseline.
///
/// # Errors
/// A message naming the invalid option, or the model loading error.
pub fn run_bench(args: &BenchEmbedArgs) -> Result<(), String> {
    if args.batch == 0 {
        return Err("--batch 0 is invalid; give at least 1 sentence".to_string());
    }
    if args.batch > MAX_BENCH_BATCH {
        return Err(format!(
            "--batch {} is too large for a benchmark; pass at most {MAX_BENCH_BATCH} sentences",
            args.batch
        ));
    }
    crate::common::check_threads(args.threads)?;
    let mut encoder = load_encoder(args.model.as_deref(), None)?;
    let max_positions = encoder.model().config().max_position_embeddings;
    if args.tokens < 2 || args.tokens > max_positions {
        return Err(format!(
            "--tokens {} is out of range; choose 2 to {max_positions} ([CLS] and [SEP] count)",
            args.tokens
        ));
    }
    if args.tokens > encoder.max_tokens() {
        encoder
            .set_max_tokens(args.tokens)
            .map_err(|err| err.to_string())?;
    }

    // "word" is one word piece in the uncased BERT vocabulary.
    let sentence = vec!["word"; args.tokens - 2].join(" ");
    let got = encoder
        .tokenize(&sentence)
        .map_err(|err| err.to_string())?
        .ids
        .len();
    if got != args.tokens {
        return Err(format!(
            "the benchmark sentence has {got} tokens with this tokenizer, not --tokens {}; use a BERT uncased vocabulary",
            args.tokens
        ));
    }
    let texts = vec![sentence.as_str(); args.batch];

    let pool = crate::common::thread_pool(args.threads)?;
    let threads = pool.current_num_threads();
    let report = pool.install(|| measure(&encoder, &texts, args.tokens))?;

    let sentences_per_s = args.batch as f64 / report.batch_seconds;
    let config = encoder.model().config();
    let flops = config.forward_flops(&vec![args.tokens; args.batch]);
    let forward_gflops = flops / report.batch_seconds / 1e9;
    let gemm_fraction = forward_gflops / report.gemm_gflops;
    if args.json {
        let object = serde_json::json!({
            "sentences_per_s": sentences_per_s,
            "ms_per_batch": report.batch_seconds * 1e3,
            "batch": args.batch,
            "tokens": args.tokens,
            "threads": threads,
            "reps": report.reps,
            "forward_gflops": forward_gflops,
            "gemm_gflops": report.gemm_gflops,
            "gemm_shape": report.gemm_shape,
            "linear_kernel": format!("{:?}", report.linear_kernel),
            "linear_gflops": report.linear_gflops,
            "gemm_fraction": gemm_fraction,
        });
        println!("{object}");
    } else {
        println!(
            "embed: batch {} x {} tokens, {threads} threads: {sentences_per_s:.1} sentences/s ({:.1} ms per batch, median of {})",
            args.batch,
            args.tokens,
            report.batch_seconds * 1e3,
            report.reps
        );
        println!(
            "forward: {forward_gflops:.1} GFLOP/s (linear layers and attention) = {gemm_fraction:.2} of the f32 GEMM rate at {} ({:.1} GFLOP/s, gemm crate, same run)",
            report.gemm_shape, report.gemm_gflops
        );
        println!(
            "linear kernel {:?} at the same shape: {:.1} GFLOP/s",
            report.linear_kernel, report.linear_gflops
        );
    }
    Ok(())
}

/// Median timings of one benchmark run.
struct BenchReport {
    batch_seconds: f64,
    /// The gemm crate's rate at the feed-forward shape: the baseline.
    gemm_gflops: f64,
    /// The model's own linear kernel at the same shape.
    linear_gflops: f64,
    linear_kernel: LinearKernel,
    gemm_shape: String,
    reps: usize,
}

/// Minimum repetitions and minimum total time of each timed loop.
const MIN_REPS: usize = 3;
const MIN_TOTAL: Duration = Duration::from_secs(1);

/// Times `encoder.embed(texts)` and, alternating with it, the feed-forward up
/// projection `[rows, hidden] x [hidden, intermediate]` (rows = all tokens of the
/// batch, at most 4096) through the gemm crate (the baseline) and through the
/// kernel the model uses.
fn measure(
    encoder: &SentenceEncoder,
    texts: &[&str],
    tokens: usize,
) -> Result<BenchReport, String> {
    let config = encoder.model().config();
    let (hidden, inter) = (config.hidden_size, config.intermediate_size);
    let rows = (texts.len() * tokens).min(4096);
    let x: Vec<f32> = (0..rows * hidden)
        .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
        .collect();
    let weight: Vec<f32> = (0..inter * hidden)
        .map(|i| ((i % 89) as f32 - 44.0) / 89.0)
        .collect();
    let bias = vec![0.0f32; inter];
    let layer = |kernel| Linear::new(weight.clone(), bias.clone(), hidden, Some(kernel));
    let gemm = layer(LinearKernel::Gemm).map_err(|err| err.to_string())?;
    let linear_kernel = LinearKernel::detect();
    let own = layer(linear_kernel).map_err(|err| err.to_string())?;
    let mut out = vec![0.0f32; rows * inter];

    // Warm-up: first-touch page faults and thread start-up stay out of the timings.
    encoder.embed(texts).map_err(|err| err.to_string())?;
    gemm.forward(&x, &mut out).map_err(|err| err.to_string())?;
    own.forward(&x, &mut out).map_err(|err| err.to_string())?;

    let mut batch_times = Vec::new();
    let mut gemm_times = Vec::new();
    let mut own_times = Vec::new();
    let started = Instant::now();
    while batch_times.len() < MIN_REPS || started.elapsed() < MIN_TOTAL {
        let start = Instant::now();
        encoder.embed(texts).map_err(|err| err.to_string())?;
        batch_times.push(start.elapsed().as_secs_f64());

        let start = Instant::now();
        gemm.forward(&x, &mut out).map_err(|err| err.to_string())?;
        gemm_times.push(start.elapsed().as_secs_f64());

        let start = Instant::now();
        own.forward(&x, &mut out).map_err(|err| err.to_string())?;
        own_times.push(start.elapsed().as_secs_f64());
    }

    let gemm_flops = 2.0 * (rows * hidden * inter) as f64;
    Ok(BenchReport {
        batch_seconds: median(&mut batch_times),
        gemm_gflops: gemm_flops / median(&mut gemm_times) / 1e9,
        linear_gflops: gemm_flops / median(&mut own_times) / 1e9,
        linear_kernel,
        gemm_shape: format!("[{rows}, {hidden}] x [{hidden}, {inter}]"),
        reps: batch_times.len(),
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Loads the encoder from `model` (or the default folder) and applies `--max-tokens`.
fn load_encoder(
    model: Option<&Path>,
    max_tokens: Option<usize>,
) -> Result<SentenceEncoder, String> {
    let dir = match model {
        Some(dir) => dir.to_path_buf(),
        None => {
            let dir = crate::common::models_dir()?.join(DEFAULT_MODEL);
            if !dir.join("config.json").is_file() {
                return Err(format!(
                    "{DEFAULT_MODEL} not found in {}; run scripts/fetch-models.sh minilm or pass --model DIR",
                    dir.display()
                ));
            }
            dir
        }
    };
    let mut encoder = SentenceEncoder::load(&dir).map_err(|err| err.to_string())?;
    if let Some(max_tokens) = max_tokens {
        encoder
            .set_max_tokens(max_tokens)
            .map_err(|err| format!("--max-tokens: {err}"))?;
    }
    Ok(encoder)
}
