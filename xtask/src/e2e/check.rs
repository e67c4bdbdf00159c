//! The record of every check: each one passes or fails with a reason, is printed as it
//! happens, and all of them are summed up in a table at the end.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// One check's result.
#[derive(Debug)]
struct Record {
    part: &'static str,
    name: String,
    ok: bool,
    detail: String,
}

/// Every check of a run, in order.
#[derive(Debug, Default)]
pub(crate) struct Checks {
    part: &'static str,
    records: Vec<Record>,
    /// How long each part took.
    timings: Vec<(&'static str, Duration)>,
    part_started: Option<Instant>,
}

impl Checks {
    /// Checks recorded from now on belong to `part`.
    pub(crate) fn start_part(&mut self, part: &'static str) {
        self.end_part();
        self.part = part;
        self.part_started = Some(Instant::now());
        eprintln!("\n=== e2e: {part} ===");
    }

    /// Closes the timing of the current part.
    pub(crate) fn end_part(&mut self) {
        if let Some(started) = self.part_started.take() {
            self.timings.push((self.part, started.elapsed()));
        }
    }

    /// Records a passed check; `detail` says what was seen.
    pub(crate) fn pass(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.record(name.into(), true, detail.into());
    }

    /// Records a failed check; `reason` says what was wrong.
    pub(crate) fn fail(&mut self, name: impl Into<String>, reason: impl Into<String>) {
        self.record(name.into(), false, reason.into());
    }

    /// Records `Ok(detail)` as passed and `Err(reason)` as failed.
    pub(crate) fn check(
        &mut self,
        name: impl Into<String>,
        result: Result<String, String>,
    ) -> bool {
        let ok = result.is_ok();
        match result {
            Ok(detail) => self.pass(name, detail),
            Err(reason) => self.fail(name, reason),
        }
        ok
    }

    /// Records a condition: passed with `detail` when true, failed with it when false.
    pub(crate) fn expect(
        &mut self,
        name: impl Into<String>,
        ok: bool,
        detail: impl Into<String>,
    ) -> bool {
        self.record(name.into(), ok, detail.into());
        ok
    }

    fn record(&mut self, name: String, ok: bool, detail: String) {
        let mark = if ok { "ok  " } else { "FAIL" };
        eprintln!("  {mark} {name}: {detail}");
        self.records.push(Record {
            part: self.part,
            name,
            ok,
            detail,
        });
    }

    /// How many checks failed.
    pub(crate) fn failed(&self) -> usize {
        self.records.iter().filter(|r| !r.ok).count()
    }

    /// The summary: per part its counts and time, then every failed check with its
    /// reason, then the closing `N passed, N failed` line.
    pub(crate) fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\ne2e summary");
        let _ = writeln!(
            out,
            "{:<10} {:>6} {:>6} {:>8}",
            "part", "passed", "failed", "time"
        );
        let mut parts: Vec<&'static str> = Vec::new();
        for r in &self.records {
            if !parts.contains(&r.part) {
                parts.push(r.part);
            }
        }
        for (part, _) in &self.timings {
            if !parts.contains(part) {
                parts.push(part);
            }
        }
        for part in parts {
            let passed = self
                .records
                .iter()
                .filter(|r| r.part == part && r.ok)
                .count();
            let failed = self
                .records
                .iter()
                .filter(|r| r.part == part && !r.ok)
                .count();
            let time: Duration = self
                .timings
                .iter()
                .filter(|(p, _)| *p == part)
                .map(|(_, d)| *d)
                .sum();
            let _ = writeln!(
                out,
                "{part:<10} {passed:>6} {failed:>6} {:>7.1}s",
                time.as_secs_f64()
            );
        }
        let failures: Vec<&Record> = self.records.iter().filter(|r| !r.ok).collect();
        if !failures.is_empty() {
            let _ = writeln!(out, "\nfailed checks:");
            for r in failures {
                let _ = writeln!(out, "  [{}] {}: {}", r.part, r.name, r.detail);
            }
        }
        let passed = self.records.iter().filter(|r| r.ok).count();
        let _ = writeln!(out, "\ne2e: {passed} passed, {} failed", self.failed());
        out
    }
}
