//! `meridian`: parses the configuration and runs the node.

use clap::Parser;
use meridian_node::config::{Cli, Command, KeyCommand};

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
            Ok(settings) => meridian_node::run(settings).await,
            Err(e) => {
                eprintln!("error: {e:#}");
                return std::process::ExitCode::from(2);
            }
        },
        Command::Demo(args) => meridian_node::demo::run(args).await,
        Command::Backup(args) => match args.run().await {
            Ok(manifest) => {
                println!("{manifest}");
                return std::process::ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                return std::process::ExitCode::from(1);
            }
        },
        Command::Restore(args) => match args.run().await {
            Ok(n) => {
                println!("restored {n} documents; start the node with this data dir, its new id and its peers");
                return std::process::ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                return std::process::ExitCode::from(1);
            }
        },
        Command::Drain(args) => match args.run().await {
            Ok(answer) => {
                println!("{answer}");
                return std::process::ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                return std::process::ExitCode::from(1);
            }
        },
        Command::Cert(args) => match args.run() {
            Ok(files) => {
                for f in files {
                    println!("{}", f.display());
                }
                return std::process::ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                return std::process::ExitCode::from(2);
            }
        },
        Command::Repair(args) => match args.run() {
            Ok(report) => {
                print!("{report}");
                return std::process::ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                return std::process::ExitCode::from(1);
            }
        },
        Command::Key(KeyCommand::Create(args)) => match args.run() {
            Ok((key, entry)) => {
                println!("{key}\n\n{entry}");
                eprintln!(
                    "The first line is the key: it is shown once, store it now. Add the entry \
                     to the auth file, then send the node SIGHUP (kill -HUP <pid>)."
                );
                return std::process::ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                return std::process::ExitCode::from(2);
            }
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
