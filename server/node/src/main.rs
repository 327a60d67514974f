//! `meridian`: parses the configuration and runs the node.

use clap::Parser;
use meridian_node::config::{Cli, Command, KeyCommand, LogFormat};

// A node allocates many small, short-lived buffers per request (JSON, records, headers);
// glibc's malloc took about 11% of a GET-heavy profile.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // automerge instruments its load and parse functions with INFO spans, whose fields the
    // formatter records even when nothing inside logs: 12% of a merge-heavy profile
    let filter = tracing_subscriber::EnvFilter::try_from_env("MERIDIAN_LOG")
        .unwrap_or_else(|_| "info,automerge=warn".into());
    let otlp = match cli.otlp_endpoint.as_deref().map(meridian_node::otlp::start) {
        None => None,
        Some(Ok(started)) => Some(started),
        Some(Err(e)) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logs(
        cli.log_format,
        filter,
        otlp.as_ref().map(|(_, t)| t.clone()),
    );
    let result = match cli.command {
        Command::Serve(args) => match args.resolve() {
            Ok(settings) => meridian_node::run(settings).await,
            Err(e) => {
                eprintln!("error: {e:#}");
                return std::process::ExitCode::from(2);
            }
        },
        Command::Demo(args) => meridian_node::demo::run(args).await,
        Command::Backup(args) => return finish(args.run().await, 1, |m| println!("{m}")),
        Command::Restore(args) => {
            return finish(args.run().await, 1, |n| {
                println!("restored {n} documents; start the node with this data dir, its new id and its peers")
            })
        }
        Command::Drain(args) => return finish(args.run().await, 1, |a| println!("{a}")),
        Command::Region(cmd) => return finish(cmd.run().await, 1, |a| println!("{a}")),
        Command::Placement(cmd) => return finish(cmd.run().await, 1, |a| println!("{a}")),
        Command::Cert(args) => {
            return finish(args.run(), 2, |files| {
                for f in files {
                    println!("{}", f.display());
                }
            })
        }
        Command::Repair(args) => return finish(args.run(), 1, |r| print!("{r}")),
        Command::Key(KeyCommand::Create(args)) => {
            return finish(args.run(), 2, |(key, entry)| {
                println!("{key}\n\n{entry}");
                eprintln!(
                    "The first line is the key: it is shown once, store it now. Add the entry \
                     to the auth file, then send the node SIGHUP (kill -HUP <pid>)."
                );
            })
        }
    };
    if let Some((provider, _)) = otlp {
        // what the batch still holds goes out now (bounded by the exporter's timeout)
        let _ = provider.shutdown();
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Log lines to stderr (text or JSON), and request spans to OTLP when a tracer is given.
fn init_logs(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    otlp: Option<opentelemetry_sdk::trace::Tracer>,
) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Text => lines
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        // one object per line; an event inside a request carries its span's trace_id
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    // only the request spans are exported (automerge's and others' stay local)
    let spans = otlp.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.is_span() && m.name() == "request"
            }))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .with(spans)
        .init();
}

/// A one-shot command's outcome: `show` its result and exit 0, or print the error and exit with
/// `failure` (2 for bad input, 1 for a failure).
fn finish<T, E: std::fmt::Display>(
    result: Result<T, E>,
    failure: u8,
    show: impl FnOnce(T),
) -> std::process::ExitCode {
    match result {
        Ok(v) => {
            show(v);
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(failure)
        }
    }
}
