//! One module per subcommand; each returns the process exit code.

use std::process::ExitCode;

use crate::cli::{Cli, Command};

mod admin;
mod map;
mod mock;
mod serve;

pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Map(args) => map::run(&args),
        Command::Mock(args) => mock::run(args),
        Command::Serve(args) => serve::run(&args),
        Command::Status { store, json } => admin::status(&store, json),
        Command::DeadLetters(command) => admin::dead_letters(&command),
        Command::Rejected(command) => admin::rejected(&command),
    }
}

/// A multi-threaded tokio runtime for the commands that serve.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: call it before saying the service
/// listens, so that a signal sent as soon as it does stops it cleanly rather than
/// killing it. Call it inside the runtime.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{Signal, SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        let received = |signal: std::io::Result<Signal>| async move {
            match signal {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        async move {
            tokio::select! {
                () = received(interrupt) => {},
                () = received(terminate) => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Whether `err` is a write to a pipe whose reader has gone (`stipple ... | head`).
pub(crate) fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
