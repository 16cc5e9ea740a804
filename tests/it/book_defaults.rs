//! The defaults the book states come from the code: every row of the defaults tables in
//! `book/src/runtime.md` (consumer options, configuration) and `book/src/operations.md`
//! (health thresholds) is compared with `ConsumerOptions::new`, `Config::default` and
//! `HealthThresholds::default`, and so is every default of a consumer option the chapters name
//! in passing ("`concurrency` (256)", "`block` (default 2 s)", "`concurrency`, 256 by
//! default"). The book once said 64 for a concurrency of 256 in three places; a change of a
//! default now fails here, naming the chapter, the row and both values.
//! `BOOK_DEFAULTS_TRACE=1 cargo test --test it book_defaults:: -- --nocapture` lists every
//! comparison made.

use std::path::PathBuf;
use std::time::Duration;

use asdlc::monitor::{HealthStatus, Limits};
use asdlc::{Backoff, Config, ConsumerOptions, GroupStart, HealthThresholds, MarkLayout, Tenancy};

fn chapter(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("book/src")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The body rows of the first table whose header row starts with `| <first> |`, as trimmed
/// cells (an escaped `\|` inside a cell stays in it).
fn table(text: &str, first: &str) -> Vec<Vec<String>> {
    let mut lines = text.lines().skip_while(|l| {
        !l.trim_start()
            .strip_prefix('|')
            .is_some_and(|rest| rest.trim_start().starts_with(&format!("{first} |")))
    });
    assert!(lines.next().is_some(), "no table headed `| {first} |`");
    lines
        .skip(1) // |---|---|
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(|l| {
            let l = l.trim().trim_start_matches('|').trim_end_matches('|');
            let mut cells = vec![String::new()];
            let mut chars = l.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '\\' if chars.peek() == Some(&'|') => {
                        cells.last_mut().unwrap().push('|');
                        chars.next();
                    }
                    '|' => cells.push(String::new()),
                    c => cells.last_mut().unwrap().push(c),
                }
            }
            cells.iter().map(|c| c.trim().to_owned()).collect()
        })
        .collect()
}

fn unquote(cell: &str) -> &str {
    cell.trim().trim_matches('`')
}

/// `1,000` -> 1000; nothing else around the number.
fn count(text: &str) -> Option<u64> {
    let t = text.trim().replace(',', "");
    if t.is_empty() || !t.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// `500 ms`, `2 s`, `1 min`, `5 min`, `1 h`, `7 days`; nothing else around it.
fn duration(text: &str) -> Option<Duration> {
    let (n, unit) = text.trim().split_once(' ')?;
    let n = count(n)?;
    Some(match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "min" => Duration::from_secs(60 * n),
        "h" => Duration::from_secs(3600 * n),
        "day" | "days" => Duration::from_secs(86_400 * n),
        _ => return None,
    })
}

/// A documented value and the code's, as one line of a failure report when they differ.
#[derive(Default)]
struct Report {
    checked: usize,
    wrong: Vec<String>,
}

impl Report {
    fn check(&mut self, ok: bool, place: &str, book: &str, code: impl std::fmt::Debug) {
        self.checked += 1;
        if std::env::var_os("BOOK_DEFAULTS_TRACE").is_some() {
            eprintln!("checked {place}: `{book}` vs {code:?}");
        }
        if !ok {
            self.wrong.push(format!(
                "{place}: the book says `{book}`, the code {code:?}"
            ));
        }
    }

    fn fail(&mut self, place: &str, why: &str) {
        self.wrong.push(format!("{place}: {why}"));
    }

    fn finish(self, what: &str, at_least: usize) {
        assert!(
            self.wrong.is_empty(),
            "{what}: documented defaults differ from the code:\n  {}",
            self.wrong.join("\n  ")
        );
        assert!(
            self.checked >= at_least,
            "{what}: only {} values compared, expected at least {at_least}: did the table move?",
            self.checked
        );
    }
}

/// The default of a consumer option that is a number or a duration, by field name.
enum Value {
    Count(u64),
    Duration(Option<Duration>),
}

fn consumer_value(o: &ConsumerOptions, field: &str) -> Option<Value> {
    Some(match field {
        "batch_size" => Value::Count(o.batch_size as u64),
        "concurrency" => Value::Count(o.concurrency as u64),
        "max_deliveries" => Value::Count(u64::from(o.max_deliveries)),
        "block" => Value::Duration(Some(o.block)),
        "claim_idle" => Value::Duration(Some(o.claim_idle)),
        "claim_interval" => Value::Duration(Some(o.claim_interval)),
        "handler_timeout" => Value::Duration(Some(o.handler_timeout)),
        "shutdown_grace" => Value::Duration(Some(o.shutdown_grace)),
        "forget_idle" => Value::Duration(o.forget_idle),
        _ => return None,
    })
}

/// Whether `book` (a cell or a phrase) states `value`; `None` if it states no plain value.
fn states(book: &str, value: &Value) -> Option<bool> {
    match value {
        Value::Count(n) => count(book).map(|b| b == *n),
        Value::Duration(d) => {
            if matches!(book.trim(), "`None`" | "never" | "off") {
                return Some(d.is_none());
            }
            duration(book).map(|b| Some(b) == *d)
        }
    }
}

#[test]
fn the_consumer_options_table_matches_consumer_options_new() {
    let o = ConsumerOptions::new("g");
    let mut r = Report::default();
    for row in table(&chapter("runtime.md"), "Option") {
        let (field, book) = (unquote(&row[0]), row[1].as_str());
        let place = format!("runtime.md, consumer options, row `{field}`");
        if let Some(value) = consumer_value(&o, field) {
            match states(book, &value) {
                Some(ok) => r.check(ok, &place, book, format_args!("{}", value_of(&value))),
                None => r.fail(&place, &format!("cannot read `{book}` as a default")),
            }
            continue;
        }
        match field {
            "consumer" => r.check(
                book == "`ASDLC_CONSUMER`, else the lowest free `<host>-<n>`"
                    && o.consumer == asdlc::consume::default_consumer_name(),
                &place,
                book,
                &o.consumer,
            ),
            "retry" => {
                let part = |key: &str| {
                    book.split_once(&format!("{key}: "))
                        .and_then(|(_, rest)| duration(rest.split([',', '}']).next()?))
                };
                let documented = part("base").zip(part("max"));
                r.check(
                    documented == Some((o.retry.base, o.retry.max))
                        && o.retry == Backoff::default(),
                    &place,
                    book,
                    o.retry,
                );
            }
            "marks" => r.check(
                book == "`config.mark_layout()`: `MarkLayout::with_ttl(config.idempotency_ttl)`, or `MarkLayout::for_rate` with `idempotency_rate` if set"
                    && o.marks == MarkLayout::with_ttl(Config::default().idempotency_ttl)
                    && Config::default().mark_layout() == o.marks,
                &place,
                book,
                o.marks,
            ),
            "group_start" => r.check(
                unquote(book) == format!("GroupStart::{:?}", o.group_start)
                    && o.group_start == GroupStart::Beginning,
                &place,
                book,
                o.group_start,
            ),
            "dead_letters" => {
                let d = &o.dead_letters;
                let documented = format!(
                    "`DeadLetterPolicy {{ max_len: Some({}), max_age: Some({} days), max_payload: {} KiB }}`",
                    d.max_len.unwrap_or(0),
                    d.max_age.map_or(0, |a| a.as_secs() / 86_400),
                    d.max_payload / 1024
                );
                r.check(
                    book == documented
                        && d.max_age
                            .is_some_and(|a| a.as_secs().is_multiple_of(86_400))
                        && d.max_payload.is_multiple_of(1024),
                    &place,
                    book,
                    format_args!("{d:?}"),
                );
            }
            _ => r.fail(&place, "a row this test does not know: add a check for it"),
        }
    }
    r.finish("runtime.md, consumer options", 14);
}

fn value_of(v: &Value) -> String {
    match v {
        Value::Count(n) => n.to_string(),
        Value::Duration(d) => format!("{d:?}"),
    }
}

#[test]
fn the_configuration_table_matches_config_default() {
    let c = Config::default();
    let mut r = Report::default();
    for row in table(&chapter("runtime.md"), "Variable") {
        let (var, book) = (unquote(&row[0]), row[2].as_str());
        let place = format!("runtime.md, configuration, row `{var}`");
        match var {
            "REDIS_URL" => r.check(
                unquote(book) == c.redis_url.to_string(),
                &place,
                book,
                c.redis_url.to_string(),
            ),
            "ASDLC_STREAM" => r.check(unquote(book) == c.stream, &place, book, &c.stream),
            "ASDLC_TENANCY" => r.check(
                unquote(book) == "single" && c.tenancy == Tenancy::Single,
                &place,
                book,
                &c.tenancy,
            ),
            "ASDLC_TENANTS" => r.check(
                book == "unset" && !c.tenancy.is_multi(),
                &place,
                book,
                &c.tenancy,
            ),
            "ASDLC_IDEMPOTENCY_TTL_SECS" => {
                let secs = book
                    .split_whitespace()
                    .next()
                    .and_then(|s| count(unquote(s)));
                let days = book
                    .split_once('(')
                    .and_then(|(_, rest)| duration(rest.trim_end_matches(')')));
                r.check(
                    secs == Some(c.idempotency_ttl.as_secs())
                        && days.is_none_or(|d| d == c.idempotency_ttl),
                    &place,
                    book,
                    c.idempotency_ttl,
                );
            }
            "ASDLC_IDEMPOTENCY_RATE" => r.check(
                book.starts_with("unset") && c.idempotency_rate.is_none(),
                &place,
                book,
                c.idempotency_rate,
            ),
            "ASDLC_MAXLEN" => r.check(book.starts_with("unset"), &place, book, c.max_len),
            "ASDLC_CONSUMER" => r.check(
                book == "the lowest free `<host>-<n>`"
                    && ConsumerOptions::new("g").consumer
                        == asdlc::consume::default_consumer_name(),
                &place,
                book,
                "ASDLC_CONSUMER, else <host>-<n>",
            ),
            _ => r.fail(&place, "a row this test does not know: add a check for it"),
        }
    }
    r.finish("runtime.md, configuration", 8);
}

#[test]
fn the_health_thresholds_table_matches_health_thresholds_default() {
    let t = HealthThresholds::default();
    let mut r = Report::default();
    fn levels<T: Copy + PartialEq + std::fmt::Debug>(
        r: &mut Report,
        place: &str,
        book: &str,
        limits: Limits<T>,
        parse: fn(&str) -> Option<T>,
    ) {
        let documented = book
            .split_once(" / ")
            .and_then(|(d, u)| Some((Some(parse(d)?), Some(parse(u)?))));
        r.check(
            documented == Some((limits.degraded, limits.unhealthy)),
            place,
            book,
            limits,
        );
    }
    for row in table(&chapter("operations.md"), "Threshold") {
        let name = row[0].split('`').nth(1).unwrap_or_default().to_owned();
        let book = row[1].as_str();
        let place = format!("operations.md, health thresholds, row `{name}`");
        match name.as_str() {
            "lag" => levels(&mut r, &place, book, t.lag, count),
            "pending" => levels(&mut r, &place, book, t.pending, count),
            "oldest_pending" => levels(&mut r, &place, book, t.oldest_pending, duration),
            "dead_letters" => r.check(
                book.starts_with("off") && t.dead_letters == Limits::off(),
                &place,
                book,
                t.dead_letters,
            ),
            "missing_stream" => r.check(
                book.contains(&format!("`{:?}`", t.missing_stream))
                    && t.missing_stream == HealthStatus::Degraded,
                &place,
                book,
                t.missing_stream,
            ),
            _ => r.fail(&place, "a row this test does not know: add a check for it"),
        }
    }
    r.finish("operations.md, health thresholds", 5);
}

/// The value a phrase right after a backticked option name states as its default: ` (X)`,
/// ` (default X)`, `, default X` or `, X by default`; `None` if it states none.
fn stated_default(after: &str) -> Option<&str> {
    if let Some(rest) = after.strip_prefix(" (") {
        let inside = rest.split(')').next()?;
        return Some(inside.strip_prefix("default ").unwrap_or(inside));
    }
    let rest = after.strip_prefix(", ")?;
    let clause = rest.split([',', ')', ';', '|']).next()?;
    if let Some(v) = clause.strip_prefix("default ") {
        return Some(v);
    }
    clause.strip_suffix(" by default")
}

#[test]
fn defaults_named_in_the_chapters_match_consumer_options_new() {
    let o = ConsumerOptions::new("g");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("book/src");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("book/src")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .collect();
    names.sort();
    let mut r = Report::default();
    let mut concurrency_mentions = 0;
    for name in &names {
        let text = chapter(name);
        for (n, line) in text.lines().enumerate() {
            // Every backticked name, bare (`concurrency`) or as a path (`ConsumerOptions::block`).
            for (i, quoted) in line.split('`').enumerate() {
                if i % 2 == 0 {
                    continue;
                }
                let field = quoted.rsplit("::").next().unwrap_or(quoted);
                let Some(value) = consumer_value(&o, field) else {
                    continue;
                };
                let after = line.split('`').skip(i + 1).collect::<Vec<_>>().join("`");
                let Some(book) = stated_default(&after) else {
                    continue;
                };
                // A parenthesis that says something else (`block` (1 ms to 60 s)) is no default.
                let Some(ok) = states(book, &value) else {
                    continue;
                };
                if field == "concurrency" {
                    concurrency_mentions += 1;
                }
                r.check(
                    ok,
                    &format!("{name}:{}, `{quoted}`", n + 1),
                    book,
                    format_args!("{}", value_of(&value)),
                );
            }
        }
    }
    assert!(
        concurrency_mentions >= 2,
        "expected the consumer's concurrency default stated in handlers.md and migration.md, \
         found {concurrency_mentions} mentions: did the phrasing change?"
    );
    r.finish("defaults in the chapters' text", 8);
}
