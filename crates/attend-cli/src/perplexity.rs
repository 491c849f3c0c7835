//! `attend perplexity`: llama.cpp's perplexity measure over a text file.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};

use attend_models::quant::Activations;

use crate::common::{init_threads, load_engine, resolve_model, write_error, SMOLLM2_FILE};

/// Options of `attend perplexity`.
#[derive(Debug, Clone, clap::Args)]
pub struct PerplexityArgs {
    /// GGUF model file (default: SmolLM2 in the model folder).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// UTF-8 text file to score.
    #[arg(long)]
    pub file: PathBuf,
    /// Tokens per chunk, at least 4; the second half of each chunk is scored.
    #[arg(long, default_value_t = 512, allow_negative_numbers = true)]
    pub ctx: usize,
    /// Activations of the quantized products: q8 (8-bit, fast, as llama.cpp) or f32
    /// (dequantised weights, f32 products: slower, closer to an f32 reference).
    #[arg(long, default_value = "q8")]
    pub activations: Activations,
    #[arg(long, help = crate::common::THREADS_HELP)]
    pub threads: Option<usize>,
    /// Print `{"ppl": ..., "ppl_stderr": ..., "chunks": ...}`.
    #[arg(long)]
    pub json: bool,
    /// Hide the progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// The shortest chunk the perplexity measure accepts.
const MIN_CTX: usize = 4;

/// Runs `attend perplexity`.
pub fn run(args: &PerplexityArgs) -> Result<(), String> {
    if args.ctx < MIN_CTX {
        return Err(format!(
            "--ctx {} is too small; pass at least {MIN_CTX} tokens per chunk",
            args.ctx
        ));
    }

    init_threads(args.threads)?;
    let text = std::fs::read_to_string(&args.file).map_err(|e| {
        format!(
            "failed to read --file {}: {e}; pass a UTF-8 text file",
            args.file.display()
        )
    })?;

    let path = resolve_model(args.model.as_deref(), SMOLLM2_FILE, "smollm2")?;
    let engine = load_engine(&path, args.quiet, args.activations)?;
    let tokens = engine.encode(&text).map_err(|e| e.to_string())?;
    // Two chunks at least, so that the standard error is defined.
    if tokens.len() / 2 < args.ctx {
        return Err(format!(
            "--file {} has {} tokens, but --ctx {} needs at least two chunks of that length; pass a longer text or a smaller --ctx",
            args.file.display(),
            tokens.len(),
            args.ctx,
        ));
    }

    let bar = if args.quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0).with_style(
            ProgressStyle::with_template("perplexity {bar:30} chunk {pos}/{len}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    };
    let result = engine
        .perplexity(&tokens, args.ctx, |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })
        .map_err(|e| e.to_string())?;
    bar.finish_and_clear();

    let mut stdout = std::io::stdout().lock();
    if args.json {
        let json = serde_json::json!({
            "ppl": result.ppl,
            "ppl_stderr": result.ppl_stderr,
            "chunks": result.chunks,
            "scored_tokens": result.scored_tokens,
        });
        writeln!(stdout, "{json}")
    } else {
        writeln!(
            stdout,
            "PPL = {:.4} +/- {:.5} ({} chunks of {} tokens, {} tokens scored)",
            result.ppl, result.ppl_stderr, result.chunks, args.ctx, result.scored_tokens
        )
    }
    .map_err(write_error)
}
