//! Loading the configuration: defaults, every problem reported with its variable, bounds.

use super::*;

fn base() -> Vec<(&'static str, String)> {
    vec![
        (
            "O365_CLIENT_ID",
            "a6099727-6b7b-482c-b509-1df309acc563".into(),
        ),
        ("O365_CLIENT_SECRET", "s3cret-value-for-tests".into()),
        ("O365_WEBHOOK_AUTH_ID", "0123456789abcdef0123".into()),
    ]
}

#[test]
fn defaults_follow_the_contract() {
    let s = Settings::from_vars(base()).unwrap();
    assert_eq!(s.manage_url, "https://manage.office.com");
    assert_eq!(s.login_url, "https://login.microsoftonline.com");
    assert_eq!(s.listen, "0.0.0.0:8080");
    assert_eq!(s.admin_listen, "0.0.0.0:9090");
    assert_eq!(s.redis.prefix, "o365relay:");
    assert_eq!(s.amqp_exchange, "o365.audit");
    assert_eq!(s.amqp_work_queue, "o365.content");
    assert_eq!(s.amqp_queue_type, QueueType::Quorum);
    assert_eq!(s.worker_concurrency, 16);
    assert_eq!(s.reconcile_interval, Duration::from_secs(900));
    assert_eq!(s.reconcile_lookback, Duration::from_secs(86400));
    assert_eq!(s.content_types.len(), 5);
    assert_eq!(s.log_format, LogFormat::Json);
}

#[test]
fn defaults_of_the_additions_match_env_example() {
    let s = Settings::from_vars(base()).unwrap();
    assert_eq!(s.redis.urls[0].expose(), "redis://127.0.0.1:6379");
    assert_eq!(s.amqp_endpoints.len(), 1);
    assert_eq!(
        s.amqp_endpoints[0].url.expose(),
        "amqp://guest:guest@127.0.0.1:5672/%2f"
    );
    assert_eq!(s.amqp_endpoints[0].address, "127.0.0.1:5672");
    assert!(s.public_url.is_none() && s.admin_token.is_none() && s.publisher_id.is_none());
    assert!(s.tenants.is_empty());
    assert!(s.enable_webhook && s.enable_workers && s.enable_reconciler && s.enable_keeper);
    assert_eq!(s.max_attempts, 10);
    assert_eq!(s.retry_base, Duration::from_secs(10));
    assert_eq!(s.retry_max, Duration::from_secs(30 * 60));
    assert_eq!(s.quota_per_minute, 2000);
    assert_eq!(s.tenant_concurrency, 4);
    assert_eq!(s.http_timeout, Duration::from_secs(60));
    assert_eq!(s.fetch_timeout, Duration::from_secs(5 * 60));
    assert_eq!(s.webhook_body_timeout, Duration::from_secs(10));
    assert_eq!(s.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(s.record_dedup_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(s.keeper_interval, Duration::from_secs(5 * 60));
    assert_eq!(s.consent_mode, ConsentMode::Open);
    assert!(s.consent_allowed_tenants.is_empty() && s.trusted_proxies.is_empty());
    assert_eq!(s.consent_starts_per_minute, 10);
    assert!(
        s.consent_state_key.is_none(),
        "the state key is shared through Redis"
    );
    assert_eq!(s.admin_login_failures_per_minute, 5);
    assert_eq!(s.park_probe_interval, Duration::from_secs(5 * 60));
    assert_eq!(s.backpressure_probe_max, Duration::from_secs(30));
    assert_eq!(s.reconcile_concurrency, 32);
    assert!(
        !s.metrics_per_tenant,
        "no per-tenant series unless asked for"
    );
}

/// Every bounded variable, a value just below and just above its range (`None` when the bound
/// is zero), and the range as `.env.example` documents it.
const BOUNDED: [(&str, Option<&str>, &str, &str, &str); 19] = [
    ("WORKER_CONCURRENCY", Some("0"), "1025", "1", "1024"),
    ("TENANT_CONCURRENCY", Some("0"), "1025", "1", "1024"),
    ("MAX_ATTEMPTS", Some("0"), "101", "1", "100"),
    ("QUOTA_PER_MINUTE", Some("0"), "100001", "1", "100000"),
    ("RETRY_BASE", Some("0s"), "61m", "1ms", "1h"),
    ("RETRY_MAX", Some("0s"), "25h", "1ms", "1d"),
    ("RECORD_DEDUP_TTL", None, "31d", "0s", "30d"),
    ("RECONCILE_INTERVAL", Some("999ms"), "8d", "1s", "7d"),
    ("RECONCILE_LOOKBACK", Some("59s"), "8d", "1m", "7d"),
    ("KEEPER_INTERVAL", Some("999ms"), "25h", "1s", "1d"),
    ("RECONCILE_CONCURRENCY", Some("0"), "257", "1", "256"),
    ("HTTP_TIMEOUT", Some("999ms"), "11m", "1s", "10m"),
    ("FETCH_TIMEOUT", Some("999ms"), "7h", "1s", "6h"),
    ("BACKPRESSURE_PROBE_MAX", Some("999ms"), "11m", "1s", "10m"),
    ("WEBHOOK_BODY_TIMEOUT", Some("99ms"), "121s", "100ms", "2m"),
    ("SHUTDOWN_TIMEOUT", None, "3601s", "0s", "1h"),
    ("CONSENT_STARTS_PER_MINUTE", Some("0"), "601", "1", "600"),
    (
        "ADMIN_LOGIN_FAILURES_PER_MINUTE",
        Some("0"),
        "1001",
        "1",
        "1000",
    ),
    (
        "WORKER_CONCURRENCY",
        None,
        "18446744073709551615",
        "1",
        "1024",
    ),
];

fn with(var: &str, value: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = base()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    v.push((format!("O365_{var}"), value.to_string()));
    v
}

#[test]
fn every_bound_is_enforced_and_named_with_its_range() {
    for (var, below, above, min, max) in BOUNDED {
        for value in below.into_iter().chain([above]) {
            let err = Settings::from_vars(with(var, value)).unwrap_err();
            let lines: Vec<&str> = err.0.iter().map(String::as_str).collect();
            assert_eq!(lines.len(), 1, "{var}={value}: {lines:?}");
            assert!(
                lines[0].starts_with(&format!(
                    "O365_{var}: '{value}' is out of range; must be between {min} and {max}"
                )),
                "{var}={value}: {}",
                lines[0]
            );
        }
        for value in [min, max] {
            let mut v = with(var, value);
            // The other end of the retry range must leave room (RETRY_BASE <= RETRY_MAX).
            match var {
                "RETRY_BASE" => v.push(("O365_RETRY_MAX".into(), max.into())),
                "RETRY_MAX" => v.push(("O365_RETRY_BASE".into(), min.into())),
                _ => {}
            }
            let s = Settings::from_vars(v);
            assert!(s.is_ok(), "{var}={value}: {:?}", s.err());
        }
    }
}

#[test]
fn absurd_durations_and_numbers_are_refused_not_overflowed() {
    for (var, value) in [
        ("RECONCILE_INTERVAL", "100000000000d"),
        ("SHUTDOWN_TIMEOUT", "584942417356y"),
        ("RETRY_MAX", "18446744073709551615s"),
        ("QUOTA_PER_MINUTE", "4294967296"),
        ("MAX_ATTEMPTS", "-1"),
    ] {
        let err = Settings::from_vars(with(var, value)).unwrap_err();
        assert_eq!(err.0.len(), 1, "{var}={value}: {err}");
        assert!(err.0[0].starts_with(&format!("O365_{var}: ")), "{err}");
    }
}

#[test]
fn retry_base_above_retry_max_is_refused() {
    let mut v = with("RETRY_BASE", "1m");
    v.push(("O365_RETRY_MAX".into(), "30s".into()));
    let err = Settings::from_vars(v).unwrap_err();
    assert_eq!(
        err.0,
        ["O365_RETRY_BASE: must be above zero and not above O365_RETRY_MAX"]
    );
}

#[test]
fn a_client_secret_alone_is_the_credential() {
    let s = Settings::from_vars(base()).unwrap();
    assert!(
        matches!(&s.credential, Credential::Secret(x) if x.expose() == "s3cret-value-for-tests")
    );
}

#[test]
fn a_client_secret_beside_a_certificate_is_accepted_and_the_certificate_used() {
    let dir = std::env::temp_dir().join(format!("o365-config-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (key, cert) = crate::domain::certs::generate("config test", 1, 2048).unwrap();
    let (crt_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&crt_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let mut v = with("CLIENT_CERT_PATH", &crt_path.display().to_string());
    v.push((
        "O365_CLIENT_KEY_PATH".into(),
        key_path.display().to_string(),
    ));
    let s = Settings::from_vars(v);
    std::fs::remove_dir_all(&dir).unwrap();
    let s = s.unwrap();
    assert!(matches!(s.credential, Credential::Certificate(_)));
}

#[test]
fn urls_with_a_query_a_fragment_or_another_scheme_are_refused() {
    for var in ["LOGIN_URL", "MANAGE_URL", "PUBLIC_URL"] {
        for value in [
            "https://host.example.com/?x=1",
            "https://host.example.com/#top",
            "ftp://host.example.com",
            "javascript:alert(1)",
            "host.example.com",
        ] {
            let err = Settings::from_vars(with(var, value)).unwrap_err();
            assert_eq!(err.0.len(), 1, "{var}={value}: {err}");
            assert!(
                err.0[0].starts_with(&format!("O365_{var}: '{value}' ")),
                "{var}={value}: {err}"
            );
        }
    }
}

#[test]
fn the_manage_url_is_an_origin_while_login_and_public_urls_may_have_a_path() {
    let err = Settings::from_vars(with("MANAGE_URL", "https://manage.office.com/api")).unwrap_err();
    assert_eq!(
        err.0,
        ["O365_MANAGE_URL: must be an origin without a path (e.g. https://manage.office.com)"]
    );
    let mut v = with("LOGIN_URL", "http://127.0.0.1:8090/entra/");
    v.push((
        "O365_PUBLIC_URL".into(),
        "https://Relay.Example.com/o365/".into(),
    ));
    let s = Settings::from_vars(v).unwrap();
    assert_eq!(s.login_url, "http://127.0.0.1:8090/entra");
    assert_eq!(
        s.webhook_address().as_deref(),
        Some("https://relay.example.com/o365/webhook")
    );
    assert_eq!(
        s.consent_redirect_uri().as_deref(),
        Some("https://relay.example.com/o365/consent/callback")
    );
    assert!(!s.public_url_is_insecure());
    let s = Settings::from_vars(with("PUBLIC_URL", "http://127.0.0.1:8080")).unwrap();
    assert!(s.public_url_is_insecure());
}

#[test]
fn clouds_preset_both_urls_and_overrides_win() {
    let mut v = base();
    v.push(("O365_CLOUD", "gcc-high".into()));
    let s = Settings::from_vars(v.clone()).unwrap();
    assert_eq!(s.manage_url, "https://manage.office365.us");
    assert_eq!(s.login_url, "https://login.microsoftonline.us");
    v.push(("O365_MANAGE_URL", "http://127.0.0.1:9999/".into()));
    let s = Settings::from_vars(v).unwrap();
    assert_eq!(s.manage_url, "http://127.0.0.1:9999");
}

#[test]
fn every_problem_is_reported_with_its_variable() {
    let err = Settings::from_vars(vec![
        ("O365_WEBHOOK_AUTH_ID", "short"),
        ("O365_TENANTS", "not-a-guid"),
        ("O365_WORKER_CONCURRENCY", "lots"),
        ("O365_RECONCILE_LOOKBACK", "30d"),
        ("O365_CONTENT_TYPES", "Audit.Nope"),
        ("O365_CLOUD", "mars"),
    ])
    .unwrap_err();
    let text = err.to_string();
    for var in [
        "O365_CLIENT_ID",
        "O365_CLIENT_CERT_PATH",
        "O365_WEBHOOK_AUTH_ID",
        "O365_TENANTS",
        "O365_WORKER_CONCURRENCY",
        "O365_RECONCILE_LOOKBACK",
        "O365_CONTENT_TYPES",
        "O365_CLOUD",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(var)),
            "{var} missing from:\n{text}"
        );
    }
}

#[test]
fn consent_modes_and_the_allowlist_are_read() {
    const A: &str = "41463f53-8812-40f4-890f-865bf6e35190";
    const B: &str = "0b6a3c1d-2e4f-4a5b-9c8d-7e6f5a4b3c2d";
    for (value, mode) in [
        ("open", ConsentMode::Open),
        ("Allowlist", ConsentMode::Allowlist),
        (" approval ", ConsentMode::Approval),
    ] {
        let s = Settings::from_vars(with("CONSENT_MODE", value)).unwrap();
        assert_eq!(s.consent_mode, mode, "{value}");
    }
    let mut v = with("CONSENT_MODE", "allowlist");
    v.push((
        "O365_CONSENT_ALLOWED_TENANTS".into(),
        format!("{A}, {}, {B},", A.to_uppercase()),
    ));
    let s = Settings::from_vars(v).unwrap();
    let allowed: Vec<&str> = s
        .consent_allowed_tenants
        .iter()
        .map(|t| t.as_str())
        .collect();
    assert_eq!(allowed, [A, B], "normalised, duplicates dropped");
}

#[test]
fn a_wrong_consent_mode_or_an_allowlist_not_in_force_is_refused_naming_the_variable() {
    let err = Settings::from_vars(with("CONSENT_MODE", "closed")).unwrap_err();
    assert_eq!(
        err.0,
        ["O365_CONSENT_MODE: 'closed' is not a consent mode (expected open, allowlist or approval)"]
    );
    let err = Settings::from_vars(with("CONSENT_ALLOWED_TENANTS", "not-a-guid")).unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    assert!(
        err.0[0].starts_with("O365_CONSENT_ALLOWED_TENANTS: 'not-a-guid' is not a tenant GUID"),
        "{err}"
    );
    // An allowlist while the mode is open would restrict nothing: refused, not ignored.
    for mode in [None, Some("approval")] {
        let mut v = with(
            "CONSENT_ALLOWED_TENANTS",
            "41463f53-8812-40f4-890f-865bf6e35190",
        );
        if let Some(m) = mode {
            v.push(("O365_CONSENT_MODE".into(), m.into()));
        }
        let err = Settings::from_vars(v).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(
            err.0[0].starts_with("O365_CONSENT_ALLOWED_TENANTS: is set but O365_CONSENT_MODE is"),
            "{err}"
        );
    }
    // Allowlist mode with no configured tenant is fine: the admin API can list them.
    assert!(Settings::from_vars(with("CONSENT_MODE", "allowlist")).is_ok());
}

#[test]
fn trusted_proxies_are_addresses_or_blocks() {
    let s = Settings::from_vars(with(
        "TRUSTED_PROXIES",
        " 10.0.0.0/8, 192.168.1.10 ,fd00::/8",
    ))
    .unwrap();
    let nets: Vec<String> = s.trusted_proxies.iter().map(|n| n.to_string()).collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.168.1.10/32", "fd00::/8"]);
    let err = Settings::from_vars(with("TRUSTED_PROXIES", "10.0.0.0/8,ingress")).unwrap_err();
    assert_eq!(
        err.0,
        ["O365_TRUSTED_PROXIES: 'ingress' is not an IP address or CIDR block (expected e.g. 10.0.0.0/8,192.168.1.10)"]
    );
}

#[test]
fn admin_hosts_are_host_names_without_ports() {
    let s = Settings::from_vars(with(
        "ADMIN_HOSTS",
        " Relay-Admin.ops.svc , status.example.com,",
    ))
    .unwrap();
    assert_eq!(s.admin_hosts, ["relay-admin.ops.svc", "status.example.com"]);
    assert!(Settings::from_vars(with("ADMIN_HOSTS", ""))
        .unwrap()
        .admin_hosts
        .is_empty());
    let err = Settings::from_vars(with("ADMIN_HOSTS", "ok.example,evil.example:9090")).unwrap_err();
    assert_eq!(
        err.0,
        ["O365_ADMIN_HOSTS: \"evil.example:9090\" is not a host name (letters, digits, '.' and '-'; no port)"]
    );
}

#[test]
fn several_amqp_urls_of_one_cluster_are_endpoints_in_order() {
    let s = Settings::from_vars(with(
        "AMQP_URL",
        "amqp://relay:pw1@rabbit-0.rabbit:5672/%2f, amqp://relay:pw1@rabbit-1.rabbit/%2f,amqp://relay:pw1@10.0.0.7:5673/prod?heartbeat=5",
    ))
    .unwrap();
    let addresses: Vec<&str> = s
        .amqp_endpoints
        .iter()
        .map(|e| e.address.as_str())
        .collect();
    assert_eq!(
        addresses,
        [
            "rabbit-0.rabbit:5672",
            "rabbit-1.rabbit:5672",
            "10.0.0.7:5673"
        ]
    );
    assert_eq!(
        s.amqp_endpoints[1].url.expose(),
        "amqp://relay:pw1@rabbit-1.rabbit/%2f",
        "entries are trimmed"
    );
    let tls = Settings::from_vars(with(
        "AMQP_URL",
        "amqps://u:p@mq-1.example.com/%2f,amqps://u:p@mq-2.example.com/%2f",
    ))
    .unwrap();
    assert_eq!(tls.amqp_endpoints[1].address, "mq-2.example.com:5671");
}

#[test]
fn every_bad_amqp_url_is_named_by_its_position_never_by_its_text() {
    let e = Settings::from_vars(with(
        "AMQP_URL",
        "amqp://u:hunter2@a:5672/%2f,,http://u:hunter2@b/,amqp://u:hunter2@c:notaport/,amqp:///%2f",
    ))
    .unwrap_err()
    .0;
    assert_eq!(
        e,
        [
            "O365_AMQP_URL: entry 2 of 5: is empty (expected one or more comma-separated amqp:// or amqps:// URLs of one cluster)",
            "O365_AMQP_URL: entry 3 of 5: must start with amqp:// or amqps://",
            "O365_AMQP_URL: entry 4 of 5: is not a valid AMQP URL (expected amqp[s]://user:password@host:port/vhost, with a host)",
            "O365_AMQP_URL: entry 5 of 5: is not a valid AMQP URL (expected amqp[s]://user:password@host:port/vhost, with a host)",
        ]
    );
    // One URL keeps the message it always had.
    let one = Settings::from_vars(with("AMQP_URL", "rabbit:5672"))
        .unwrap_err()
        .0;
    assert_eq!(one, ["O365_AMQP_URL: must start with amqp:// or amqps://"]);
    let mixed = Settings::from_vars(with(
        "AMQP_URL",
        "amqps://u:hunter2@a/%2f,amqp://u:hunter2@b/%2f",
    ))
    .unwrap_err()
    .0;
    assert_eq!(mixed.len(), 1, "{mixed:?}");
    assert!(mixed[0].starts_with("O365_AMQP_URL: mixes amqp:// and amqps:// URLs"));
    assert!(e
        .iter()
        .chain(&one)
        .chain(&mixed)
        .all(|l| !l.contains("hunter2")));
}

#[test]
fn secrets_do_not_show_in_debug_output() {
    let mut v = base();
    v.push(("O365_ADMIN_TOKEN", "admin-token-0123456789".into()));
    v.push((
        "O365_CONSENT_STATE_KEY",
        "consent-state-key-0123456789abcdef0123".into(),
    ));
    v.push((
        "O365_AMQP_URL",
        "amqp://user:amqp-password@rabbit-0:5672/%2f,amqp://user:amqp-password@rabbit-1:5672/%2f"
            .into(),
    ));
    let s = Settings::from_vars(v).unwrap();
    let dbg = format!("{s:?}");
    for secret in [
        "s3cret-value-for-tests",
        "0123456789abcdef0123",
        "admin-token-0123456789",
        "consent-state-key-0123456789abcdef0123",
        "amqp-password",
    ] {
        assert!(!dbg.contains(secret), "{secret} leaked in {dbg}");
    }
}

#[test]
fn urls_are_redacted_for_messages() {
    assert_eq!(
        redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
        "amqp://guest:***@127.0.0.1:5672/%2f"
    );
}

/// `O365_REDIS_MODE` with its URLs: every mode read, each wrong combination named.
#[test]
fn the_redis_topology_is_read_and_every_wrong_combination_named() {
    let with_all = |pairs: &[(&str, &str)]| {
        let mut v: Vec<(String, String)> = base()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        v.extend(
            pairs
                .iter()
                .map(|(k, x)| (format!("O365_{k}"), x.to_string())),
        );
        Settings::from_vars(v)
    };
    let s = with_all(&[]).unwrap();
    assert_eq!(s.redis.mode, RedisMode::Standalone);
    let s = with_all(&[
        ("REDIS_MODE", "cluster"),
        (
            "REDIS_URL",
            "rediss://u:p@a.example:6379, rediss://u:p@b.example:6379",
        ),
    ])
    .unwrap();
    assert_eq!(s.redis.mode, RedisMode::Cluster);
    assert_eq!(s.redis.urls.len(), 2);
    assert!(s.redis.is_tls());
    assert!(
        !format!("{:?}", s.redis).contains("u:p"),
        "URLs are secrets"
    );
    let s = with_all(&[
        ("REDIS_MODE", "sentinel"),
        (
            "REDIS_URL",
            "redis://s1:26379,redis://s2:26379,redis://s3:26379",
        ),
    ])
    .unwrap();
    assert_eq!(
        s.redis.mode,
        RedisMode::Sentinel {
            master: "mymaster".into()
        }
    );

    let errors = |pairs: &[(&str, &str)]| with_all(pairs).unwrap_err().0;
    assert_eq!(
        errors(&[("REDIS_MODE", "replicated")]),
        ["O365_REDIS_MODE: must be standalone, cluster or sentinel"]
    );
    assert_eq!(
        errors(&[("REDIS_URL", "redis://a:6379,redis://b:6379")]),
        ["O365_REDIS_URL: holds several URLs, but O365_REDIS_MODE is standalone (set it to cluster for seed nodes, or sentinel for sentinels)"]
    );
    assert_eq!(
        errors(&[
            ("REDIS_MODE", "cluster"),
            ("REDIS_URL", "redis://a:6379,unix:///tmp/r.sock")
        ]),
        ["O365_REDIS_URL: URL 2 of 2 must start with redis:// or rediss:// (a cluster or Sentinel is reached over TCP)"]
    );
    assert_eq!(
        errors(&[
            ("REDIS_MODE", "cluster"),
            ("REDIS_URL", "redis://a:6379,rediss://b:6379")
        ]),
        ["O365_REDIS_URL: mixes redis:// and rediss:// (every node of one deployment is reached the same way)"]
    );
    let e = errors(&[
        ("REDIS_MODE", "cluster"),
        (
            "REDIS_URL",
            "redis://x:secret1@a:6379,redis://x:secret2@b:6379",
        ),
    ]);
    assert_eq!(
        e,
        ["O365_REDIS_URL: gives the seed nodes different users or passwords (a cluster has one ACL)"]
    );
    assert_eq!(
        errors(&[("REDIS_MODE", "cluster"), ("REDIS_PREFIX", "{app}:")]),
        ["O365_REDIS_PREFIX: must not contain '{' or '}' in cluster mode (the relay places the hash tags itself)"]
    );
    // Read only in sentinel mode (.env.example sets it beside the default mode).
    assert!(with_all(&[("REDIS_SENTINEL_MASTER", "mymaster")]).is_ok());
    assert_eq!(
        errors(&[
            ("REDIS_MODE", "sentinel"),
            ("REDIS_SENTINEL_MASTER", "my master")
        ]),
        ["O365_REDIS_SENTINEL_MASTER: must be a master name as Sentinel knows it (1 to 128 characters, no spaces)"]
    );
    assert_eq!(
        errors(&[("REDIS_MODE", "cluster"), ("REDIS_URL", "rediss://a:1/#insecure")]),
        ["O365_REDIS_URL: must not have a '#' fragment ('#insecure' would switch certificate verification off; give a private CA with O365_REDIS_CA_PATH instead)"]
    );
}

#[test]
fn the_consent_state_key_is_at_least_32_bytes() {
    let err = Settings::from_vars(with("CONSENT_STATE_KEY", &"k".repeat(31))).unwrap_err();
    assert_eq!(err.0.len(), 1, "{:?}", err.0);
    assert!(
        err.0[0].starts_with("O365_CONSENT_STATE_KEY: is shorter than 32 bytes"),
        "{}",
        err.0[0]
    );
    assert!(
        !err.0[0].contains(&"k".repeat(31)),
        "the value is not shown"
    );
    let s =
        Settings::from_vars(with("CONSENT_STATE_KEY", &format!(" {}\n", "k".repeat(32)))).unwrap();
    assert_eq!(
        s.consent_state_key.as_ref().map(|k| k.expose().as_str()),
        Some(&*"k".repeat(32))
    );
    let s = Settings::from_vars(with("CONSENT_STATE_KEY", "")).unwrap();
    assert!(s.consent_state_key.is_none());
}
