//! Benchmark tools for ringgate. `rg-load` is an open-loop HTTP/1.1 load generator with
//! coordinated-omission correction (latency is measured from when each request was
//! *scheduled*, as wrk2 does); the harness scripts live beside this crate in `bench/`.
#![deny(rust_2018_idioms)]

use std::process::ExitCode;

/// The `main` of a bench tool: parse the arguments (`Ok(None)`: print `usage`), run, and
/// exit 0, 1 when the run failed, 2 when the arguments were wrong; errors go to stderr
/// prefixed with `name`.
pub fn tool_main<A>(
    name: &str,
    usage: &str,
    parse: impl FnOnce(std::env::Args) -> anyhow::Result<Option<A>>,
    run: impl FnOnce(A) -> anyhow::Result<()>,
) -> ExitCode {
    let mut argv = std::env::args();
    argv.next();
    match parse(argv) {
        Ok(None) => {
            print!("{usage}");
            ExitCode::SUCCESS
        }
        Ok(Some(args)) => match run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{name}: {e:#}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::from(2)
        }
    }
}
