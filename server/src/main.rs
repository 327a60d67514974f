//! `meridian`: parses the configuration and runs the node.

use clap::Parser;
use meridian_server::config::{Cli, Command};

// A node allocates many small, short-lived buffers per request (JSON, records, headers);
// glibc's malloc took about 11% of a GET-heavy profile.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            // automerge instruments its load and parse functions with INFO spans, whose fields
            // the formatter records even when nothing inside logs: 12% of a merge-heavy profile
            tracing_subscriber::EnvFilter::try_from_env("MERIDIAN_LOG")
                .unwrap_or_else(|_| "info,automerge=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match Cli::parse().command {
        Command::Serve(args) => match args.resolve() {
            Ok(settings) => meridian_server::run(settings).await,
            Err(e) => {
                eprintln!("error: {e:#}");
                return std::process::ExitCode::from(2);
            }
        },
        Command::Demo(args) => meridian_server::demo::run(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
