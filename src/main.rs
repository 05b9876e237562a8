//! The `gateway` binary: command line, logging, the async runtime, exit codes.
//! Exit codes: 0 success, 2 invalid config (nothing was started), 1 any other failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "A TLS front door for web applications"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// Validate a config file: exit 0 when valid, 2 with every error listed when not.
    Check {
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match gateway::check_config(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(errs) => {
                eprintln!("{errs}");
                eprintln!("{} error(s) in {}", errs.len(), config.display());
                ExitCode::from(2)
            }
        },
        Command::Run { config } => run(config),
    }
}

fn run(config: PathBuf) -> ExitCode {
    init_logging();
    // Validate before building the runtime, so a bad config binds nothing.
    let workers = match gateway::check_config(&config) {
        Ok(loaded) => loaded.raw.server.worker_threads,
        Err(errs) => {
            eprintln!("{errs}");
            eprintln!("{} error(s) in {}", errs.len(), config.display());
            return ExitCode::from(2);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if workers > 0 {
        builder.worker_threads(workers);
    }
    let rt = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        match gateway::Gateway::start(&config).await {
            Ok(gw) => {
                if gw.run_until_signal().await {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(e.exit_code() as u8)
            }
        }
    })
}

fn init_logging() {
    use tracing_subscriber::filter::{filter_fn, EnvFilter};
    use tracing_subscriber::prelude::*;
    // Access log: JSON lines on stdout. Everything else: human-readable on stderr.
    let access = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(std::io::stdout)
        .with_filter(filter_fn(|m| m.target() == "access"));
    let diagnostics = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(
            EnvFilter::try_from_env("GATEWAY_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_filter(filter_fn(|m| m.target() != "access"));
    tracing_subscriber::registry()
        .with(access)
        .with(diagnostics)
        .init();
}
