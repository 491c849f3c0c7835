//! The `attend` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench_decode;
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
    /// Time a kernel and print one result.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Time the split-KV decode kernel over a filled KV cache beside a memory copy.
    Decode(bench_decode::BenchDecodeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::KvPlan(args) => kv_plan::run(args),
        Command::Bench(BenchCommand::Decode(args)) => bench_decode::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
