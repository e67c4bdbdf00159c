//! Measures the SQLite store: durable appends per second for batches of Segment-sized
//! events from concurrent tasks, and the memory a process needs with a long queue.
//!
//! ```text
//! cargo run --release -p stipple-store --example append_bench -- [--sync full|normal]
//!     [--seconds 10] [--tasks 8] [--batch 100] [--payload 400] [--dir PATH] [--no-dedup]
//! cargo run --release -p stipple-store --example append_bench -- --rss [--events 1000000]
//! cargo run --release -p stipple-store --example append_bench -- --deliver [--events 200000]
//!     [--lease 256] [--sync full|normal]
//! ```
//!
//! `--deliver` queues `--events`, then drains them the way delivery does (one task leasing
//! `--lease` at a time, one acknowledging up to 1024 at a time) and reports the rate and
//! the store threads' CPU per delivered event.
//!
//! Without `--sync` both settings run one after the other, each on a fresh file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use stipple_store::{Append, NewEvent, SqliteOptions, SqliteStore, Store, Synchronous};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Debug, Clone)]
struct Args {
    sync: Option<Synchronous>,
    seconds: u64,
    tasks: usize,
    batch: usize,
    payload: usize,
    dir: Option<PathBuf>,
    rss: bool,
    events: usize,
    window: Duration,
    deliver: bool,
    lease: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        sync: None,
        seconds: 10,
        tasks: 8,
        batch: 100,
        payload: 400,
        dir: None,
        rss: false,
        events: 1_000_000,
        window: DAY,
        deliver: false,
        lease: 256,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{v}: {e}"));
        match flag.as_str() {
            "--sync" => args.sync = Some(value()?.parse().map_err(|e| format!("{e}"))?),
            "--seconds" => args.seconds = number(value()?)? as u64,
            "--tasks" => args.tasks = number(value()?)?,
            "--batch" => args.batch = number(value()?)?,
            "--payload" => args.payload = number(value()?)?,
            "--events" => args.events = number(value()?)?,
            "--dir" => args.dir = Some(PathBuf::from(value()?)),
            "--rss" => args.rss = true,
            "--deliver" => args.deliver = true,
            "--lease" => args.lease = number(value()?)?,
            "--no-dedup" => args.window = Duration::ZERO,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

/// Unique, random-looking message ids (like the UUIDs Segment's libraries send), so the
/// dedup index sees the same scattered inserts as in production.
fn message_id(n: u64) -> String {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    let hi = z ^ (z >> 31);
    format!("{hi:016x}-{n:016x}")
}

/// A Segment track call of about `size` bytes.
fn payload(message_id: &str, size: usize) -> Vec<u8> {
    let mut json = format!(
        r#"{{"type":"track","event":"Order Completed","userId":"user-{}","messageId":"{message_id}","timestamp":"2026-01-01T12:00:00.000Z","receivedAt":"2026-01-01T12:00:00.100Z","context":{{"library":{{"name":"analytics-node","version":"3.1.0"}},"ip":"203.0.113.7"}},"properties":{{"total":42.5,"currency":"EUR","sku":"#,
        &message_id[..8]
    );
    json.push('"');
    while json.len() + 3 < size {
        json.push('x');
    }
    json.push_str(r#""}}"#);
    json.into_bytes()
}

fn batch(next: &AtomicU64, size: usize, payload_size: usize) -> Append {
    Append {
        events: (0..size)
            .map(|_| {
                let id = message_id(next.fetch_add(1, Ordering::Relaxed));
                NewEvent {
                    source: "web".into(),
                    payload: payload(&id, payload_size),
                    message_id: id,
                }
            })
            .collect(),
        rejected: Vec::new(),
    }
}

async fn throughput(args: &Args, sync: Synchronous, dir: &Path) -> Result<(), String> {
    let path = dir.join(format!("bench-{sync}.db"));
    remove_store(&path);
    let options = SqliteOptions {
        synchronous: sync,
        ..SqliteOptions::default()
    };
    let before = writer_threads();
    let store = Arc::new(SqliteStore::open(&path, options).map_err(|e| e.to_string())?);
    // The thread names itself once running: look until it has.
    let mut writer = None;
    for _ in 0..1_000 {
        writer = writer_threads().into_iter().find(|t| !before.contains(t));
        if writer.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let appended = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.tasks {
        let (store, next, stop, appended) = (
            Arc::clone(&store),
            Arc::clone(&next),
            Arc::clone(&stop),
            Arc::clone(&appended),
        );
        let (size, payload_size, window) = (args.batch, args.payload, args.window);
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let append = batch(&next, size, payload_size);
                let start = Instant::now();
                let done = store
                    .append(append, window)
                    .await
                    .map_err(|e| e.to_string())?;
                latencies.push(start.elapsed());
                let fresh = done.duplicate.iter().filter(|d| !**d).count();
                appended.fetch_add(fresh as u64, Ordering::Relaxed);
            }
            Ok::<_, String>(latencies)
        });
    }
    let started = Instant::now();
    let commits_before = store.commit_count();
    let cpu_before = thread_cpu_seconds(writer);
    let process_before = process_cpu_seconds();
    let mut last = (0, started);
    let interval = Duration::from_secs(2);
    while started.elapsed() < Duration::from_secs(args.seconds) {
        tokio::time::sleep(interval).await;
        let now = (appended.load(Ordering::Relaxed), Instant::now());
        let rate = (now.0 - last.0) as f64 / (now.1 - last.1).as_secs_f64();
        println!(
            "  {:>5.1}s  {:>9.0} events/s  ({} queued)",
            started.elapsed().as_secs_f64(),
            rate,
            now.0
        );
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done.map_err(|e| e.to_string())??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = appended.load(Ordering::Relaxed);
    let commits = store.commit_count() - commits_before;
    let writer_cpu = thread_cpu_seconds(writer) - cpu_before;
    let process_cpu = process_cpu_seconds() - process_before;
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "synchronous={sync}: {total} events in {elapsed:.1}s = {:.0} events/s; {commits} commits \
         ({:.0} events each); append latency p50 {:?} p99 {:?}; file {} MB\n  \
         writer thread busy {:.0}% = {:.1} µs CPU per event (≈ {:.0} events/s on a free core); \
         whole process {:.1} µs CPU per event, making the batches included",
        total as f64 / elapsed,
        total as f64 / commits.max(1) as f64,
        pct(0.5),
        pct(0.99),
        size / 1_000_000,
        writer_cpu / elapsed * 100.0,
        writer_cpu * 1e6 / total.max(1) as f64,
        total as f64 / writer_cpu.max(1e-9),
        process_cpu * 1e6 / total.max(1) as f64
    );
    drop(store);
    remove_store(&path);
    Ok(())
}

/// The ids of this process's store writer threads (Linux only).
fn writer_threads() -> Vec<u64> {
    store_threads("stipple-store-w")
}

/// The ids of this process's threads whose name starts with `prefix` (Linux only).
fn store_threads(prefix: &str) -> Vec<u64> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.starts_with(prefix))
        })
        .filter_map(|task| task.file_name().to_string_lossy().parse().ok())
        .collect()
}

/// CPU seconds used so far by the whole process (Linux only).
fn process_cpu_seconds() -> f64 {
    cpu_seconds("/proc/self/stat")
}

/// CPU seconds used so far by thread `tid` (from /proc, Linux only).
fn thread_cpu_seconds(tid: Option<u64>) -> f64 {
    let Some(tid) = tid else { return 0.0 };
    cpu_seconds(&format!("/proc/self/task/{tid}/stat"))
}

/// utime + stime of a `/proc/.../stat` file, in seconds (0 when unreadable).
fn cpu_seconds(stat_path: &str) -> f64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // Fields after the parenthesised name: utime and stime are the 12th and 13th.
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

async fn rss(args: &Args, dir: &Path) -> Result<(), String> {
    let path = dir.join("bench-rss.db");
    remove_store(&path);
    let options = SqliteOptions {
        synchronous: Synchronous::Normal,
        ..SqliteOptions::default()
    };
    let store = Arc::new(SqliteStore::open(&path, options).map_err(|e| e.to_string())?);
    let next = AtomicU64::new(0);
    let started = Instant::now();
    while (next.load(Ordering::Relaxed) as usize) < args.events {
        let append = batch(&next, 1_000, args.payload);
        store.append(append, DAY).await.map_err(|e| e.to_string())?;
    }
    println!(
        "filled {} events in {:.1}s; RSS {} MiB, peak {} MiB",
        args.events,
        started.elapsed().as_secs_f64(),
        status_kib("VmRSS:") / 1024,
        status_kib("VmHWM:") / 1024
    );
    drop(store);
    // A fresh process state as after a restart: open (counts, lease clearing) and lease.
    let options = SqliteOptions {
        synchronous: Synchronous::Normal,
        ..SqliteOptions::default()
    };
    let opened = Instant::now();
    let store = SqliteStore::open(&path, options).map_err(|e| e.to_string())?;
    println!(
        "reopened in {:?}: queued {}",
        opened.elapsed(),
        store.stats().await.map_err(|e| e.to_string())?.queued
    );
    let leasing = Instant::now();
    let mut leased_total = 0;
    let mut slowest = Duration::ZERO;
    for round in 0..200 {
        let start = Instant::now();
        let leased = store
            .lease(500, Duration::from_secs(60))
            .await
            .map_err(|e| e.to_string())?;
        slowest = slowest.max(start.elapsed());
        leased_total += leased.len();
        // Deliver most, retry some later: the queue head stays busy like in production.
        let (retry, ack) = leased.split_at(leased.len() / 10);
        let ids: Vec<_> = ack.iter().map(|e| e.id).collect();
        store.ack(&ids).await.map_err(|e| e.to_string())?;
        for e in retry {
            let later = chrono::Utc::now() + chrono::Duration::seconds(300 + round);
            store.retry(e.id, later).await.map_err(|e| e.to_string())?;
        }
    }
    println!(
        "leased {leased_total} events in batches of 500 in {:.1}s (slowest lease {slowest:?}); \
         queued {}; RSS {} MiB, peak {} MiB",
        leasing.elapsed().as_secs_f64(),
        store.stats().await.map_err(|e| e.to_string())?.queued,
        status_kib("VmRSS:") / 1024,
        status_kib("VmHWM:") / 1024
    );
    drop(store);
    remove_store(&path);
    Ok(())
}

/// Queues `events`, then drains them like delivery does: one task leases, one task
/// acknowledges in batches; nothing is sent anywhere, so the store sets the pace.
async fn deliver(args: &Args, events: usize, sync: Synchronous, dir: &Path) -> Result<(), String> {
    let path = dir.join(format!("bench-deliver-{sync}.db"));
    remove_store(&path);
    let options = SqliteOptions {
        synchronous: sync,
        ..SqliteOptions::default()
    };
    let before = store_threads("stipple-store-w");
    let store = Arc::new(SqliteStore::open(&path, options).map_err(|e| e.to_string())?);
    let mut writer = None;
    for _ in 0..1_000 {
        writer = store_threads("stipple-store-w")
            .into_iter()
            .find(|t| !before.contains(t));
        if writer.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let next = AtomicU64::new(0);
    while (next.load(Ordering::Relaxed) as usize) < events {
        let append = batch(&next, 1_000, args.payload);
        store.append(append, DAY).await.map_err(|e| e.to_string())?;
    }
    let queued = store.stats().await.map_err(|e| e.to_string())?.queued;

    let started = Instant::now();
    let (commits, syncs) = (store.commit_count(), store.sync_count());
    let cpu = thread_cpu_seconds(writer);
    let (acks, mut acked) = tokio::sync::mpsc::channel::<i64>(4096);
    let acker = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let (mut batch, mut calls) = (Vec::with_capacity(1024), 0u64);
            while acked.recv_many(&mut batch, 1024).await > 0 {
                store.ack(&batch).await.map_err(|e| e.to_string())?;
                calls += 1;
                batch.clear();
            }
            Ok::<_, String>(calls)
        })
    };
    let (mut leased_total, mut lease_calls) = (0u64, 0u64);
    loop {
        let leased = store
            .lease(args.lease, Duration::from_secs(300))
            .await
            .map_err(|e| e.to_string())?;
        lease_calls += 1;
        if leased.is_empty() {
            break;
        }
        leased_total += leased.len() as u64;
        for event in leased {
            acks.send(event.id).await.map_err(|e| e.to_string())?;
        }
    }
    drop(acks);
    let ack_calls = acker.await.map_err(|e| e.to_string())??;
    let elapsed = started.elapsed().as_secs_f64();
    let writer_cpu = thread_cpu_seconds(writer) - cpu;
    let left = store.stats().await.map_err(|e| e.to_string())?.queued;
    println!(
        "deliver synchronous={sync}: {leased_total} of {queued} events leased and acked in \
         {elapsed:.2}s = {:.0} events/s ({left} left); {lease_calls} leases, {ack_calls} acks, \
         {} commits, {} fsyncs; writer {:.1} µs CPU per event (its fsyncs included)",
        leased_total as f64 / elapsed,
        store.commit_count() - commits,
        store.sync_count() - syncs,
        writer_cpu * 1e6 / leased_total.max(1) as f64,
    );
    drop(store);
    remove_store(&path);
    Ok(())
}

/// Deletes a store's files.
fn remove_store(path: &Path) {
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

fn main() -> Result<(), String> {
    let args = parse_args()?;
    let temp;
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::tempdir().map_err(|e| e.to_string())?;
            temp.path().to_owned()
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        if args.rss {
            return rss(&args, &dir).await;
        }
        if args.deliver {
            let settings = match args.sync {
                Some(sync) => vec![sync],
                None => vec![Synchronous::Full, Synchronous::Normal],
            };
            let events = if args.events == 1_000_000 {
                200_000
            } else {
                args.events
            };
            for sync in settings {
                deliver(&args, events, sync, &dir).await?;
            }
            return Ok(());
        }
        println!(
            "{} tasks appending batches of {} events of {} bytes for {}s each",
            args.tasks, args.batch, args.payload, args.seconds
        );
        let settings = match args.sync {
            Some(sync) => vec![sync],
            None => vec![Synchronous::Full, Synchronous::Normal],
        };
        for sync in settings {
            throughput(&args, sync, &dir).await?;
        }
        Ok(())
    })
}
