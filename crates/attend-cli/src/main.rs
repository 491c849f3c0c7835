//! The `attend` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench_attention;
mod bench_matmul;
mod kv_plan;

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
    /// Print the KV cache memory a model shape needs at a given context.
    KvPlan(kv_plan::KvPlanArgs),
    /// Measure kernels and models against this machine's baselines.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Time the tiled attention kernel (or the f64 oracle) on random inputs.
    Attention(bench_attention::BenchAttentionArgs),
    /// Quantized matrix products against memory copy and f32 GEMM.
    Matmul(bench_matmul::BenchMatmulArgs),
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
        Command::KvPlan(args) => kv_plan::run(args),
        Command::Bench(BenchCommand::Attention(args)) => {
            bench_attention::run(args, &ALLOCATOR).map_err(|e| e.to_string())
        }
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
