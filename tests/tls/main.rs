//! TLS to Redis and RabbitMQ against real TLS servers the tests start (see [`servers`]): a
//! `redis-server` listening only on TLS with an ACL user, and `stunnel` in front of the local
//! RabbitMQ, both with a private CA the test makes. docs/OPERATIONS.md, "Managed Redis and
//! RabbitMQ (TLS)".
//!
//! Needs the local RabbitMQ and Redis (as every integration test) and stunnel
//! (`bash .ci/tls-setup`).

mod servers;

use o365_relay::app::Application;
use o365_relay::config::Settings;
use servers::{TlsRabbit, TlsRedis, REDIS_PASSWORD};
use std::time::Duration;
use test_support::*;

const CLIENT_SECRET: &str = "tls-test-client-secret";

/// A fresh PKI in a directory of its own.
fn pki(names: &Names) -> Pki {
    Pki::new(&std::env::temp_dir().join(format!("o365-relay-tls-{}", names.id)))
}

/// `o365-relay check` with `vars` only: (exit code, stdout).
fn check(vars: Vec<(String, String)>) -> (Option<i32>, String) {
    let out = RelayCommand::new(env!("CARGO_BIN_EXE_o365-relay"), &["check"])
        .envs(vars)
        .output();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), format!("{stdout}{stderr}"))
}

/// The line of `check`'s table about `what` (`redis`, `rabbitmq`).
fn line<'a>(table: &'a str, what: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(what))
        .unwrap_or_else(|| panic!("no {what} line in:\n{table}"))
}

/// Redis keys under `prefix` in the TLS Redis, read with the test CA and the ACL user.
async fn tls_redis_keys(redis: &TlsRedis, ca: &str, prefix: &str) -> Vec<String> {
    let client = redis::Client::build_with_tls(
        redis.url(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(ca).unwrap()),
        },
    )
    .unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut c)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_notification_is_relayed_over_rediss_and_amqps_with_private_cas() {
    init_tracing();
    let names = Names::new("tls");
    let pki = pki(&names);
    let redis = TlsRedis::start(&pki);
    let rabbit = TlsRabbit::start(&pki, false);
    let sim = SimBuilder::new()
        .client_secret(CLIENT_SECRET)
        .tenants(&[TENANT_A])
        .start()
        .await;
    let public = bind();
    let admin = bind();
    let public_url = url_of(&public);
    let vars = RelayEnv::new(&names, &sim.url())
        .public_url(&public_url)
        .tenants(&[TENANT_A])
        .client_secret(CLIENT_SECRET)
        .redis_url(redis.url())
        .set("O365_REDIS_CA_PATH", &pki.ca)
        .amqp_url(rabbit.url())
        .set("O365_AMQP_CA_PATH", &pki.ca)
        .retries("100ms", "500ms")
        .without_background_loops()
        .into_vars();
    // The sink reads the same RabbitMQ without TLS; it exists before the relay publishes.
    let sink = Sink::bind(AMQP, &names.exchange, &names.sink, SinkQueue::Plain)
        .await
        .expect("RabbitMQ is running");
    let derived = o365_relay::pipeline::work_queue::QueueNames::new(&names.work_queue);
    let mut guard =
        ResourceGuard::for_relay(&names, [derived.dead].into_iter().chain(derived.retry));
    let settings = Settings::from_vars(vars).expect("test settings are valid");
    let app = Application::build_with_listeners(settings, Some(public), admin)
        .await
        .expect("relay builds");
    let relay = app.parts();
    let stop = app.shutdown_token();
    let task = tokio::spawn(app.run_until_stopped());

    let declared = eventually(Duration::from_secs(15), || {
        let relay = relay.clone();
        async move { relay.broker.topology_declared() }
    })
    .await;
    assert!(
        declared,
        "the topology was never declared over amqps://: {:?}",
        relay.broker.last_error()
    );

    let blobs = sim.publish(TENANT_A, "Audit.Exchange", 1, Some(3)).await;
    let notification: Vec<serde_json::Value> = blobs
        .iter()
        .map(|b| {
            serde_json::json!({
                "tenantId": b.tenant_id, "clientId": CLIENT_ID, "contentType": b.content_type,
                "contentId": b.content_id, "contentUri": b.content_uri,
                "contentCreated": b.content_created, "contentExpiration": b.content_expiration,
            })
        })
        .collect();
    let r = reqwest::Client::new()
        .post(format!("{public_url}/webhook"))
        .header("Webhook-AuthID", &names.auth_id)
        .header("Content-Type", "application/json")
        .json(&notification)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let records = sink
        .drain(3, Duration::from_secs(20), Duration::from_millis(300))
        .await;
    assert_eq!(records.len(), 3, "records relayed over amqps://");

    // The token and the blob's marker went to the TLS Redis (as the ACL user), not the plain one.
    let keys = tls_redis_keys(&redis, &pki.ca, &names.prefix).await;
    assert!(
        keys.iter().any(|k| k.contains("token")),
        "no token cached in the TLS Redis: {keys:?}"
    );
    assert!(!relay.store.is_down());
    let plain = redis::Client::open(REDIS).unwrap();
    let mut c = plain.get_multiplexed_async_connection().await.unwrap();
    let plain_keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", names.prefix))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(plain_keys.is_empty(), "{plain_keys:?}");

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    sim.stop().await;
    sink.close().await;
    guard.release().await;
    drop((redis, rabbit));
    let _ = std::fs::remove_dir_all(&pki.dir);
}

/// `check`'s environment: the simulator's registration (no tenant is served, so no token is
/// asked for), the TLS servers, and `extra`.
fn check_env(names: &Names, redis: &TlsRedis, rabbit: &TlsRabbit) -> RelayEnv {
    RelayEnv::new(names, "http://127.0.0.1:9")
        .client_secret(CLIENT_SECRET)
        .redis_url(redis.url())
        .amqp_url(rabbit.url())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_shows_the_tls_state_and_a_client_certificate_is_presented_when_configured() {
    let names = Names::new("tls");
    let pki = pki(&names);
    let redis = TlsRedis::start(&pki);
    let rabbit = TlsRabbit::start(&pki, true);
    let env = check_env(&names, &redis, &rabbit)
        .set("O365_REDIS_CA_PATH", &pki.ca)
        .set("O365_AMQP_CA_PATH", &pki.ca);

    let (code, table) = check(
        env.clone()
            .set("O365_AMQP_CLIENT_CERT_PATH", &pki.client_cert)
            .set("O365_AMQP_CLIENT_KEY_PATH", &pki.client_key)
            .into_vars(),
    );
    assert_eq!(code, Some(0), "{table}");
    assert_eq!(
        line(&table, "redis"),
        format!(
            "ok      redis (rediss://relay:***@127.0.0.1:{}, TLS, CA {}): standalone (master, 0 replicas attached)",
            redis.port, pki.ca
        )
    );
    assert_eq!(
        line(&table, "rabbitmq"),
        format!(
            "ok      rabbitmq (amqps://guest:***@127.0.0.1:{}/%2f, TLS, CA {} and the system CA store, client certificate {}): connected to 127.0.0.1:{}",
            rabbit.port, pki.ca, pki.client_cert, rabbit.port
        )
    );
    assert!(
        !table.contains(REDIS_PASSWORD) && !table.contains("guest:guest"),
        "{table}"
    );

    // stunnel requires a certificate: without one, the connection is refused.
    let (code, table) = check(env.into_vars());
    println!("without a client certificate:\n{table}");
    assert_eq!(code, Some(1), "{table}");
    assert!(line(&table, "redis").starts_with("ok "), "{table}");
    let amqp = line(&table, "rabbitmq");
    assert!(amqp.starts_with("failed  rabbitmq (amqps://"), "{table}");

    drop((redis, rabbit));
    let _ = std::fs::remove_dir_all(&pki.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_fails_with_a_message_naming_the_variables() {
    let names = Names::new("tls");
    let pki = pki(&names);
    let redis = TlsRedis::start(&pki);
    let rabbit = TlsRabbit::start(&pki, false);

    for ca in [Some(pki.other_ca.as_str()), None] {
        let mut env = check_env(&names, &redis, &rabbit);
        if let Some(ca) = ca {
            env = env
                .set("O365_REDIS_CA_PATH", ca)
                .set("O365_AMQP_CA_PATH", ca);
        }
        let (code, table) = check(env.into_vars());
        println!("CA {ca:?}:\n{table}");
        assert_eq!(code, Some(1), "{table}");
        let r = line(&table, "redis");
        assert!(
            r.starts_with("failed  redis (rediss://relay:***@")
                && r.contains("TLS handshake with Redis failed")
                && r.contains("O365_REDIS_CA_PATH")
                && r.contains("O365_REDIS_URL")
                && !r.contains("bad URL"),
            "{table}"
        );
        let a = line(&table, "rabbitmq");
        assert!(
            a.starts_with("failed  rabbitmq (amqps://guest:***@")
                && a.contains("TLS handshake with RabbitMQ failed")
                && a.contains("O365_AMQP_CA_PATH"),
            "{table}"
        );
        let trust = match ca {
            Some(ca) => format!("CA {ca}"),
            None => "system CA store".into(),
        };
        assert!(r.contains(&trust) && a.contains(&trust), "{table}");
    }

    drop((redis, rabbit));
    let _ = std::fs::remove_dir_all(&pki.dir);
}

#[test]
fn an_unreadable_ca_file_is_a_configuration_error_at_start() {
    let names = Names::new("tls");
    let missing = std::env::temp_dir().join(format!("o365-relay-tls-{}-missing.pem", names.id));
    let missing = missing.display().to_string();
    let vars = RelayEnv::new(&names, "http://127.0.0.1:9")
        .client_secret(CLIENT_SECRET)
        .redis_url("rediss://redis.example.com:6380")
        .set("O365_REDIS_CA_PATH", &missing)
        .amqp_url("amqps://mq.example.com:5671/%2f")
        .set("O365_AMQP_CA_PATH", &missing)
        .into_vars();
    let (code, table) = check(vars.clone());
    assert_eq!(code, Some(2), "{table}");
    assert!(
        table.contains(&format!("O365_REDIS_CA_PATH: cannot read '{missing}'")),
        "{table}"
    );
    assert!(
        table.contains(&format!("O365_AMQP_CA_PATH: cannot read '{missing}'")),
        "{table}"
    );
    let out = RelayCommand::new(env!("CARGO_BIN_EXE_o365-relay"), &["serve"])
        .envs(vars)
        .env("O365_PUBLIC_URL", "https://relay.example.com")
        .output();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("O365_REDIS_CA_PATH: cannot read"));
}

/// Issue 18: a Redis Cluster and a Sentinel-watched master on TLS only, with an ACL user and
/// the test's private CA — the store works in both modes, and `check` names the topology.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_and_a_tls_sentinel_with_an_acl_user_work_with_a_private_ca() {
    use o365_relay::config::{PemFile, RedisMode, RedisSettings};
    use o365_relay::domain::TenantId;
    use o365_relay::store::Store;
    use servers::{TlsRedisCluster, TlsSentinel};

    let names = Names::new("tls");
    let pki = pki(&names);
    let ca = PemFile {
        path: pki.ca.clone().into(),
        pem: std::fs::read(&pki.ca).expect("the CA"),
    };
    let cluster = TlsRedisCluster::start(&pki);
    let sentinel = TlsSentinel::start(&pki);
    let t = TenantId::parse("0b5e4b6c-33f4-4f53-8a44-2f5a8d0e9c11").expect("tenant");
    for (mode, urls) in [
        (RedisMode::Cluster, cluster.seed_urls()),
        (
            RedisMode::Sentinel {
                master: sentinel.master_name.clone(),
            },
            sentinel.url(),
        ),
    ] {
        let store = Store::open(&RedisSettings {
            mode: mode.clone(),
            urls: urls.split(',').map(|u| u.to_string().into()).collect(),
            prefix: names.prefix.clone(),
            ca: Some(ca.clone()),
        })
        .expect("settings");
        store
            .ping()
            .await
            .expect("reached over TLS as the ACL user");
        // A script (the tenant state's compare-and-set) and a token round trip.
        store
            .tenants()
            .transition(&t, &["healthy"], "parked", r#"{"state":"parked"}"#)
            .await
            .expect("script over TLS");
        store
            .tokens()
            .put(&t, "{}", Duration::from_secs(60))
            .await
            .expect("write");
        assert_eq!(
            store.tokens().get(&t).await.expect("read").as_deref(),
            Some("{}")
        );
        assert_eq!(store.tls(), Some(format!("CA {}", pki.ca).as_str()));
        store.purge_prefix().await.expect("purged");

        let (_, table) = check(
            RelayEnv::new(&names, "http://127.0.0.1:9")
                .client_secret(CLIENT_SECRET)
                .set("O365_REDIS_MODE", mode.as_str())
                .set("O365_REDIS_URL", urls.clone())
                .set("O365_REDIS_SENTINEL_MASTER", sentinel.master_name.clone())
                .set("O365_REDIS_CA_PATH", &pki.ca)
                .into_vars(),
        );
        let redis = line(&table, "redis");
        let expected = match mode {
            RedisMode::Cluster => {
                "cluster: 3 masters serving 16384 of 16384 slots, 0 replicas, state ok".to_string()
            }
            _ => format!(
                "sentinel: master '{}' (master, 0 replicas attached), 1 sentinels configured",
                sentinel.master_name
            ),
        };
        assert!(
            redis.starts_with("ok      redis (rediss://relay:***@127.0.0.1:")
                && redis.ends_with(&expected)
                && redis.contains(&format!("TLS, CA {}", pki.ca)),
            "{table}"
        );
        assert!(!table.contains(REDIS_PASSWORD), "{table}");
    }
    drop((cluster, sentinel));
    let _ = std::fs::remove_dir_all(&pki.dir);
}
