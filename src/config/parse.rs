//! Reusable readers for `O365_*` variables. Each reader records a problem instead of stopping,
//! and returns a stand-in value (the default) so that one bad variable is reported once and the
//! others are still checked.

use super::BaseUrl;
use serde::de::DeserializeOwned;
use std::fmt;
use std::time::Duration;

pub(super) const SECOND: Duration = Duration::from_secs(1);
pub(super) const MINUTE: Duration = Duration::from_secs(60);
pub(super) const HOUR: Duration = Duration::from_secs(3600);
pub(super) const DAY: Duration = Duration::from_secs(24 * 3600);

/// The inclusive range a number or duration must lie in, and why when the bound is not obvious.
/// Upper bounds exist so that arithmetic on a setting (`Instant + d`, `d * 5`, milliseconds as
/// `u64`) cannot overflow, and lower bounds so that a loop cannot spin.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bounds<T> {
    pub min: T,
    pub max: T,
    pub why: &'static str,
}

impl<T: Copy> Bounds<T> {
    pub const fn new(min: T, max: T) -> Bounds<T> {
        Bounds { min, max, why: "" }
    }

    pub const fn because(self, why: &'static str) -> Bounds<T> {
        Bounds {
            min: self.min,
            max: self.max,
            why,
        }
    }
}

/// How a bound is written in an error: `7d`, `100ms`, `1024`.
pub(super) trait Bound: Copy + PartialOrd {
    fn show(self) -> String;
}

impl Bound for Duration {
    fn show(self) -> String {
        short_duration(self)
    }
}

impl Bound for u32 {
    fn show(self) -> String {
        self.to_string()
    }
}

impl Bound for usize {
    fn show(self) -> String {
        self.to_string()
    }
}

/// A duration in the largest unit that writes it exactly, as the variables are written (`7d`,
/// `15m`, `100ms`).
pub(super) fn short_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    for (unit, per) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms % per == 0 {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

/// Collects every problem while the variables are read.
#[derive(Default)]
pub(super) struct Parser {
    errors: Vec<String>,
}

impl Parser {
    pub fn into_errors(self) -> Vec<String> {
        self.errors
    }

    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// Records a problem with `O365_{var}`.
    pub fn fail(&mut self, var: &str, msg: impl fmt::Display) {
        self.errors.push(format!("O365_{var}: {msg}"));
    }

    /// Records a problem already written with its variable's name.
    pub fn fail_line(&mut self, line: String) {
        self.errors.push(line);
    }

    /// Whether a problem with `O365_{var}` has been recorded.
    pub fn failed(&self, var: &str) -> bool {
        let var = format!("O365_{var}");
        self.errors.iter().any(|e| e.contains(&var))
    }

    /// One concern's variables, as text, through envy. Every field is an `Option<String>`, so
    /// envy has nothing to refuse; should it fail anyway, the problem is recorded once.
    pub fn raw<T: DeserializeOwned + Default>(&mut self, vars: &[(String, String)]) -> T {
        envy::prefixed("O365_")
            .from_iter(vars.iter().cloned())
            .unwrap_or_else(|e| {
                let line = format!("environment: {e}");
                if !self.errors.contains(&line) {
                    self.errors.push(line);
                }
                T::default()
            })
    }

    /// The trimmed value, or `default` when unset or blank; an empty default means required.
    pub fn text(&mut self, var: &str, v: Option<String>, default: &str) -> String {
        let s = match v.map(|s| s.trim().to_string()) {
            Some(s) if !s.is_empty() => s,
            _ => default.to_string(),
        };
        if s.is_empty() {
            self.fail(var, "is required but not set");
        }
        s
    }

    /// A duration such as `30s`, `15m`, `24h`, `7d` (humantime), within `bounds`.
    pub fn duration(
        &mut self,
        var: &str,
        v: Option<String>,
        default: &str,
        bounds: Bounds<Duration>,
    ) -> Duration {
        let fallback = humantime::parse_duration(default).unwrap_or(bounds.min);
        let s = self.text(var, v, default);
        match humantime::parse_duration(&s) {
            Ok(d) => self.within(var, &s, d, bounds, fallback),
            Err(e) => {
                self.fail(
                    var,
                    format!("'{s}' is not a duration ({e}); expected e.g. 30s, 15m, 24h"),
                );
                fallback
            }
        }
    }

    /// A whole number within `bounds`.
    pub fn number<T>(&mut self, var: &str, v: Option<String>, default: T, bounds: Bounds<T>) -> T
    where
        T: Bound + std::str::FromStr + fmt::Display,
    {
        let s = self.text(var, v, &default.to_string());
        match s.parse() {
            Ok(n) => self.within(var, &s, n, bounds, default),
            Err(_) => {
                self.fail(var, format!("'{s}' is not a whole number"));
                default
            }
        }
    }

    fn within<T: Bound>(&mut self, var: &str, s: &str, v: T, b: Bounds<T>, fallback: T) -> T {
        if b.min <= v && v <= b.max {
            return v;
        }
        let why = if b.why.is_empty() {
            String::new()
        } else {
            format!(" ({})", b.why)
        };
        self.fail(
            var,
            format!(
                "'{s}' is out of range; must be between {} and {}{why}",
                b.min.show(),
                b.max.show()
            ),
        );
        fallback
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`), any case.
    pub fn boolean(&mut self, var: &str, v: Option<String>, default: bool) -> bool {
        let s = self.text(var, v, if default { "true" } else { "false" });
        match s.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => {
                self.fail(
                    var,
                    format!("'{s}' is not a boolean (expected true or false)"),
                );
                default
            }
        }
    }

    /// One of `options` by name, any case; `what` names the kind in the error ("a log format").
    pub fn choice<T: Copy>(
        &mut self,
        var: &str,
        v: Option<String>,
        options: &[(&str, T)],
        what: &str,
    ) -> T {
        let (default_name, default) = options[0];
        let s = self.text(var, v, default_name).to_ascii_lowercase();
        if let Some((_, value)) = options.iter().find(|(name, _)| *name == s) {
            return *value;
        }
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        let expected = match names.split_last() {
            Some((last, [])) => last.to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        self.fail(var, format!("'{s}' is not {what} (expected {expected})"));
        default
    }

    /// An http(s) base URL (see [`BaseUrl`]); `example` completes the error when it is not one.
    pub fn base_url(&mut self, var: &str, s: &str, example: &str) -> Option<BaseUrl> {
        BaseUrl::parse(s)
            .map_err(|e| self.fail(var, format!("{e}{example}")))
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_in_their_largest_exact_unit() {
        assert_eq!(short_duration(Duration::ZERO), "0s");
        assert_eq!(short_duration(Duration::from_millis(100)), "100ms");
        assert_eq!(short_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(short_duration(Duration::from_secs(90)), "90s");
        assert_eq!(short_duration(Duration::from_secs(120)), "2m");
        assert_eq!(short_duration(6 * HOUR), "6h");
        assert_eq!(short_duration(7 * DAY), "7d");
    }

    #[test]
    fn a_bad_value_is_reported_once_and_replaced_by_the_default() {
        let mut p = Parser::default();
        let b = Bounds::new(SECOND, HOUR);
        assert_eq!(p.duration("X", Some("soon".into()), "5m", b), 5 * MINUTE);
        assert_eq!(p.duration("Y", Some("2h".into()), "5m", b), 5 * MINUTE);
        assert_eq!(
            p.number("Z", Some("-1".into()), 16u32, Bounds::new(1, 64)),
            16
        );
        assert!(p.boolean("W", Some("maybe".into()), true));
        let errors = p.into_errors();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert_eq!(
            errors[1],
            "O365_Y: '2h' is out of range; must be between 1s and 1h"
        );
    }

    #[test]
    fn choices_list_what_is_expected() {
        let mut p = Parser::default();
        let v = p.choice(
            "K",
            Some("C".into()),
            &[("a", 1), ("b", 2), ("c", 3)],
            "a kind",
        );
        assert_eq!(v, 3);
        let v = p.choice(
            "K",
            Some("d".into()),
            &[("a", 1), ("b", 2), ("c", 3)],
            "a kind",
        );
        assert_eq!(v, 1);
        assert_eq!(
            p.into_errors(),
            ["O365_K: 'd' is not a kind (expected a, b or c)"]
        );
    }
}
