//! `stipple mock`: the mock Pointillist server in the foreground.

use std::process::ExitCode;

use anyhow::Context as _;
use stipple_mock::{Faults, MockConfig};

use crate::cli::MockArgs;

pub(crate) fn run(args: MockArgs) -> anyhow::Result<ExitCode> {
    let faults = Faults {
        error_rate: args.error_rate,
        throttle_rate: args.throttle_rate,
        retry_after_secs: args.retry_after,
        unauthorized_for: args.unauthorized_for,
        latency: args.latency.unwrap_or_default(),
        drop_rate: args.drop_rate,
    };
    faults.validate().context("bad fault flags")?;
    let config = MockConfig {
        token: args.token,
        actor_type: args.actor_type,
        faults,
        record: !args.no_record,
    };
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let shutdown = super::shutdown_signal();
        // Scripts wait for this line to know the port (with --listen 127.0.0.1:0).
        println!("mock Pointillist listening on http://{addr}");
        stipple_mock::serve(listener, config, shutdown)
            .await
            .context("the mock server failed")
    })?;
    Ok(ExitCode::SUCCESS)
}
