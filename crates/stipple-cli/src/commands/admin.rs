//! The admin commands: `status`, `dead-letters list|requeue|purge`, `rejected
//! list|purge`. They open the store named by the configuration (or `--store`), next to a
//! running service or not.

use std::process::ExitCode;
use std::sync::Arc;

use stipple_store::{SqliteOptions, Store};

use crate::cli::{DeadLetterCommand, PurgeArgs, RejectedCommand, StoreArgs};
use crate::config::Config;

fn open_store(args: &StoreArgs) -> anyhow::Result<Arc<dyn Store>> {
    let config = Config::load_store_only(args.config.as_deref())?;
    let url = args.store.clone().unwrap_or(config.store.url.clone());
    if url.starts_with("memory:") {
        anyhow::bail!(
            "store {url:?} lives only inside a running process: the admin commands need sqlite://PATH"
        );
    }
    let Some(path) = url.strip_prefix("sqlite://") else {
        anyhow::bail!(
            "unsupported store URL {url:?}: the admin commands open sqlite://PATH (e.g. \
             sqlite://./stipple-data/stipple.db); check store.url (or --store)"
        );
    };
    // The admin commands never create a store: a typo would otherwise look like an empty queue.
    anyhow::ensure!(
        std::path::Path::new(path).exists(),
        "there is no store at {path}: check store.url (or --store), relative paths are from the working directory"
    );
    let options = SqliteOptions {
        synchronous: config.synchronous()?,
        // Beside a running service: no lock, leases left alone, no appends.
        role: stipple_store::Role::Admin,
        ..SqliteOptions::default()
    };
    stipple_store::open(&url, options).map_err(anyhow::Error::from)
}

pub(crate) fn status(args: &StoreArgs, json: bool) -> anyhow::Result<ExitCode> {
    let store = open_store(args)?;
    let stats = super::runtime()?.block_on(store.stats())?;
    if json {
        out!("{}", serde_json::to_string_pretty(&stats)?)?;
    } else {
        out!("queued        {}", stats.queued)?;
        out!("dead letters  {}", stats.dead_letters)?;
        out!("rejected      {}", stats.rejected)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn dead_letters(command: &DeadLetterCommand) -> anyhow::Result<ExitCode> {
    match command {
        DeadLetterCommand::List { list } => {
            let store = open_store(&list.store)?;
            let (letters, stats) = super::runtime()?.block_on(async {
                let letters = store.dead_letters(usize::try_from(list.limit)?).await?;
                anyhow::Ok((letters, store.stats().await?))
            })?;
            if list.json {
                for letter in &letters {
                    out!("{}", serde_json::to_string(letter)?)?;
                }
            } else {
                if letters.is_empty() {
                    out!("no dead letters")?;
                }
                for l in &letters {
                    let status = l
                        .reason
                        .status
                        .map_or_else(|| "-".to_owned(), |s| s.to_string());
                    out!(
                        "{id}\t{at}\t{source}\t{message_id}\tstatus {status}\tattempts {attempts}\t{detail}",
                        id = l.id,
                        at = l.dead_at.format("%Y-%m-%dT%H:%M:%SZ"),
                        source = l.source,
                        message_id = one_line(&l.message_id),
                        attempts = l.attempts,
                        detail = one_line(&l.reason.detail),
                    )?;
                }
            }
            more_than_listed(letters.len(), stats.dead_letters, "dead letter(s)");
        }
        DeadLetterCommand::Requeue { store, all, ids } => {
            anyhow::ensure!(
                *all || !ids.is_empty(),
                "name the dead letters to requeue by id, or pass --all"
            );
            let store = open_store(store)?;
            let named = (!*all).then_some(ids.as_slice());
            let moved = super::runtime()?.block_on(store.requeue_dead_letters(named))?;
            out!(
                "requeued {moved} dead letter(s); a running service delivers them at its next lease"
            )?;
            let distinct = ids.iter().collect::<std::collections::HashSet<_>>().len();
            if !*all && moved < distinct as u64 {
                note!(
                    "error: {} of the ids named no dead letter (requeued already, or never one): \
                     `stipple dead-letters list` shows the ids",
                    distinct as u64 - moved
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        DeadLetterCommand::Purge { purge: args } => {
            let deleted = purge(args, |store, age| async move {
                store.purge_dead_letters(age).await
            })?;
            out!("deleted {deleted} dead letter(s)")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a purge for `args` (`--all` is an age of zero); how many rows went.
fn purge<F, Fut>(args: &PurgeArgs, run: F) -> anyhow::Result<u64>
where
    F: FnOnce(Arc<dyn Store>, std::time::Duration) -> Fut,
    Fut: std::future::Future<Output = Result<u64, stipple_store::StoreError>>,
{
    // clap requires one of the two; without `--older-than` it is `--all`.
    let age = args.older_than.unwrap_or_default();
    let store = open_store(&args.store)?;
    Ok(super::runtime()?.block_on(run(store, age))?)
}

pub(crate) fn rejected(command: &RejectedCommand) -> anyhow::Result<ExitCode> {
    match command {
        RejectedCommand::List { list } => {
            let store = open_store(&list.store)?;
            let (rejected, stats) = super::runtime()?.block_on(async {
                let rejected = store.rejected(usize::try_from(list.limit)?).await?;
                anyhow::Ok((rejected, store.stats().await?))
            })?;
            if list.json {
                for r in &rejected {
                    let mut value = serde_json::to_value(r)?;
                    // The raw input as text, not a byte array, so people can read it.
                    value["payload"] = String::from_utf8_lossy(&r.input.payload).into();
                    out!("{value}")?;
                }
            } else {
                if rejected.is_empty() {
                    out!("no rejected input")?;
                }
                for r in &rejected {
                    let index = r
                        .input
                        .index
                        .map_or_else(String::new, |i| format!(" item {i}"));
                    out!(
                        "{id}\t{at}\t{source}{index}\t{code}: {message}\t{payload}",
                        id = r.id,
                        at = r.received_at.format("%Y-%m-%dT%H:%M:%SZ"),
                        source = r.input.source,
                        code = r.input.code,
                        message = one_line(&r.input.message),
                        payload = one_line(&String::from_utf8_lossy(&r.input.payload)),
                    )?;
                }
            }
            more_than_listed(rejected.len(), stats.rejected, "rejected input(s)");
        }
        RejectedCommand::Purge { purge: args } => {
            let deleted = purge(
                args,
                |store, age| async move { store.purge_rejected(age).await },
            )?;
            out!("deleted {deleted} rejected input(s)")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Says on standard error (so that `--json` output stays lines of JSON) how many of
/// `kept` a list of the oldest `listed` left out.
fn more_than_listed(listed: usize, kept: u64, what: &str) {
    let more = kept.saturating_sub(listed as u64);
    if more > 0 {
        note!("{more} more {what}, newer than these: raise --limit to list them");
    }
}

/// At most 200 characters on one line, for a table.
fn one_line(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > 200 {
        format!("{}…", flat.chars().take(200).collect::<String>())
    } else {
        flat
    }
}
