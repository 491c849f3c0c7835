//! The `attend` command line.

mod bench_attention;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Counts heap bytes so that benchmarks can report the peak extra memory of a call.
#[global_allocator]
static ALLOCATOR: bench_attention::CountingAllocator = bench_attention::CountingAllocator::new();

#[derive(Parser)]
#[command(name = "attend", version, about = "Exact, fast attention on the CPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure kernels.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Time the tiled attention kernel (or the f64 oracle) on random inputs.
    Attention(bench_attention::BenchAttentionArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench { what } => match what {
            BenchCommand::Attention(args) => bench_attention::run(&args, &ALLOCATOR),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
