//! The `ringgate` binary: read the environment, start the cores, wait for signals, drain.

use std::{io::IsTerminal, process::ExitCode};

use ringgate::{
    config::{self, Config, LogFormat},
    rt,
    shutdown::{signals, SignalKind},
    Gateway,
};
use tracing::{error, info, warn};

/// mimalloc instead of the system allocator: requests allocate and free many small,
/// short-lived buffers on every core, which glibc's malloc serves with more work per call
/// (arena locks, consolidation); measured in bench/RESULTS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a configuration error (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("-h" | "--help") => {
            print!("{}", config::help_text());
            return ExitCode::SUCCESS;
        }
        Some("-V" | "--version") => {
            println!("ringgate {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("ringgate takes no arguments (got {other:?}); configuration comes from RINGGATE_* variables, see --help");
            return ExitCode::from(EXIT_CONFIG);
        }
        None => {}
    }
    // Before anything looks a host name up (DATABASE_URL's host is resolved while the
    // configuration is read).
    let pinned_name_services = rt::pin_static_name_services();
    // Log config errors with a plain subscriber before the configured one exists.
    let config = match tracing::subscriber::with_default(plain_stderr(), Config::from_env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringgate: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = init_tracing(&config) {
        eprintln!("ringgate: invalid configuration: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    if pinned_name_services {
        info!(
            "static binary: host names are looked up in /etc/hosts and DNS only (no NSS modules)"
        );
    } else if rt::STATIC_BINARY {
        warn!("static binary: could not limit host lookups to /etc/hosts and DNS; NSS modules may be loaded");
    }
    if let Err(error) = rt::disable_transparent_huge_pages() {
        warn!(%error, "could not turn transparent huge pages off");
    }
    match rt::raise_nofile_limit() {
        Ok(n) => info!(nofile = n, "open-file limit raised"),
        Err(error) => warn!(%error, "could not raise the open-file limit"),
    }
    let signals = match signals() {
        Ok(s) => s,
        Err(error) => {
            error!(%error, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let mut gateway = match Gateway::start(config.clone()) {
        Ok(g) => g,
        Err(error) => {
            error!(%error, "cannot start");
            eprintln!("ringgate: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for signal in signals {
        match signal {
            SignalKind::Reload => {
                let _ = gateway.reload_tls();
            }
            SignalKind::Drain => break,
        }
    }
    let started = std::time::Instant::now();
    info!(
        timeout = ?config.drain_timeout,
        open_connections = gateway.registry().open_connections_total(),
        "draining: listeners closed, /ready is 503, finishing in-flight requests"
    );
    let report = gateway.drain();
    let elapsed_ms = started.elapsed().as_millis() as u64;
    if report.cut_requests > 0 || report.cut_connections > 0 {
        warn!(
            cut_requests = report.cut_requests,
            cut_connections = report.cut_connections,
            elapsed_ms,
            "drain timeout passed; cut what was left"
        );
    } else {
        info!(elapsed_ms, "drained cleanly; exiting");
    }
    ExitCode::SUCCESS
}

fn plain_stderr() -> impl tracing::Subscriber {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .finish()
}

fn init_tracing(config: &Config) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_filter)
        .map_err(|e| format!("{}={:?} is not valid: expected an EnvFilter directive like `info,ringgate=debug` ({e})", config::ENV_LOG, config.log_filter))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_thread_names(true);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Plain => builder.init(),
    }
    Ok(())
}
