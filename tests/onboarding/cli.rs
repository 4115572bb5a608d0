//! The operator CLI, run as the built binary with a clean environment: `tenants`, `consent-url`,
//! `cert new` / `cert show` (checked independently with the `openssl` command), and
//! configuration errors.

use crate::consent::consent_keys_in_redis;
use crate::helpers::*;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use o365_relay::domain::TenantId;
use redis::AsyncCommands;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

/// Runs `o365-relay args…` with exactly `vars` as its environment.
fn run(args: &[&str], vars: &[(String, String)]) -> Output {
    relay_command(args)
        .envs(vars.iter().cloned())
        .env("RUST_LOG", "warn")
        .output()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let o = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(o.status.success(), "openssl {args:?}: {}", stderr(&o));
    o.stdout
}

fn openssl_text(args: &[&str]) -> String {
    String::from_utf8(openssl(args)).unwrap()
}

/// A `name: value` line of `cert new` / `cert show` output.
fn field(out: &str, name: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no '{name}:' in\n{out}"))
        .trim()
        .to_string()
}

/// The `keyCredentials` JSON printed after its heading.
fn manifest_entry(out: &str) -> serde_json::Value {
    let json = out
        .split_once("keyCredentials entry for the app manifest:")
        .unwrap_or_else(|| panic!("no manifest entry in\n{out}"))
        .1;
    serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {json}"))
}

/// Checks a manifest entry and the printed x5t against the certificate, with openssl only.
fn check_against_certificate(out: &str, cert: &Path) {
    let cert = cert.to_str().unwrap();
    let der = openssl(&["x509", "-in", cert, "-outform", "DER"]);
    let fingerprint = openssl_text(&["x509", "-in", cert, "-noout", "-fingerprint", "-sha1"]);
    let hex: String = fingerprint
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "");
    let sha1: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    assert_eq!(sha1.len(), 20);

    let entry = manifest_entry(out);
    assert_eq!(
        entry["customKeyIdentifier"],
        STANDARD.encode(&sha1),
        "{entry}"
    );
    assert_eq!(entry["value"], STANDARD.encode(&der), "{entry}");
    assert_eq!(entry["type"], "AsymmetricX509Cert");
    assert_eq!(entry["usage"], "Verify");
    let key_id = entry["keyId"].as_str().unwrap();
    let guid = uuid::Uuid::parse_str(key_id).expect("keyId is a GUID");
    assert_eq!(guid.hyphenated().to_string(), key_id, "hyphenated GUID");
    let x5t = field(out, "x5t");
    assert_eq!(x5t, URL_SAFE_NO_PAD.encode(&sha1));
    assert_eq!(x5t.len(), 27);
    assert_eq!(field(out, "thumbprint"), hex.to_ascii_uppercase());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_add_list_and_remove_change_the_registry_the_relay_serves() {
    let env = TestEnv::start(Options::default()).await;
    let b = TenantId::parse(TENANT_B).unwrap();
    assert!(!env.relay.tenants.is_served(&b).await);

    let o = run(&["tenants", "add", TENANT_B], &env.vars);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&format!("added {TENANT_B}")));
    // The running relay (another process) caches its answers, negative ones included, for a
    // few seconds.
    assert!(
        eventually(std::time::Duration::from_secs(10), || async {
            env.relay.tenants.is_served(&b).await
        })
        .await,
        "the running relay serves it"
    );
    assert_eq!(env.notify_for(TENANT_B).await.status(), 200);

    let o = run(&["tenants", "list"], &env.vars);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with(TENANT_STATIC) && lines[0].contains("static"),
        "{out}"
    );
    assert!(
        lines[1].starts_with(TENANT_B) && lines[1].contains("admin"),
        "{out}"
    );

    // A cached token is dropped on removal.
    env.relay.tokens.get(&b).await.unwrap();
    let token_key = env.redis_key(&format!("token:{TENANT_B}"));
    let mut redis = redis().await;
    assert!(redis.exists::<_, bool>(&token_key).await.unwrap());

    let o = run(&["tenants", "remove", TENANT_B], &env.vars);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&format!("removed {TENANT_B}")));
    assert!(!redis.exists::<_, bool>(&token_key).await.unwrap());
    assert!(
        eventually(std::time::Duration::from_secs(10), || async {
            !env.relay.tenants.is_served(&b).await
        })
        .await,
        "the running relay stops serving the removed tenant"
    );
    assert_eq!(env.notify_for(TENANT_B).await.status(), 400);
    let o = run(&["tenants", "list"], &env.vars);
    assert_eq!(stdout(&o).lines().count(), 1, "{}", stdout(&o));

    // Static tenants cannot be removed here; bad ids are refused.
    let o = run(&["tenants", "remove", TENANT_STATIC], &env.vars);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("O365_TENANTS"), "{}", stderr(&o));
    let o = run(&["tenants", "add", "not-a-tenant"], &env.vars);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a tenant GUID"), "{}", stderr(&o));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consent_url_prints_the_link_that_starts_the_consent_in_the_admins_browser() {
    let env = TestEnv::start(Options::default()).await;
    let o = run(&["consent-url"], &env.vars);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "one line, for scripts: {out}");
    assert_eq!(out.trim(), format!("{}/consent/start", env.public_url));
    assert!(stderr(&o).contains(&format!("{}/consent ", env.public_url)));
    assert_eq!(
        consent_keys_in_redis(&env).await,
        Vec::<String>::new(),
        "no state is minted on the terminal: it could not be bound to the admin's browser"
    );

    // The admin opens it, accepts, and lands on our success page.
    let (authorize, _, cookie) = crate::consent::begin(&env).await;
    let callback = crate::consent::decide(&env, &authorize, "accept", None).await;
    let r = env
        .http
        .get(callback)
        .header("Cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(env.tenant_ids().await.contains(&TENANT_A.to_string()));

    // Without O365_PUBLIC_URL there is no redirect URI: a configuration error.
    let vars: Vec<_> = env
        .vars
        .iter()
        .filter(|(k, _)| k != "O365_PUBLIC_URL")
        .cloned()
        .collect();
    let o = run(&["consent-url"], &vars);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("O365_PUBLIC_URL"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cert_new_writes_a_private_key_and_a_certificate_whose_manifest_entry_matches() {
    let dir = std::env::temp_dir().join(format!("o365-cert-{}", unique()));
    let out_dir = dir.join("out");
    let o = run(
        &[
            "cert",
            "new",
            "--cn",
            "relay.contoso.example",
            "--days",
            "10",
            "--out",
            out_dir.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let crt = out_dir.join("o365-relay.crt");
    let key = out_dir.join("o365-relay.key");
    assert!(crt.exists() && key.exists(), "{out}");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key readable by its owner only");
    check_against_certificate(&out, &crt);

    let (c, k) = (crt.to_str().unwrap(), key.to_str().unwrap());
    assert!(
        openssl_text(&["x509", "-in", c, "-noout", "-subject"]).contains("relay.contoso.example")
    );
    assert!(
        openssl_text(&["rsa", "-in", k, "-noout", "-text"]).contains("3072 bit"),
        "default key size 3072"
    );
    assert_eq!(
        openssl(&["x509", "-in", c, "-noout", "-modulus"]),
        openssl(&["rsa", "-in", k, "-noout", "-modulus"]),
        "the key belongs to the certificate"
    );
    let expires_within = |secs: u64| {
        !Command::new("openssl")
            .args(["x509", "-in", c, "-noout", "-checkend", &secs.to_string()])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(
        !expires_within(9 * 86_400) && expires_within(11 * 86_400),
        "--days 10"
    );

    // An existing key is never overwritten.
    let before = std::fs::read(&key).unwrap();
    let o = run(&["cert", "new", "--out", out_dir.to_str().unwrap()], &[]);
    assert!(!o.status.success());
    assert_eq!(std::fs::read(&key).unwrap(), before);
    // Key sizes other than 2048/3072/4096 are refused.
    let o = run(
        &[
            "cert",
            "new",
            "--bits",
            "1024",
            "--out",
            dir.join("x").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(!dir.join("x").exists());

    // `cert show` prints the same values, with the expiry.
    let o = run(&["cert", "show", c], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let shown = stdout(&o);
    check_against_certificate(&shown, &crt);
    assert_eq!(field(&shown, "x5t"), field(&out, "x5t"));
    let not_after = field(&shown, "not after");
    let enddate = openssl_text(&["x509", "-in", c, "-noout", "-enddate"]);
    let year = (chrono::Utc::now() + chrono::Duration::days(10))
        .format("%Y")
        .to_string();
    assert!(
        not_after.contains(&year) && enddate.contains(&year),
        "{not_after} / {enddate}"
    );
    let o = run(
        &["cert", "show", dir.join("missing.crt").to_str().unwrap()],
        &[],
    );
    assert!(!o.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_simulator_accepts_client_assertions_signed_with_a_key_from_cert_new() {
    init_tracing();
    let dir = std::env::temp_dir().join(format!("o365-cert-{}", unique()));
    let o = run(
        &[
            "cert",
            "new",
            "--bits",
            "2048",
            "--out",
            dir.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let crt = dir.join("o365-relay.crt");
    let key = dir.join("o365-relay.key");
    let vars = |login: &str| {
        vec![
            ("O365_CLIENT_ID", CLIENT_ID.to_string()),
            ("O365_CLIENT_CERT_PATH", crt.display().to_string()),
            ("O365_CLIENT_KEY_PATH", key.display().to_string()),
            ("O365_WEBHOOK_AUTH_ID", "auth-id-0123456789abcdef".into()),
            ("O365_LOGIN_URL", login.to_string()),
            ("O365_MANAGE_URL", login.to_string()),
        ]
    };
    let token = |login: String| async move {
        let settings = o365_relay::config::Settings::from_vars(vars(&login)).unwrap();
        o365_relay::microsoft::tokens::EntraClient::new(&settings, client())
            .app_token(&TenantId::parse(TENANT_A).unwrap())
            .await
    };

    // Registered in the app: the sim verifies the RS256 assertion and issues a token.
    let sim = start_sim(&[TENANT_A.into()], vec![std::fs::read(&crt).unwrap()]).await;
    let t = token(sim.url()).await.expect("assertion accepted");
    let claims: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(t.token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["tid"], TENANT_A);
    assert_eq!(sim.token_requests(TENANT_A), 1);
    sim.stop().await;

    // Not registered (another certificate): refused.
    let (_, other_cert) = o365_relay::domain::certs::generate("other", 1, 2048).unwrap();
    let sim = start_sim(&[TENANT_A.into()], vec![other_cert]).await;
    let r = token(sim.url()).await;
    assert!(r.is_err(), "an unregistered certificate is refused: {r:?}");
    sim.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_configuration_exits_2_with_one_line_per_variable() {
    let vars: Vec<(String, String)> = [
        ("O365_CLIENT_ID", "not-a-guid"),
        ("O365_WEBHOOK_AUTH_ID", "short"),
        ("O365_AMQP_QUEUE_TYPE", "lazy"),
        ("O365_CLIENT_SECRET", "super-secret-value-123"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for args in [
        &["tenants", "list"][..],
        &["consent-url"][..],
        &["subscriptions", "list"][..],
    ] {
        let o = run(args, &vars);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = stderr(&o);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines[0], "o365-relay: configuration is invalid:", "{err}");
        for var in [
            "O365_CLIENT_ID",
            "O365_WEBHOOK_AUTH_ID",
            "O365_AMQP_QUEUE_TYPE",
        ] {
            assert_eq!(
                lines
                    .iter()
                    .filter(|l| l.trim_start().starts_with(&format!("{var}:")))
                    .count(),
                1,
                "one line for {var}: {err}"
            );
        }
        assert_eq!(lines.len(), 4, "nothing else: {err}");
        assert!(!err.contains("super-secret-value-123"), "no secret echoed");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_bad_input_exits_2_from_every_command_and_a_failed_operation_exits_1() {
    let env = TestEnv::start(Options::default()).await;
    for args in [
        &["tenants", "add", "not-a-tenant"][..],
        &["tenants", "remove", "not-a-tenant"][..],
        &["subscriptions", "list", "--tenant", "not-a-tenant"][..],
        &["subscriptions", "start", "--tenant", "not-a-tenant"][..],
        &["subscriptions", "stop", "--tenant", "not-a-tenant"][..],
        &["subscriptions", "list", "--content-type", "Audit.Nope"][..],
        &["cert", "new", "--bits", "1024", "--out", "/nonexistent"][..],
    ] {
        let o = run(args, &env.vars);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{args:?}: {}", stderr(&o));
    }
    // Good input, but the operation is refused: 1.
    let o = run(&["tenants", "remove", TENANT_STATIC], &env.vars);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let o = run(&["cert", "show", "/nonexistent/o365-relay.crt"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_refuses_an_open_admin_listener_without_a_token_unless_told_it_is_private() {
    let env = TestEnv::start(Options::default()).await;
    let (public, admin) = (free_port(), free_port());
    let vars: Vec<(String, String)> = env
        .vars
        .iter()
        .filter(|(k, _)| k != "O365_ADMIN_TOKEN")
        .cloned()
        .chain([
            ("O365_LISTEN".to_string(), format!("127.0.0.1:{public}")),
            ("O365_ADMIN_LISTEN".to_string(), format!("0.0.0.0:{admin}")),
        ])
        .collect();
    let o = run(&["serve"], &vars);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("O365_ADMIN_TOKEN: is required"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("O365_ADMIN_ALLOW_UNAUTHENTICATED"),
        "{}",
        stderr(&o)
    );

    // Told explicitly, it serves (and still stops cleanly on SIGTERM).
    let log = std::env::temp_dir().join(format!("o365-relay-open-admin-{}.log", unique()));
    let mut relay = relay_command(&["serve"])
        .envs(vars.iter().cloned())
        .env("O365_ADMIN_ALLOW_UNAUTHENTICATED", "true")
        .env("RUST_LOG", "warn")
        .spawn(&log);
    relay
        .wait_ready(
            &format!("http://127.0.0.1:{admin}"),
            std::time::Duration::from_secs(30),
        )
        .await;
    relay.sigterm();
    let status = relay.wait_exit(std::time::Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let _ = std::fs::remove_file(&log);
    env.cleanup().await;
}

#[test]
fn a_configuration_value_that_is_not_utf8_exits_2_naming_the_variable_not_the_value() {
    use std::os::unix::ffi::OsStrExt;
    let value = std::ffi::OsStr::from_bytes(b"zq7-auth\xff\xfezq8-id");
    let o = Command::new(env!("CARGO_BIN_EXE_o365-relay"))
        .args(["tenants", "list"])
        .env_clear()
        .env("O365_WEBHOOK_AUTH_ID", value)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the o365-relay binary runs");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("O365_WEBHOOK_AUTH_ID: is not valid UTF-8"),
        "{err}"
    );
    assert!(!err.contains("zq7") && !err.contains("zq8"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // One line for that variable; the others' problems are still all reported.
    assert_eq!(err.matches("O365_WEBHOOK_AUTH_ID").count(), 1, "{err}");
    assert!(err.contains("O365_CLIENT_ID"), "{err}");
}
