//! Metrics, logs, `check` and configuration errors, as an operator sees them.

use crate::helpers::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_what_happened() {
    let env = TestEnv::start(Options::default()).await;
    let before = env.metrics().await;
    assert!(before.contains("o365_work_queue_depth 0"), "{before}");
    let blobs = env
        .sim
        .publish(TENANT_A, "Audit.Exchange", 3, Some(7))
        .await;
    let unique: std::collections::HashSet<&String> =
        blobs.iter().flat_map(|b| b.record_ids.iter()).collect();
    assert_eq!(env.notify(&env.notification(&blobs)).await.status(), 200);
    let bad = env
        .http
        .post(format!("{}/webhook", env.public_url))
        .header("Webhook-AuthID", "wrong-wrong-wrong-wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    assert_eq!(env.records(unique.len()).await.len(), unique.len());
    let m = env.metrics().await;
    for line in [
        r#"o365_notifications_total{reason="ok",result="accepted"} 1"#.to_string(),
        r#"o365_notifications_total{reason="auth",result="rejected"} 1"#.to_string(),
        r#"o365_blobs_total{result="relayed"} 3"#.to_string(),
        format!(
            r#"o365_records_published_total{{content_type="Audit.Exchange"}} {}"#,
            unique.len()
        ),
        r#"o365_token_requests_total{result="ok"} 1"#.to_string(),
        r#"o365_fetch_duration_seconds_count{content_type="Audit.Exchange"} 3"#.to_string(),
        r#"o365_management_requests_total{call="content",status="2xx"} 3"#.to_string(),
        "o365_relay_lag_seconds_count 3".to_string(),
    ] {
        assert!(m.contains(&line), "missing `{line}` in:\n{m}");
    }
    assert!(m.contains("o365_certificate_expiry_seconds"), "{m}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_client_secret_there_is_no_certificate_expiry_series_for_the_alert_to_fire_on() {
    let env = TestEnv::start(Options {
        use_secret: true,
        ..Options::default()
    })
    .await;
    let m = env.metrics().await;
    assert!(m.contains("o365_records_duplicate_total 0"), "{m}");
    assert!(!m.contains("o365_certificate_expiry_seconds"), "{m}");
    env.cleanup().await;
}

/// What a relay process printed during [`full_run`], and the access token it used.
struct FullRun {
    logs: String,
    access_token: String,
}

/// Runs `o365-relay serve` as a real process with `debug` logs and `credential` as its only
/// client credential, relays traffic through it (a subscription start with its webhook
/// validation, notifications, a wrong auth id, a wrong admin token), stops it with SIGTERM and
/// returns everything it printed. Checks on the way that the run really used the credential (it
/// fetched a token itself) and really relayed.
async fn full_run(env: &TestEnv, credential: &[(&str, &str)], admin_token: &str) -> FullRun {
    let public = free_port();
    let admin = free_port();
    let public_url = format!("http://127.0.0.1:{public}");
    let vars = RelayEnv::default()
        .overrides(env.vars.iter().cloned())
        .remove("O365_CLIENT_CERT_PATH")
        .remove("O365_CLIENT_KEY_PATH")
        .remove("O365_CLIENT_SECRET")
        .listen_on(public, admin)
        .public_url(&public_url)
        .workers(true)
        .set("O365_ADMIN_TOKEN", admin_token)
        .overrides(credential.iter().copied());
    let log_path = env.dir.join(format!("relay-{public}.log"));
    let mut child = relay_command(&["serve"])
        .envs(vars.into_vars())
        .env("RUST_LOG", "debug")
        .inherit("PATH")
        .spawn(&log_path);
    child
        .wait_ready(
            &format!("http://127.0.0.1:{admin}"),
            Duration::from_secs(20),
        )
        .await;
    let http = reqwest::Client::new();
    // Subscriptions (the validation handshake carries the auth id), notifications, admin calls.
    let r = http
        .post(format!(
            "http://127.0.0.1:{admin}/admin/tenants/{TENANT_A}/subscriptions/start?force=true"
        ))
        .bearer_auth(admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let blobs = env
        .sim
        .publish(TENANT_A, "Audit.Exchange", 2, Some(5))
        .await;
    let unique: std::collections::HashSet<&String> =
        blobs.iter().flat_map(|b| b.record_ids.iter()).collect();
    assert_eq!(
        env.records(unique.len()).await.len(),
        unique.len(),
        "relayed through the notifications the simulator sent"
    );
    let wrong = http
        .post(format!("{public_url}/webhook"))
        .header("Webhook-AuthID", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let _ = http
        .get(format!("http://127.0.0.1:{admin}/admin/tenants"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();

    let store = &env.relay.store;
    let tid = o365_relay::domain::TenantId::parse(TENANT_A).unwrap();
    let cached = store
        .tokens()
        .get(&tid)
        .await
        .unwrap()
        .expect("token cached in Redis");
    let access_token = serde_json::from_str::<serde_json::Value>(&cached).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();

    child.sigterm();
    child.wait();
    let logs = child.logs();
    assert!(
        logs.contains("Blob relayed"),
        "debug logs were captured:\n{logs}"
    );
    assert!(
        logs.contains("Fetched an app-only token."),
        "the process fetched its token itself, with its credential:\n{logs}"
    );
    assert!(env.sim.token_requests(TENANT_A) >= 1, "Entra issued it");
    for line in logs.lines().filter(|l| l.starts_with('{')) {
        serde_json::from_str::<serde_json::Value>(line).expect("every log line is JSON");
    }
    FullRun { logs, access_token }
}

/// The secrets every run holds: the webhook auth id, the admin token, the access token.
fn assert_common_secrets_absent(env: &TestEnv, run: &FullRun, admin_token: &str, what: &str) {
    for (name, secret) in [
        ("auth id", env.auth_id.as_str()),
        ("admin token", admin_token),
        ("access token", run.access_token.as_str()),
        (
            "access token signature",
            run.access_token.rsplit('.').next().unwrap(),
        ),
    ] {
        assert!(
            !run.logs.contains(secret),
            "{name} leaked into the logs of the {what} run"
        );
    }
}

/// Runs `o365-relay serve` twice as a real process with `debug` logs — once with a client secret,
/// once with the certificate, so that each credential is loaded and used — relays traffic
/// through it, and looks for every secret in everything it printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_appears_in_the_logs_of_a_full_run() {
    let admin_token = "admin-token-that-is-secret-1234";

    // Client secret.
    let env = TestEnv::start(Options {
        workers: false,
        ..Default::default()
    })
    .await;
    let client_secret = "test-client-secret-value";
    let run = full_run(&env, &[("O365_CLIENT_SECRET", client_secret)], admin_token).await;
    assert_common_secrets_absent(&env, &run, admin_token, "client-secret");
    assert!(
        !run.logs.contains(client_secret),
        "client secret leaked into the logs"
    );
    env.cleanup().await;

    // Certificate: the private key is loaded and signs every client assertion.
    let env = TestEnv::start(Options {
        workers: false,
        ..Default::default()
    })
    .await;
    let cert_path = env.dir.join("client.crt").display().to_string();
    let key_path = env.dir.join("client.key").display().to_string();
    let run = full_run(
        &env,
        &[
            ("O365_CLIENT_CERT_PATH", cert_path.as_str()),
            ("O365_CLIENT_KEY_PATH", key_path.as_str()),
        ],
        admin_token,
    )
    .await;
    assert_common_secrets_absent(&env, &run, admin_token, "certificate");
    // Every line of the key's PEM body, as written in the file and as the relay holds it in
    // memory (re-encoded to PKCS#8). Lines shorter than 16 characters (a PEM body's last line
    // can be a few characters) could match by chance and are left out.
    let file_pem = std::fs::read_to_string(&key_path).unwrap();
    let loaded = o365_relay::domain::certs::ClientCertificate::load(&cert_path, &key_path).unwrap();
    let memory_pem = String::from_utf8(loaded.key_pem.expose().clone()).unwrap();
    let mut key_lines: Vec<&str> = file_pem
        .lines()
        .chain(memory_pem.lines())
        .map(str::trim)
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .collect();
    key_lines.sort_unstable();
    key_lines.dedup();
    assert!(
        key_lines.len() >= 20,
        "a 2048-bit key spans over 20 PEM lines, got {}",
        key_lines.len()
    );
    for (i, line) in key_lines.iter().enumerate() {
        assert!(
            !run.logs.contains(line),
            "private key leaked into the logs (PEM body line {i} of {})",
            key_lines.len()
        );
    }
    env.cleanup().await;
}

fn relay_cmd(vars: &[(String, String)], args: &[&str]) -> std::process::Output {
    relay_command(args).envs(vars.iter().cloned()).output()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_reports_each_dependency_ok_or_failed() {
    let env = TestEnv::start(Options {
        workers: false,
        ..Default::default()
    })
    .await;
    let out = relay_cmd(&env.vars, &["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for line in [
        "ok      configuration",
        "ok      redis",
        "ok      rabbitmq",
        "ok      token endpoint",
        "ok      certificate",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    let mut broken = env.vars.clone();
    broken.retain(|(k, _)| k != "O365_REDIS_URL" && k != "O365_AMQP_URL");
    broken.push(("O365_REDIS_URL".into(), "redis://127.0.0.1:1".into()));
    broken.push((
        "O365_AMQP_URL".into(),
        "amqp://guest:secretpw@127.0.0.1:1/%2f".into(),
    ));
    let out = relay_cmd(&broken, &["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("failed  redis (redis://127.0.0.1:1"),
        "{text}"
    );
    assert!(
        text.contains("failed  rabbitmq (amqp://guest:***@127.0.0.1:1/%2f)"),
        "{text}"
    );
    assert!(!text.contains("secretpw"));
    env.cleanup().await;
}

#[test]
fn bad_configuration_exits_2_with_one_line_per_problem_and_no_panic() {
    let out = relay_cmd(
        &[
            ("O365_WEBHOOK_AUTH_ID".into(), "short".into()),
            ("O365_TENANTS".into(), "nope".into()),
            ("O365_WORKER_CONCURRENCY".into(), "many".into()),
        ],
        &["serve"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for var in [
        "O365_CLIENT_ID",
        "O365_CLIENT_CERT_PATH",
        "O365_WEBHOOK_AUTH_ID",
        "O365_TENANTS",
        "O365_WORKER_CONCURRENCY",
    ] {
        assert_eq!(
            err.lines()
                .filter(|l| l.trim_start().starts_with(var))
                .count(),
            1,
            "{var} in:\n{err}"
        );
    }
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}
