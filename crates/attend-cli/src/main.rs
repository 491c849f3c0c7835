//! The `attend` command line.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};

mod bench_attention;
mod bench_decode;
mod bench_generate;
mod bench_machine;
mod bench_matmul;
mod chat;
mod common;
mod embed;
mod generate;
mod kv_plan;
mod perplexity;
mod tokenize;

/// Counts heap bytes so that benchmarks can report the peak extra memory of a call.
#[global_allocator]
static ALLOCATOR: bench_attention::CountingAllocator = bench_attention::CountingAllocator::new();

#[derive(Parser)]
#[command(
    name = "attend",
    version,
    about = "Exact, fast attention and inference on the CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt with a GGUF model (default: SmolLM2).
    Generate(generate::GenerateArgs),
    /// Chat interactively, keeping the KV cache between turns.
    Chat(chat::ChatArgs),
    /// Print the token ids of a text.
    Tokenize(tokenize::TokenizeArgs),
    /// Measure perplexity over a text file as llama.cpp's perplexity tool does.
    Perplexity(perplexity::PerplexityArgs),
    /// Print the sentence embedding of each input (all-MiniLM-L6-v2 by default).
    Embed(embed::EmbedArgs),
    /// Print the cosine similarity of two sentences' embeddings.
    Similarity(embed::SimilarityArgs),
    /// Print the KV cache memory a model shape needs at a given context.
    KvPlan(kv_plan::KvPlanArgs),
    /// Measure kernels and models against this machine's baselines.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Time the split-KV decode kernel over a filled KV cache beside a memory copy.
    Decode(bench_decode::BenchDecodeArgs),
    /// Time sentence embeddings (sentences/s) against an f32 GEMM in the same run.
    Embed(embed::BenchEmbedArgs),
    /// Prefill and decode tokens/s of a GGUF model.
    Generate(bench_generate::BenchGenerateArgs),
    /// Time the tiled attention kernel (or the f64 oracle) on random inputs.
    Attention(bench_attention::BenchAttentionArgs),
    /// Quantized matrix products against memory copy and f32 GEMM.
    Matmul(bench_matmul::BenchMatmulArgs),
    /// This machine's f32 GEMM rate and memory copy bandwidth.
    Machine(bench_machine::BenchMachineArgs),
}

fn main() -> ExitCode {
    restore_default_sigpipe();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ATTEND_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(&err),
    };
    let result: Result<(), String> = match &cli.command {
        Command::Generate(args) => generate::run_generate(args),
        Command::Chat(args) => chat::run_chat(args),
        Command::Tokenize(args) => tokenize::run(args),
        Command::Perplexity(args) => perplexity::run(args),
        Command::Embed(args) => embed::run_embed(args),
        Command::Similarity(args) => embed::run_similarity(args),
        Command::KvPlan(args) => kv_plan::run(args),
        Command::Bench(BenchCommand::Embed(args)) => embed::run_bench(args),
        Command::Bench(BenchCommand::Decode(args)) => bench_decode::run(args),
        Command::Bench(BenchCommand::Generate(args)) => bench_generate::run(args),
        Command::Bench(BenchCommand::Attention(args)) => {
            bench_attention::run(args, &ALLOCATOR).map_err(|e| e.to_string())
        }
        Command::Bench(BenchCommand::Machine(args)) => bench_machine::run(args),
        Command::Bench(BenchCommand::Matmul(args)) => bench_matmul::run(args)
            .map(|_| ())
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Prints `--help` and `--version` as clap renders them, and any other parse
/// error as one line on stderr, exiting with clap's status (2 for usage errors).
fn usage_error(err: &clap::Error) -> ExitCode {
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = err.print();
        return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(2));
    }
    eprintln!("{}", one_line(&err.render().to_string()));
    ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(2))
}

/// Joins clap's multi-line error text into one line: the message, its `tip:`
/// lines and the help pointer, leaving out the usage block.
fn one_line(rendered: &str) -> String {
    let mut line = String::new();
    for part in rendered.lines().map(str::trim) {
        if part.is_empty() || part.starts_with("Usage:") {
            continue;
        }
        if part.starts_with("For more information") {
            line.push_str("; see --help");
            break;
        }
        if !line.is_empty() {
            line.push_str(if line.ends_with(':') { " " } else { "; " });
        }
        line.push_str(part);
    }
    line
}

/// Lets a write to a closed pipe (`attend tokenize ... | head -c 10`) end the
/// process quietly, as it does for C programs, instead of failing inside
/// `println!` with a panic. Rust sets `SIGPIPE` to ignored before `main`.
#[cfg(unix)]
fn restore_default_sigpipe() {
    // The C library's `signal`, which std already links on every Unix target.
    extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    const SIGPIPE: i32 = 13;
    const SIG_DFL: usize = 0;
    // SAFETY: `signal` is called once, before any other thread exists, with a
    // valid signal number (13 is SIGPIPE on Linux and the BSDs, macOS included)
    // and SIG_DFL, which installs no Rust handler that could run at a bad time.
    unsafe {
        signal(SIGPIPE, SIG_DFL);
    }
}

#[cfg(not(unix))]
fn restore_default_sigpipe() {}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_error(args: &[&str]) -> String {
        let err = match Cli::try_parse_from(std::iter::once("attend").chain(args.iter().copied())) {
            Ok(_) => panic!("{args:?} parsed"),
            Err(err) => err,
        };
        one_line(&err.render().to_string())
    }

    #[test]
    fn unknown_flag_is_one_line() {
        let line = parse_error(&["generate", "--bogus", "hi"]);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("'--bogus'"), "{line}");
        assert!(line.ends_with("see --help"), "{line}");
    }

    #[test]
    fn missing_argument_names_it() {
        let line = parse_error(&["generate"]);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("<PROMPT>"), "{line}");
        assert!(!line.contains("Usage"), "{line}");
    }
}
