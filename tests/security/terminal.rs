//! Outside text shown on a terminal (issue 20, part 5): a message that carries terminal
//! sequences — retitle the window (OSC 0), clear the screen, start a fake line — is shown
//! escaped by every command that prints it, and by the human-readable log; a flood of
//! wrong-auth webhook posts writes a few log lines while the metric counts every post.

use crate::helpers::*;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use o365_relay::domain::TenantId;
use o365_relay::tenancy::tenants::{AddedBy, NewTenant};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Retitles the terminal, rings, clears the screen, then forges a line of its own, hidden
/// behind a right-to-left override.
const HOSTILE: &str = "\x1b]0;pwned\x07\x1b[2J\r\nall tenants ok \u{202e}kO\u{9b}31m\x7f";
/// How the commands show it.
const SHOWN: &str =
    "\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\u{d}\\u{a}all tenants ok \\u{202e}kO\\u{9b}31m\\u{7f}";

/// No byte or character of `out` can drive a terminal; newlines only end lines.
fn assert_inert(out: &str) {
    let bad: Vec<char> = out
        .chars()
        .filter(|&c| c != '\n' && o365_relay::ops::terminal::is_unsafe(c))
        .collect();
    assert!(bad.is_empty(), "raw {bad:?} in:\n{out}");
    assert!(
        !out.lines().any(|l| l.starts_with("all tenants ok")),
        "a forged line:\n{out}"
    );
}

fn cli(env: &TestEnv, args: &[&str]) -> String {
    let o = relay_command(args)
        .envs(env.vars.iter().cloned())
        .env("RUST_LOG", "warn")
        .output();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).expect("UTF-8")
}

fn tid(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_list_shows_a_hostile_reason_escaped() {
    let env = TestEnv::start(Options::default()).await;
    // A dead letter as the worker writes one, its reason Microsoft's error text.
    let conn = amqp_connection().await;
    let channel = conn.create_channel().await.unwrap();
    let mut headers = FieldTable::default();
    for (k, v) in [
        ("o365-tenant-id", TENANT_A),
        ("o365-content-type", "Audit.Exchange"),
        ("o365-error-code", "AF50000"),
        ("o365-dead-reason", HOSTILE),
        ("o365-dead-at", "2026-01-01T00:00:00Z"),
    ] {
        headers.insert(ShortString::from(k), AMQPValue::LongString(v.into()));
    }
    channel
        .basic_publish(
            "".into(),
            format!("{}.dead", env.work_queue).as_str().into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default()
                .with_message_id("hostile-blob".into())
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let _ = conn.close(200, "done".into()).await;

    let out = cli(&env, &["dead-letters", "list"]);
    assert!(out.contains("hostile-blob"), "{out}");
    assert!(out.contains(SHOWN), "{out}");
    assert_inert(&out);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_and_tenants_list_show_hostile_reasons_and_names_escaped() {
    let env = TestEnv::start(Options::default()).await;
    let t = tid(TENANT_A);
    env.relay
        .tenants
        .add(
            &t,
            AddedBy::Consent,
            Some(HOSTILE.into()),
            NewTenant::Healthy,
        )
        .await
        .unwrap();
    // Parked with Microsoft's error text as the reason.
    assert!(env
        .relay
        .tenants
        .park(&t, "AF20010", HOSTILE)
        .await
        .unwrap());

    let status = cli(&env, &["status"]);
    assert!(status.contains(TENANT_A), "{status}");
    assert!(status.contains("\\u{1b}]0;pwned\\u{7}"), "{status}");
    assert_inert(&status);

    let list = cli(&env, &["tenants", "list"]);
    assert!(list.contains(SHOWN), "{list}");
    assert_inert(&list);
    env.cleanup().await;
}

/// A writer into a buffer the test reads.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Captured {
    type Writer = Captured;
    fn make_writer(&'w self) -> Captured {
        self.clone()
    }
}

/// The log with the formatter's own colours (SGR, `ESC [ … m`) taken out.
fn without_colours(log: &str) -> String {
    let mut out = String::new();
    let mut rest = log;
    while let Some(i) = rest.find("\x1b[") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find(|c: char| !(c.is_ascii_digit() || c == ';')) {
            Some(j) if after[j..].starts_with('m') => rest = &after[j + 1..],
            _ => {
                out.push_str("\x1b[");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn the_pretty_log_shows_hostile_field_values_escaped_on_one_line() {
    let log = Captured::default();
    let subscriber = o365_relay::ops::telemetry::subscriber(
        o365_relay::config::LogFormat::Pretty,
        tracing_subscriber::EnvFilter::new("info"),
        log.clone(),
    );
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("job", content_id = HOSTILE);
        let _entered = span.enter();
        tracing::warn!(tenant_id = TENANT_A, reason = HOSTILE, error = %HOSTILE, "Tenant parked.");
        tracing::warn!("{HOSTILE}");
    });
    let text = without_colours(&String::from_utf8(log.0.lock().unwrap().clone()).unwrap());
    assert_eq!(text.matches('\n').count(), 2, "one line per event:\n{text}");
    // Every value still there to read, each event on its line.
    assert_eq!(text.matches("]0;pwned").count(), 5, "{text}");
    assert_inert(&text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_wrong_auth_webhook_posts_writes_a_few_warnings_and_counts_every_post() {
    // The real binary, its log as an operator reads it (pretty), on ports of its own.
    let env = TestEnv::start(Options::default()).await;
    let (mut relay, public_url, admin_url) = env.serve_binary(&[], "flood.log").await;

    let http = client();
    for i in 0..200 {
        let r = http
            .post(format!("{public_url}/webhook"))
            .header("Webhook-AuthID", format!("guess-{i}"))
            .header("Content-Type", "application/json")
            .body("[]")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let metrics = http
        .get(format!("{admin_url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"o365_notifications_total{reason="auth",result="rejected"} 200"#),
        "every post counted:\n{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("o365_notifications_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    relay.stop(Duration::from_secs(10)).await;
    let log = relay.logs();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("Webhook-AuthID"))
        .count();
    assert!(
        (1..=3).contains(&warnings),
        "{warnings} wrong-auth warnings for 200 posts:\n{log}"
    );
    assert_inert(&without_colours(&log));
    env.cleanup().await;
}
