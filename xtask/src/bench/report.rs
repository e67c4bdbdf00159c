//! The figures: one row per measurement with its baseline, ratio and goal, printed as
//! a table and written as JSON.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde_json::json;

/// What a figure should reach.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Goal {
    /// No goal: reported for information.
    None,
    /// The value at least this.
    AtLeast(f64),
    /// The value under this.
    Under(f64),
    /// The ratio to the baseline at least this.
    RatioAtLeast(f64),
}

/// One figure.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) part: &'static str,
    pub(crate) figure: String,
    pub(crate) unit: &'static str,
    /// Median over the rounds.
    pub(crate) value: f64,
    pub(crate) rounds: Vec<f64>,
    pub(crate) baseline_name: String,
    /// Median over the rounds.
    pub(crate) baseline: Option<f64>,
    pub(crate) baseline_rounds: Vec<f64>,
    /// Each round's value over the baseline measured right next to it, in round order.
    pub(crate) ratios: Vec<f64>,
    pub(crate) goal: Goal,
    pub(crate) note: String,
}

impl Row {
    /// A figure with its baseline, from paired rounds.
    pub(crate) fn paired(
        part: &'static str,
        figure: impl Into<String>,
        unit: &'static str,
        rounds: Vec<f64>,
        baseline_name: impl Into<String>,
        baseline_rounds: Vec<f64>,
        goal: Goal,
    ) -> Row {
        let ratios: Vec<f64> = rounds
            .iter()
            .zip(&baseline_rounds)
            .map(|(v, b)| v / b)
            .collect();
        Row {
            part,
            figure: figure.into(),
            unit,
            value: median(&rounds),
            rounds,
            baseline_name: baseline_name.into(),
            baseline: (!baseline_rounds.is_empty()).then(|| median(&baseline_rounds)),
            baseline_rounds,
            ratios,
            goal,
            note: String::new(),
        }
    }

    /// A figure measured once.
    pub(crate) fn single(
        part: &'static str,
        figure: impl Into<String>,
        unit: &'static str,
        value: f64,
        baseline_name: impl Into<String>,
        baseline: Option<f64>,
        goal: Goal,
    ) -> Row {
        Row::paired(
            part,
            figure,
            unit,
            vec![value],
            baseline_name,
            baseline.into_iter().collect(),
            goal,
        )
    }

    /// Adds a note.
    pub(crate) fn with_note(mut self, note: impl Into<String>) -> Row {
        self.note = note.into();
        self
    }

    /// The median of the per-round ratios; `None` without a baseline.
    pub(crate) fn ratio(&self) -> Option<f64> {
        (!self.ratios.is_empty()).then(|| median(&self.ratios))
    }

    /// Whether the goal is met; `None` without a goal.
    pub(crate) fn met(&self) -> Option<bool> {
        match self.goal {
            Goal::None => None,
            Goal::AtLeast(min) => Some(self.value >= min),
            Goal::Under(max) => Some(self.value < max),
            Goal::RatioAtLeast(min) => self.ratio().map(|r| r >= min),
        }
    }

    /// The median ratio, with the range of the per-round ratios when there are several:
    /// on a shared machine the spread says how far one run can be trusted.
    fn ratio_text(&self) -> String {
        let Some(ratio) = self.ratio() else {
            return "-".to_owned();
        };
        if self.ratios.len() < 2 {
            return format!("{ratio:.2}");
        }
        let low = self.ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let high = self
            .ratios
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        format!("{ratio:.2} ({low:.2}-{high:.2})")
    }

    fn goal_text(&self) -> String {
        match self.goal {
            Goal::None => "-".to_owned(),
            Goal::AtLeast(min) => format!(">= {}", number(min, self.unit)),
            Goal::Under(max) => format!("< {}", number(max, self.unit)),
            Goal::RatioAtLeast(min) => format!("ratio >= {min:.2}"),
        }
    }
}

/// The median (the mean of the middle two for an even count); 0 for none.
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// A value for people: thousands separated, bytes in MiB.
pub(crate) fn number(value: f64, unit: &str) -> String {
    match unit {
        "bytes" => format!("{:.1} MiB", value / (1024.0 * 1024.0)),
        "s" => format!("{value:.2} s"),
        _ if value.abs() < 100.0 => format!("{value:.2} {unit}"),
        _ => {
            let digits = format!("{:.0}", value.abs());
            let mut out = String::new();
            for (i, c) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(c);
            }
            format!("{}{out} {unit}", if value < 0.0 { "-" } else { "" })
        }
    }
}

/// The table, for the terminal.
pub(crate) fn table(rows: &[Row]) -> String {
    let header = [
        "part",
        "figure",
        "median",
        "baseline (median)",
        "ratio (range)",
        "goal",
        "met",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.part.to_owned(),
                r.figure.clone(),
                number(r.value, r.unit),
                r.baseline.map_or("-".to_owned(), |b| {
                    format!("{} ({})", number(b, r.unit), r.baseline_name)
                }),
                r.ratio_text(),
                r.goal_text(),
                match r.met() {
                    None => "-".to_owned(),
                    Some(true) => "yes".to_owned(),
                    Some(false) => "NO".to_owned(),
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join(" | ").trim_end());
    };
    line(&mut out, &header.map(str::to_owned));
    let _ = writeln!(
        out,
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-")
    );
    for row in &cells {
        line(&mut out, row);
    }
    for r in rows.iter().filter(|r| !r.note.is_empty()) {
        let _ = writeln!(out, "  * {}: {}", r.figure, r.note);
    }
    out
}

/// Writes the rows and the context as JSON to `path`.
pub(crate) fn write_json(
    path: &Path,
    rows: &[Row],
    context: serde_json::Value,
) -> anyhow::Result<()> {
    let rows: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({
                "part": r.part,
                "figure": r.figure,
                "unit": r.unit,
                "median": r.value,
                "rounds": r.rounds,
                "baseline": r.baseline_name,
                "baseline_median": r.baseline,
                "baseline_rounds": r.baseline_rounds,
                "ratio_median": r.ratio(),
                "ratios": r.ratios,
                "goal": r.goal_text(),
                "met": r.met(),
                "note": r.note,
            })
        })
        .collect();
    let report = json!({ "context": context, "figures": rows });
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(rounds: Vec<f64>, baseline: Vec<f64>) -> Row {
        Row::paired(
            "p",
            "f",
            "requests/s",
            rounds,
            "bare",
            baseline,
            Goal::RatioAtLeast(0.5),
        )
    }

    #[test]
    fn the_ratio_is_the_median_of_per_round_ratios_shown_with_their_range() {
        let r = row(vec![40.0, 30.0, 45.0], vec![100.0, 50.0, 90.0]);
        assert_eq!(r.ratios, [0.4, 0.6, 0.5]);
        assert_eq!(r.ratio(), Some(0.5));
        assert_eq!(r.ratio_text(), "0.50 (0.40-0.60)");
        assert_eq!(r.met(), Some(true));
    }

    #[test]
    fn one_round_shows_no_range_and_no_baseline_no_ratio() {
        assert_eq!(row(vec![40.0], vec![100.0]).ratio_text(), "0.40");
        let alone = row(vec![40.0], vec![]);
        assert_eq!(alone.ratio_text(), "-");
        assert_eq!(alone.met(), None);
    }
}
