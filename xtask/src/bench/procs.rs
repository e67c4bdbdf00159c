//! The processes a bench runs: `stipple mock`, `stipple serve` and the bare baseline
//! server. Each is killed when its handle is dropped, so an error or a panic anywhere
//! still leaves nothing running.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// How long a child may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a child may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The API token the mock expects and serve sends.
pub(crate) const TOKEN: &str = "bench-token";
/// The write key of the one source.
pub(crate) const WRITE_KEY: &str = "bench-write-key";

/// A child process serving HTTP on `url`; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub(crate) struct Server {
    name: &'static str,
    child: Child,
    pid: u32,
    /// `http://127.0.0.1:PORT`, as the child printed it.
    pub(crate) url: String,
    /// When the child printed its listening line.
    pub(crate) listening_at: Instant,
    /// Where its stderr goes.
    pub(crate) log: PathBuf,
}

impl Server {
    /// Starts `program args`, stderr to `log`, and waits for the stdout line that starts
    /// with `prefix` and ends with the URL.
    pub(crate) async fn start(
        name: &'static str,
        program: &Path,
        args: &[&str],
        log: &Path,
        prefix: &str,
    ) -> anyhow::Result<Server> {
        let stderr = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        // The bench's own settings only: nothing from the caller's environment.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("STIPPLE_") || key == "RUST_LOG" {
                command.env_remove(key);
            }
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let pid = child.id().context("the child has no pid")?;
        let stdout = child.stdout.take().context("the child has no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let wait_for_line = async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix(prefix) {
                    return Ok::<_, std::io::Error>(Some(url.trim().to_owned()));
                }
            }
            Ok(None)
        };
        let url = match tokio::time::timeout(START_TIMEOUT, wait_for_line).await {
            Ok(Ok(Some(url))) => url,
            Ok(Ok(None)) | Ok(Err(_)) => {
                bail!(
                    "{name} exited before listening; its log: {}\n{}",
                    log.display(),
                    tail(log)
                )
            }
            Err(_) => bail!(
                "{name} did not listen within {START_TIMEOUT:?}; its log: {}",
                log.display()
            ),
        };
        let listening_at = Instant::now();
        // Keep reading stdout so that a later print never meets a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Server {
            name,
            child,
            pid,
            url,
            listening_at,
            log: log.to_owned(),
        })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Asks the process to stop (SIGTERM, as an operator would) and waits for it; kills
    /// it when it takes longer than [`STOP_TIMEOUT`].
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await
            .context("cannot run kill")?;
        if !sent.success() {
            // Already gone: reap it below.
            eprintln!(
                "bench: {} (pid {}) was gone before SIGTERM",
                self.name, self.pid
            );
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    eprintln!(
                        "bench: {} stopped with {status}; log: {}",
                        self.name,
                        self.log.display()
                    );
                }
                Ok(())
            }
            Err(_) => {
                eprintln!(
                    "bench: {} did not stop within {STOP_TIMEOUT:?} of SIGTERM; killing it",
                    self.name
                );
                self.child.kill().await.context("cannot kill")?;
                Ok(())
            }
        }
    }

    /// Fails when the process has exited.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its log: {}\n{}",
                self.name,
                self.log.display(),
                tail(&self.log)
            );
        }
        Ok(())
    }

    /// Peak and current resident memory, in bytes.
    pub(crate) fn memory(&self) -> anyhow::Result<Memory> {
        memory(self.pid)
    }
}

/// Resident memory of a process, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Memory {
    /// `VmHWM`: the peak resident set since the process started.
    pub(crate) peak: u64,
    /// `VmRSS`: the resident set now.
    pub(crate) now: u64,
}

fn memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in {path}"))?;
        let kib: u64 = line
            .trim_start_matches(name)
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("cannot read {line:?}"))?;
        Ok(kib * 1024)
    };
    Ok(Memory {
        peak: field("VmHWM:")?,
        now: field("VmRSS:")?,
    })
}

/// The last lines of a log, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Starts `stipple mock` on a free port, counting only (`--no-record`).
pub(crate) async fn start_mock(
    stipple: &Path,
    dir: &Path,
    unauthorized: bool,
) -> anyhow::Result<Server> {
    let mut args = vec![
        "mock",
        "--listen",
        "127.0.0.1:0",
        "--token",
        TOKEN,
        "--no-record",
    ];
    if unauthorized {
        args.extend(["--unauthorized-for", "10h"]);
    }
    Server::start(
        "stipple mock",
        stipple,
        &args,
        &dir.join("mock.log"),
        "mock Pointillist listening on ",
    )
    .await
}

/// Writes the configuration of `stipple serve`: one source, the mock as endpoint, the
/// store in `dir` with `synchronous`, every other setting at its default.
pub(crate) fn write_config(
    dir: &Path,
    mock_url: &str,
    concurrency: usize,
    synchronous: &str,
) -> anyhow::Result<PathBuf> {
    let store = dir.join("store").join("stipple.db");
    let text = format!(
        "[pointillist]\napi_token = \"{TOKEN}\"\nendpoint = \"{mock_url}\"\nconcurrency = {concurrency}\n\n\
         [ingress]\nlisten = \"127.0.0.1:0\"\n\n\
         [[sources]]\nname = \"bench\"\nwrite_key = \"{WRITE_KEY}\"\n\n\
         [store]\nurl = \"sqlite://{}\"\nsynchronous = \"{synchronous}\"\n",
        store.display()
    );
    let path = dir.join("stipple.toml");
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Starts `stipple serve --config CONFIG`.
pub(crate) async fn start_serve(
    stipple: &Path,
    config: &Path,
    log: &Path,
) -> anyhow::Result<Server> {
    let config = config.to_str().context("the temp dir path is not UTF-8")?;
    Server::start(
        "stipple serve",
        stipple,
        &["serve", "--config", config],
        log,
        "stipple listening on ",
    )
    .await
}

/// Runs `command` to its end and returns its stdout; fails naming `what`, with its
/// status and stderr, when it cannot start or does not succeed.
pub(crate) async fn output(command: &mut Command, what: &str) -> anyhow::Result<Vec<u8>> {
    let out = command
        .output()
        .await
        .with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// Writes every dirty page of the machine to disk (`sync`), so that a measurement does
/// not pay for the writeback of what earlier parts wrote: the fsyncs of the store wait
/// for the disk's queue, and the bare baselines write nothing.
pub(crate) async fn settle_disk() -> anyhow::Result<()> {
    let status = Command::new("sync")
        .status()
        .await
        .context("cannot run sync")?;
    if !status.success() {
        bail!("sync failed ({status})");
    }
    Ok(())
}

/// Bytes of every file in the store's directory (database, WAL, shared memory).
pub(crate) fn store_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    let store = dir.join("store");
    for entry in
        std::fs::read_dir(&store).with_context(|| format!("cannot list {}", store.display()))?
    {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}

/// CPU time a process has used so far, in all and by thread name.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cpu {
    /// User plus system seconds of the whole process (exited threads included).
    pub(crate) total: f64,
    /// User plus system seconds of its live threads, summed by thread name.
    pub(crate) threads: std::collections::BTreeMap<String, f64>,
}

impl Cpu {
    /// What `pid` has used so far; empty when it cannot be read.
    pub(crate) fn of(pid: u32) -> Cpu {
        let tick = clock_tick();
        let mut cpu = Cpu {
            total: ticks(&format!("/proc/{pid}/stat")).map_or(0.0, |(_, t)| t as f64 / tick),
            ..Cpu::default()
        };
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                if let Some((name, t)) = ticks(&task.path().join("stat").to_string_lossy()) {
                    *cpu.threads.entry(name).or_default() += t as f64 / tick;
                }
            }
        }
        cpu
    }

    /// This process.
    pub(crate) fn own() -> Cpu {
        Cpu::of(std::process::id())
    }

    /// What was used between `earlier` and `self`.
    pub(crate) fn since(&self, earlier: &Cpu) -> Cpu {
        let threads = self
            .threads
            .iter()
            .map(|(name, t)| {
                (
                    name.clone(),
                    t - earlier.threads.get(name).copied().unwrap_or(0.0),
                )
            })
            .filter(|(_, t)| *t > 0.0)
            .collect();
        Cpu {
            total: self.total - earlier.total,
            threads,
        }
    }

    /// `1.23 cores (tokio-rt-worker 0.80, stipple-store-w 0.40)` over `seconds`.
    pub(crate) fn cores(&self, seconds: f64) -> String {
        let mut threads: Vec<(&String, &f64)> = self.threads.iter().collect();
        threads.sort_by(|a, b| b.1.total_cmp(a.1));
        let parts: Vec<String> = threads
            .iter()
            .take(4)
            .map(|(name, t)| format!("{name} {:.2}", *t / seconds))
            .collect();
        format!("{:.2} cores ({})", self.total / seconds, parts.join(", "))
    }
}

/// The whole machine's CPU time so far, from the `cpu` line of `/proc/stat`: all of it,
/// what the hypervisor gave other guests meanwhile (steal), and what no thread used
/// (idle). On a shared virtual machine steal slows whatever runs, in spells: a round that
/// lost much to it measures the host rather than the server. Idle time in a round that
/// has work waiting is what the server's hand-offs leave unused (docs/performance.md).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Machine {
    /// Ticks of every kind (user, nice, system, idle, iowait, irq, softirq, steal).
    total: u64,
    /// Ticks stolen by the hypervisor.
    steal: u64,
    /// Ticks idle, waiting for I/O included.
    idle: u64,
}

impl Machine {
    /// Now; `None` when `/proc/stat` cannot be read.
    pub(crate) fn now() -> Option<Machine> {
        Machine::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    fn parse(stat: &str) -> Option<Machine> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|t| t.parse().ok())
            .collect::<Option<_>>()?;
        Some(Machine {
            total: ticks.iter().sum(),
            steal: *ticks.get(7)?,
            idle: ticks.get(3)? + ticks.get(4)?,
        })
    }

    /// The share of the machine's CPU time stolen between `earlier` and `self` (0 to 1).
    pub(crate) fn stolen_since(&self, earlier: &Machine) -> f64 {
        self.share_since(earlier, |m| m.steal)
    }

    /// The share of the machine's CPU time idle between `earlier` and `self` (0 to 1).
    pub(crate) fn idle_since(&self, earlier: &Machine) -> f64 {
        self.share_since(earlier, |m| m.idle)
    }

    fn share_since(&self, earlier: &Machine, part: fn(&Machine) -> u64) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        part(self).saturating_sub(part(earlier)) as f64 / total as f64
    }
}

/// The thread name and user + system ticks of a `/proc/.../stat` file.
fn ticks(path: &str) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // After the name: state is field 3 of proc(5), utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 when it cannot be asked.
fn clock_tick() -> f64 {
    static TICK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_and_idle_are_shares_of_all_ticks_between_two_readings() {
        let before =
            Machine::parse("cpu  100 0 50 800 10 0 20 20 0 0\ncpu0 1 2 3\n").expect("parse");
        let after =
            Machine::parse("cpu  160 0 70 880 10 0 30 50 0 0\ncpu0 1 2 3\n").expect("parse");
        // 200 ticks in all, 30 of them stolen.
        assert!((after.stolen_since(&before) - 0.15).abs() < 1e-9);
        assert_eq!(after.stolen_since(&after), 0.0);
        // 80 of them idle, none waiting for I/O; then 20 more waiting for I/O.
        assert!((after.idle_since(&before) - 0.4).abs() < 1e-9);
        let later =
            Machine::parse("cpu  160 0 70 880 30 0 30 50 0 0\ncpu0 1 2 3\n").expect("parse");
        assert!((later.idle_since(&after) - 1.0).abs() < 1e-9);
        assert!(Machine::parse("cpu  1 2 3\n").is_none(), "a line too short");
    }
}
