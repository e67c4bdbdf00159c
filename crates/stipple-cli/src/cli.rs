//! The command line, declared with clap. Every flag's help is written for the user.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Stipple: Segment-spec events in, Pointillist events out.
///
/// Stipple accepts events from every Segment client library over Segment's own HTTP
/// Tracking API, maps them to Pointillist events and delivers them reliably.
#[derive(Debug, Parser)]
#[command(name = "stipple", version, about, long_about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the service: the Segment-compatible ingress, the durable queue and delivery.
    ///
    /// Settings come from the TOML file given with --config, and every key can be set
    /// or overridden by an environment variable `STIPPLE_<SECTION>__<KEY>`, e.g.
    /// STIPPLE_POINTILLIST__API_TOKEN; a source's write key by
    /// `STIPPLE_SOURCES__<NAME>__WRITE_KEY`. See docs/configuration.md.
    Serve(ServeArgs),
    /// Map Segment messages to Pointillist events, offline.
    ///
    /// Reads one JSON message per line (a `{"batch": [...]}` object is also accepted,
    /// per line or as the whole input) and writes one Pointillist event per line, in
    /// input order. Bad lines are reported on stderr with their line number and
    /// validation code; the rest still go through, and the exit status is 1.
    /// Messages keep their own `timestamp` (corrected for clock skew when they carry the
    /// `receivedAt` of an ingress); a message with none gets the current time. A message
    /// without a `messageId` maps without that label: the ingress gives every message one
    /// on receipt, this command does not make one up.
    Map(MapArgs),
    /// Show the queue depth, dead letters and rejected input kept in the store.
    Status {
        #[command(flatten)]
        store: StoreArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List, requeue or purge events Pointillist refused or that ran out of retries.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// List or purge input the ingress refused (bad batch items, invalid messages), as received.
    #[command(subcommand)]
    Rejected(RejectedCommand),
    /// Run a mock Pointillist server for tests and first tries.
    ///
    /// It checks every request against the Pointillist contract, records what it
    /// accepts (GET /mock/events) and injects faults set here or at run time
    /// (PUT /mock/faults).
    Mock(MockArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The configuration file (TOML).
    #[arg(long, short, env = "STIPPLE_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Deliver to a mock Pointillist started in this process instead of Pointillist,
    /// to try Stipple without an account. Nothing reaches Pointillist.
    #[arg(long)]
    pub(crate) mock: bool,
}

/// Which store the admin commands open.
#[derive(Debug, Args)]
pub(crate) struct StoreArgs {
    /// The configuration file whose `[store]` to open (no other section is read).
    #[arg(long, short, env = "STIPPLE_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// The store URL, overriding the configuration (e.g. `sqlite://./stipple-data/stipple.db`).
    #[arg(long, value_name = "URL")]
    pub(crate) store: Option<String>,
}

/// What the `list` commands show and how.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// At most this many (1 or more).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) limit: u32,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeadLetterCommand {
    /// List dead letters, oldest first: id, time, source, messageId, status, attempts, reason.
    List {
        #[command(flatten)]
        list: ListArgs,
    },
    /// Put dead letters back in the queue, to be delivered again.
    Requeue {
        #[command(flatten)]
        store: StoreArgs,
        /// Requeue every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// The ids to requeue (as `dead-letters list` shows them).
        #[arg(value_name = "ID", value_parser = clap::value_parser!(i64).range(1..))]
        ids: Vec<i64>,
    },
    /// Delete dead letters for good (`store.dead_letter_retention` does it by age, as the
    /// service runs).
    Purge {
        #[command(flatten)]
        purge: PurgeArgs,
    },
}

/// Which kept rows a `purge` command deletes.
#[derive(Debug, Args)]
#[group(skip)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["older_than", "all"])))]
pub(crate) struct PurgeArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// Delete those at least this old, e.g. `7d`, `12h`.
    #[arg(long, value_name = "AGE", value_parser = duration)]
    pub(crate) older_than: Option<std::time::Duration>,
    /// Delete all of them.
    #[arg(long)]
    pub(crate) all: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RejectedCommand {
    /// List rejected input, oldest first, a line each: id, time, source (with `item N` for a
    /// batch item), `code: message`, the input as received; tab-separated.
    List {
        #[command(flatten)]
        list: ListArgs,
    },
    /// Delete rejected input for good (`store.rejected_retention` does it by age, as the
    /// service runs).
    Purge {
        #[command(flatten)]
        purge: PurgeArgs,
    },
}

#[derive(Debug, Args)]
pub(crate) struct MapArgs {
    /// File of Segment messages; `-` or nothing reads standard input.
    pub(crate) file: Option<PathBuf>,
    /// The `eventSource` of every event.
    #[arg(
        long,
        default_value = "segment",
        value_name = "NAME",
        value_parser = clap::builder::NonEmptyStringValueParser::new()
    )]
    pub(crate) event_source: String,
    /// The primary actor type (not `account`, the group call's).
    #[arg(long, default_value = "customer", value_name = "TYPE", value_parser = actor_type)]
    pub(crate) actor_type: String,
    /// Pretty-print each event over several lines instead of one line each.
    #[arg(long)]
    pub(crate) pretty: bool,
}

#[derive(Debug, Args)]
pub(crate) struct MockArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9090", value_name = "ADDR")]
    pub(crate) listen: SocketAddr,
    /// The API token requests must carry in their `apiToken` header.
    #[arg(
        long,
        env = "STIPPLE_MOCK_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        value_parser = clap::builder::NonEmptyStringValueParser::new()
    )]
    pub(crate) token: String,
    /// The primary actor type every event's `actors` must hold (`pointillist.actor_type`
    /// of the service that delivers here).
    #[arg(
        long,
        default_value = stipple_mock::DEFAULT_ACTOR_TYPE,
        value_name = "TYPE",
        value_parser = actor_type
    )]
    pub(crate) actor_type: String,
    /// Share of requests (0 to 1) answered with a 5xx.
    #[arg(long, default_value_t = 0.0, value_name = "SHARE", value_parser = share)]
    pub(crate) error_rate: f64,
    /// Share of requests (0 to 1) answered 429.
    #[arg(long, default_value_t = 0.0, value_name = "SHARE", value_parser = share)]
    pub(crate) throttle_rate: f64,
    /// The `Retry-After` seconds sent with a 429.
    #[arg(long, default_value_t = 1, value_name = "SECONDS")]
    pub(crate) retry_after: u64,
    /// Answer 401 to everything for this long from start (e.g. `30s`, `5m`).
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub(crate) unauthorized_for: Option<Duration>,
    /// Delay added before every answer (e.g. `20ms`).
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub(crate) latency: Option<Duration>,
    /// Share of requests (0 to 1) whose connection is dropped without an answer.
    #[arg(long, default_value_t = 0.0, value_name = "SHARE", value_parser = share)]
    pub(crate) drop_rate: f64,
    /// Only count accepted events instead of keeping them (for load tests).
    #[arg(long)]
    pub(crate) no_record: bool,
}

/// A share of requests: a number from 0 to 1.
fn share(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => {
            Err("expected a share of requests, a number from 0 to 1 (0.1 is one in ten)".to_owned())
        }
    }
}

/// A duration as the configuration writes them (`30d`, `10s`), with an example when it is
/// not one.
fn duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{e}: write a duration such as \"10s\", \"5m\" or \"30d\""))
}

/// An actor type as `pointillist.actor_type` takes it: not empty, not the group call's.
fn actor_type(text: &str) -> Result<String, String> {
    match text {
        "" => Err("an actor type must not be empty".to_owned()),
        stipple_core::ACCOUNT => Err(format!(
            "the actor type must not be \"{}\": group calls send their group as that actor",
            stipple_core::ACCOUNT
        )),
        _ => Ok(text.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }

    /// Values that would do something other than what was meant are refused by name.
    #[test]
    fn values_that_mean_nothing_are_refused() {
        use clap::Parser as _;
        for (args, expected) in [
            (
                &["stipple", "dead-letters", "list", "--limit", "0"][..],
                "--limit",
            ),
            (&["stipple", "rejected", "list", "--limit", "0"], "--limit"),
            (&["stipple", "dead-letters", "requeue", "--", "-1"], "-1"),
            (
                &["stipple", "rejected", "purge", "--older-than", "soon"],
                "such as \"10s\"",
            ),
            (
                &["stipple", "map", "--actor-type", "account"],
                "\"account\"",
            ),
            (&["stipple", "map", "--actor-type", ""], "--actor-type"),
            (
                &["stipple", "mock", "--token", "t", "--actor-type", "account"],
                "\"account\"",
            ),
            (
                &[
                    "stipple",
                    "mock",
                    "--token",
                    "t",
                    "--unauthorized-for",
                    "soon",
                ],
                "such as \"10s\"",
            ),
        ] {
            let err = super::Cli::try_parse_from(args).unwrap_err().to_string();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
        for flag in ["--error-rate", "--throttle-rate", "--drop-rate"] {
            for bad in ["2", "1.5", "x"] {
                let err =
                    super::Cli::try_parse_from(["stipple", "mock", "--token", "t", flag, bad])
                        .unwrap_err()
                        .to_string();
                assert!(
                    err.contains(flag) && err.contains("a number from 0 to 1"),
                    "{err}"
                );
            }
        }
        assert!(
            super::Cli::try_parse_from(["stipple", "dead-letters", "list", "--limit", "1"]).is_ok()
        );
    }
}
