//! Dashboards and alerts as code (`k8s/monitoring/`) name only metrics the relay exports, and
//! every alert has a promtool unit test. (promtool itself checks and tests the rules in
//! `.ci/ops-check`; this test is what ties them to the code, so renaming a metric without
//! updating the dashboard, the rules or docs/OPERATIONS.md fails here.)

use o365_relay::ops::metrics::Metrics;
use std::collections::BTreeSet;
use std::path::Path;

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `o365_…` metric-like word in `text`.
fn metric_words(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("o365_") {
        let start = i + at;
        // A word's tail (`x_o365_…`) or a cookie's name (`__Host-o365_consent`) is no metric.
        let preceded_by_word = start > 0
            && (bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'_'
                || bytes[start - 1] == b'-');
        let mut end = start + "o365_".len();
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if !preceded_by_word && end > start + "o365_".len() {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// Whether `word` is an exported metric or one of a histogram's series.
fn exported(word: &str, names: &[String]) -> bool {
    let base = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| word.strip_suffix(s))
        .unwrap_or(word);
    names.iter().any(|n| n == word || n == base)
}

#[test]
fn dashboards_alerts_and_docs_name_only_exported_metrics() {
    let metrics = Metrics::new();
    let names = metrics.names();
    assert!(
        names.len() > 15,
        "the registry lists its metrics: {names:?}"
    );
    for file in [
        "k8s/monitoring/dashboard.json",
        "k8s/monitoring/alerts.rules.yaml",
        "k8s/monitoring/alerts.test.yaml",
        "docs/OPERATIONS.md",
    ] {
        let words = metric_words(&read(file));
        assert!(!words.is_empty(), "{file} names no metric");
        let unknown: Vec<_> = words.iter().filter(|w| !exported(w, names)).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics the relay does not export: {unknown:?}"
        );
    }
}

#[test]
fn every_alert_has_a_promtool_unit_test() {
    let rules = read("k8s/monitoring/alerts.rules.yaml");
    let tests = read("k8s/monitoring/alerts.test.yaml");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    for alert in alerts {
        let firing = tests
            .split("alertname: ")
            .skip(1)
            .any(|case| case.starts_with(alert) && case.contains("exp_labels"));
        assert!(
            firing,
            "alert {alert} has no promtool test in which it fires"
        );
    }
}

#[test]
fn the_word_scanner_finds_metrics_and_their_histogram_series() {
    let words = metric_words(
        "rate(o365_fetch_duration_seconds_bucket[5m]) / x_o365_not a O365_ENV __Host-o365_cookie",
    );
    assert_eq!(
        words.into_iter().collect::<Vec<_>>(),
        vec!["o365_fetch_duration_seconds_bucket".to_string()]
    );
    let names = vec!["o365_fetch_duration_seconds".to_string()];
    assert!(exported("o365_fetch_duration_seconds_bucket", &names));
    assert!(!exported("o365_fetch_durations", &names));
}
