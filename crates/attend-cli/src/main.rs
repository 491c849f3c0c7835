//! The `attend` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::KvPlan(args) => kv_plan::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
