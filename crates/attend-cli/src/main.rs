//! The `attend` command line.

mod bench_matmul;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "attend", version, about = "Attention and inference on the CPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure kernels against this machine's baselines.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Quantized matrix products against memory copy and f32 GEMM.
    Matmul(bench_matmul::BenchMatmulArgs),
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(BenchCommand::Matmul(args)) => {
            bench_matmul::run(&args)?;
        }
    }
    Ok(())
}
