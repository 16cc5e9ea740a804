//! Human output: tables, durations, ids; and the output stream itself.

use std::fmt::Display;
use std::io::{self, Write};
use std::time::Duration;

use crate::error::CliError;

/// Standard output, where a closed pipe ends the command quietly.
pub struct Out {
    stdout: io::Stdout,
}

impl Out {
    /// Standard output.
    pub fn new() -> Self {
        Out {
            stdout: io::stdout(),
        }
    }

    /// Writes one line.
    pub fn line(&mut self, text: impl Display) -> Result<(), CliError> {
        let mut lock = self.stdout.lock();
        writeln!(lock, "{text}")
            .and_then(|_| lock.flush())
            .map_err(|e| match e.kind() {
                io::ErrorKind::BrokenPipe => CliError::BrokenPipe,
                _ => CliError::Failed(format!("cannot write the output: {e}")),
            })
    }

    /// Writes `value` as one line of JSON.
    pub fn json<T: serde::Serialize>(&mut self, value: &T) -> Result<(), CliError> {
        let text = serde_json::to_string(value)
            .map_err(|e| CliError::Failed(format!("cannot write JSON: {e}")))?;
        self.line(text)
    }
}

/// A table with left-aligned columns separated by two spaces.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(headers: I) -> Self {
        Table {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row<I: IntoIterator<Item = S>, S: Into<String>>(&mut self, cells: I) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The lines of the table, each prefixed with `indent`.
    pub fn render(&self, indent: &str) -> Vec<String> {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(width(cell));
            }
        }
        std::iter::once(&self.headers)
            .chain(&self.rows)
            .map(|row| {
                let mut line = indent.to_owned();
                for (i, cell) in row.iter().enumerate().take(columns) {
                    line.push_str(cell);
                    if i + 1 < columns {
                        line.extend(std::iter::repeat_n(' ', widths[i] - width(cell) + 2));
                    }
                }
                line.trim_end().to_owned()
            })
            .collect()
    }

    /// Writes the table to `out`.
    pub fn print(&self, out: &mut Out, indent: &str) -> Result<(), CliError> {
        for line in self.render(indent) {
            out.line(line)?;
        }
        Ok(())
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// A duration for people: `350ms`, `12.3s`, `4m05s`, `2h03m`, `3d04h`.
pub fn duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    let s = ms / 1000;
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", s / 60, s % 60),
        3_600_000..86_400_000 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Parses a duration: a number with `ms`, `s`, `m`, `h` or `d`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (try 500ms, 30s, 5m, 2h, 1d)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        _ => {
            return Err(format!(
                "`{text}` has an unknown unit `{unit}` (use ms, s, m, h or d)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{text}` is out of range"))
}

/// A progress bar on stderr for `len` steps, hidden when stderr is not a terminal or the
/// output is JSON (so scripts and logs see no escape codes).
pub fn progress(len: u64, json: bool, verb: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if json || len == 0 || !io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "{verb} {{bar:40}} {{pos}}/{{len}} [{{elapsed}}, eta {{eta}}] {{msg}}"
    )) {
        bar.set_style(style);
    }
    bar
}

/// The age of a group's oldest pending entry, `-` when nothing is pending.
pub fn oldest_pending(group: &asdlc_runtime::GroupInfo) -> String {
    if group.pending > 0 {
        duration(Duration::from_millis(group.oldest_pending_ms))
    } else {
        "-".to_owned()
    }
}

/// `-` for a missing value.
pub fn or_dash<T: Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// `text` cut to `max` characters, with `…` when cut, on one line.
pub fn clip(text: &str, max: usize) -> String {
    let one_line = text.replace(['\n', '\r'], " ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut out: String = one_line.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(Duration::from_millis(350)), "350ms");
        assert_eq!(duration(Duration::from_millis(12_345)), "12.3s");
        assert_eq!(duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(duration(Duration::from_secs(7_380)), "2h03m");
        assert_eq!(duration(Duration::from_secs(273_600)), "3d04h");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(["A", "LONGER"]);
        t.row(["wide cell", "x"]);
        assert_eq!(
            t.render("  "),
            vec!["  A          LONGER", "  wide cell  x"]
        );
    }

    #[test]
    fn clip_keeps_one_line() {
        assert_eq!(clip("a\nb", 10), "a b");
        assert_eq!(clip("abcdef", 4), "abc…");
    }
}
