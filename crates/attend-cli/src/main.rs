//! The `attend` command line.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod embed;
mod kv_plan;

#[derive(Parser)]
#[command(name = "attend", version, about = "Exact, fast attention for the CPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the KV cache memory a model shape needs at a given context.
    KvPlan(kv_plan::KvPlanArgs),
    /// Print the sentence embedding of each input (all-MiniLM-L6-v2 by default).
    Embed(embed::EmbedArgs),
    /// Print the cosine similarity of two sentences' embeddings.
    Similarity(embed::SimilarityArgs),
    /// Measure kernels and models.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Time sentence embeddings (sentences/s) against an f32 GEMM in the same run.
    Embed(embed::BenchEmbedArgs),
}

fn main() -> ExitCode {
    // Warnings (such as truncated inputs) show by default; RUST_LOG overrides.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::builder()
                .with_default_directive(tracing_subscriber::filter::LevelFilter::WARN.into())
                .from_env_lossy(),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::KvPlan(args) => kv_plan::run(args),
        Command::Embed(args) => embed::run_embed(args),
        Command::Similarity(args) => embed::run_similarity(args),
        Command::Bench { what } => match what {
            BenchCommand::Embed(args) => embed::run_bench(args),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
