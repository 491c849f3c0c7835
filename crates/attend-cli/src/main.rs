//! The `attend` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench_attention;
mod bench_decode;
mod bench_generate;
mod bench_machine;
mod bench_matmul;
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
    Chat(generate::ChatArgs),
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ATTEND_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result: Result<(), String> = match &cli.command {
        Command::Generate(args) => generate::run_generate(args),
        Command::Chat(args) => generate::run_chat(args),
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
