//! The final table (BENCHMARKS.md, "Results") and the formats of its figures.

use std::time::Duration;

/// One line of the final table.
pub struct Row {
    section: &'static str,
    measure: String,
    relay: String,
    ceiling: String,
    ratio: String,
    target: String,
}

impl Row {
    pub fn new(section: &'static str, measure: impl Into<String>, relay: impl Into<String>) -> Row {
        Row {
            section,
            measure: measure.into(),
            relay: relay.into(),
            ceiling: "".into(),
            ratio: "".into(),
            target: "".into(),
        }
    }

    pub fn ceiling(mut self, c: impl Into<String>) -> Row {
        self.ceiling = c.into();
        self
    }

    /// The relay / ceiling ratio, met when at least `target`.
    pub fn ratio(mut self, r: f64, target: f64) -> Row {
        self.ratio = format!("{r:.2}");
        self.target = format!(
            "≥ {target} {}",
            if r >= target { "(met)" } else { "(missed)" }
        );
        self
    }

    /// The relay / ceiling ratio, with no target (a figure to read, not to meet).
    pub fn ratio_only(mut self, r: f64) -> Row {
        self.ratio = format!("{r:.2}");
        self
    }

    pub fn target(mut self, t: impl Into<String>) -> Row {
        self.target = t.into();
        self
    }
}

/// Prints `rows` as a Markdown table, columns padded to their widest cell.
pub fn print_table(rows: &[Row]) {
    let head = [
        "section",
        "measure",
        "o365-relay",
        "ceiling",
        "ratio",
        "target",
    ];
    let cells: Vec<[&str; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.section,
                r.measure.as_str(),
                r.relay.as_str(),
                r.ceiling.as_str(),
                r.ratio.as_str(),
                r.target.as_str(),
            ]
        })
        .collect();
    let mut w = head.map(|h| h.chars().count());
    for c in &cells {
        for i in 0..6 {
            w[i] = w[i].max(c[i].chars().count());
        }
    }
    let line = |c: [&str; 6]| {
        let parts: Vec<String> = (0..6)
            .map(|i| format!("{}{}", c[i], " ".repeat(w[i] - c[i].chars().count())))
            .collect();
        format!("| {} |", parts.join(" | "))
    };
    println!("{}", line(head));
    let sep: Vec<String> = w.iter().map(|n| "-".repeat(*n)).collect();
    println!("|-{}-|", sep.join("-|-"));
    for c in cells {
        println!("{}", line(c));
    }
}

/// The `p` quantile (0..=1) of sorted durations; zero when there are none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}
