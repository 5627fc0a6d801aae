//! The `flow` binary: parses the command line, reads configuration from flags and
//! `FLOW__SECTION__KEY` environment variables, and dispatches to the library crates.
//! It is the only crate that reads the environment or prints.

mod alloc;
mod bench;
mod dags;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "flow",
    version,
    about = "flow: an Airflow-compatible workflow orchestrator"
)]
struct Cli {
    /// The folder DAG files are read from.
    #[arg(
        long,
        global = true,
        env = "FLOW__CORE__DAGS_FOLDER",
        default_value = "dags"
    )]
    dags_folder: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// DAG operations: validate, list, show, next-runs, schema.
    Dags {
        #[command(subcommand)]
        command: dags::DagsCommand,
    },
    /// Benchmarks (not tests): measure flow on this machine.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dags { command } => dags::run(command, &cli.dags_folder),
        Command::Bench { command } => bench::run(command),
        Command::Version => {
            println!("flow {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[global_allocator]
pub static ALLOC: alloc::Counting = alloc::Counting::new();
