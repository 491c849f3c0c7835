//! The `attend` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench_matmul;
mod kv_plan;

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
    /// Quantized matrix products against memory copy and f32 GEMM.
    Matmul(bench_matmul::BenchMatmulArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), String> = match &cli.command {
        Command::KvPlan(args) => kv_plan::run(args),
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
