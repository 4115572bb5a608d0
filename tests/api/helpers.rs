//! `TestEnv`: a simulator, a relay built with `Application::build_with_listeners`, and a sink
//! queue bound to the relay's exchange — all with names unique to the test, cleaned up after.

#![allow(dead_code)]

pub use crate::common::*;

use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use o365_relay::app::{Application, Parts};
use o365_relay::config::Settings;
use o365_sim::{SimConfig, Simulator};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How a test wants its environment.
#[derive(Clone)]
pub struct Options {
    /// Tenants the simulator knows.
    pub sim_tenants: Vec<String>,
    /// Tenants in `O365_TENANTS`.
    pub static_tenants: Vec<String>,
    pub use_secret: bool,
    pub token_lifetime: Duration,
    pub workers: bool,
    pub extra_env: Vec<(String, String)>,
    pub amqp_url: String,
    pub redis_url: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sim_tenants: vec![TENANT_A.into(), TENANT_B.into()],
            static_tenants: vec![TENANT_A.into(), TENANT_B.into()],
            use_secret: false,
            token_lifetime: Duration::from_secs(3600),
            workers: true,
            extra_env: Vec::new(),
            amqp_url: AMQP.into(),
            redis_url: REDIS.into(),
        }
    }
}

pub struct TestEnv {
    pub sim: Simulator,
    pub relay: Arc<Parts>,
    pub stop: CancellationToken,
    pub app_task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub public_url: String,
    pub admin_url: String,
    pub auth_id: String,
    pub id: String,
    pub exchange: String,
    pub work_queue: String,
    pub sink: String,
    pub prefix: String,
    pub http: reqwest::Client,
    pub vars: Vec<(String, String)>,
    pub dir: std::path::PathBuf,
    amqp: Option<(Connection, Channel)>,
    guard: ResourceGuard,
}

/// A simulator that trusts a freshly generated certificate (written to `dir`) and a secret.
pub async fn start_sim(opts: &Options, dir: &std::path::Path) -> (Simulator, String, String) {
    let (cert, cert_path, key_path) = write_cert(dir);
    let config = SimConfig {
        client_id: CLIENT_ID.into(),
        client_secret: Some("test-client-secret-value".into()),
        client_certs_pem: vec![cert],
        tenants: opts.sim_tenants.clone(),
        token_lifetime: opts.token_lifetime,
        notification_retry_delays: vec![Duration::from_millis(200), Duration::from_millis(400)],
        ..SimConfig::default()
    };
    let sim = Simulator::start(config, "127.0.0.1:0")
        .await
        .expect("simulator starts");
    (sim, cert_path, key_path)
}

impl TestEnv {
    pub async fn start(opts: Options) -> TestEnv {
        init_tracing();
        let id = unique();
        let dir = std::env::temp_dir().join(format!("o365-relay-test-{id}"));
        let (sim, cert_path, key_path) = start_sim(&opts, &dir).await;
        let public = bind();
        let admin = bind();
        let public_url = url_of(&public);
        let admin_url = url_of(&admin);
        let auth_id = format!("auth-{}", uuid::Uuid::new_v4().simple());
        let exchange = format!("test.{id}.audit");
        let work_queue = format!("test.{id}.content");
        let prefix = format!("test:{id}:");
        let mut vars: Vec<(String, String)> = vec![
            ("O365_CLIENT_ID".into(), CLIENT_ID.into()),
            ("O365_WEBHOOK_AUTH_ID".into(), auth_id.clone()),
            ("O365_PUBLIC_URL".into(), public_url.clone()),
            ("O365_TENANTS".into(), opts.static_tenants.join(",")),
            ("O365_LOGIN_URL".into(), sim.url()),
            ("O365_MANAGE_URL".into(), sim.url()),
            ("O365_LISTEN".into(), "127.0.0.1:0".into()),
            ("O365_ADMIN_LISTEN".into(), "127.0.0.1:0".into()),
            ("O365_REDIS_URL".into(), opts.redis_url.clone()),
            ("O365_REDIS_PREFIX".into(), prefix.clone()),
            ("O365_AMQP_URL".into(), opts.amqp_url.clone()),
            ("O365_AMQP_EXCHANGE".into(), exchange.clone()),
            ("O365_AMQP_WORK_QUEUE".into(), work_queue.clone()),
            ("O365_RETRY_BASE".into(), "100ms".into()),
            ("O365_RETRY_MAX".into(), "500ms".into()),
            ("O365_MAX_ATTEMPTS".into(), "4".into()),
            ("O365_ENABLE_RECONCILER".into(), "false".into()),
            ("O365_ENABLE_KEEPER".into(), "false".into()),
            ("O365_ENABLE_WORKERS".into(), opts.workers.to_string()),
            ("O365_SHUTDOWN_TIMEOUT".into(), "5s".into()),
            ("O365_HTTP_TIMEOUT".into(), "5s".into()),
        ];
        if opts.use_secret {
            vars.push((
                "O365_CLIENT_SECRET".into(),
                "test-client-secret-value".into(),
            ));
        } else {
            vars.push(("O365_CLIENT_CERT_PATH".into(), cert_path));
            vars.push(("O365_CLIENT_KEY_PATH".into(), key_path));
        }
        for (k, v) in &opts.extra_env {
            vars.retain(|(vk, _)| vk != k);
            vars.push((k.clone(), v.clone()));
        }
        // The sink exists before the relay publishes (records are published as mandatory).
        let sink = format!("test.{id}.sink");
        let amqp = if opts.amqp_url == AMQP {
            let conn = Connection::connect(AMQP, ConnectionProperties::default())
                .await
                .expect("RabbitMQ is running");
            let ch = conn.create_channel().await.unwrap();
            o365_relay::broker::bind_all_records(
                &ch,
                &exchange,
                &sink,
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
            Some((conn, ch))
        } else {
            None
        };
        let settings = Settings::from_vars(vars.clone()).expect("test settings are valid");
        let app = Application::build_with_listeners(settings, Some(public), admin)
            .await
            .expect("relay builds");
        let relay = app.parts();
        let stop = app.shutdown_token();
        let app_task = Some(tokio::spawn(app.run_until_stopped()));
        let guard =
            ResourceGuard::new(&exchange, &work_queue, std::slice::from_ref(&sink), &prefix);
        let env = TestEnv {
            sim,
            relay,
            stop,
            app_task,
            public_url,
            admin_url,
            auth_id,
            id,
            exchange,
            work_queue,
            sink,
            prefix,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            vars,
            dir,
            amqp,
            guard,
        };
        if opts.amqp_url == AMQP {
            env.wait_ready().await;
        }
        env
    }

    /// Waits until the relay declared its RabbitMQ topology.
    pub async fn wait_ready(&self) {
        let relay = self.relay.clone();
        let ok = eventually(Duration::from_secs(10), || {
            let relay = relay.clone();
            async move { relay.broker.topology_declared() }
        })
        .await;
        assert!(ok, "relay never declared its topology");
    }

    pub fn channel(&self) -> &Channel {
        &self.amqp.as_ref().expect("test has RabbitMQ").1
    }

    /// POSTs a body to `/webhook` with the right auth id and JSON media type.
    pub async fn notify(&self, body: &serde_json::Value) -> reqwest::Response {
        self.http
            .post(format!("{}/webhook", self.public_url))
            .header("Webhook-AuthID", &self.auth_id)
            .header("Content-Type", "application/json; utf-8")
            .body(serde_json::to_vec(body).unwrap())
            .send()
            .await
            .unwrap()
    }

    /// The notification Microsoft would send for these blobs.
    pub fn notification(&self, blobs: &[o365_sim::SimBlob]) -> serde_json::Value {
        serde_json::Value::Array(
            blobs
                .iter()
                .map(|b| {
                    serde_json::json!({
                        "tenantId": b.tenant_id, "clientId": CLIENT_ID, "contentType": b.content_type,
                        "contentId": b.content_id, "contentUri": b.content_uri,
                        "contentCreated": b.content_created, "contentExpiration": b.content_expiration,
                    })
                })
                .collect(),
        )
    }

    /// Messages in a queue right now (passive declare).
    pub async fn depth(&self, queue: &str) -> u32 {
        let ch = self
            .amqp
            .as_ref()
            .unwrap()
            .0
            .create_channel()
            .await
            .unwrap();
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = ch.close(200, "ok".into()).await;
        q.message_count()
    }

    /// Takes every message from `queue` until `want` arrived (or `wait` passed), then keeps
    /// listening for `linger` to catch extras (duplicates).
    pub async fn drain(
        &self,
        queue: &str,
        want: usize,
        wait: Duration,
        linger: Duration,
    ) -> Vec<lapin::message::Delivery> {
        let ch = self
            .amqp
            .as_ref()
            .unwrap()
            .0
            .create_channel()
            .await
            .unwrap();
        let mut consumer = ch
            .basic_consume(
                queue.into(),
                format!("t-{}", unique()).into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while got.len() < want {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(Ok(d))) => got.push(d),
                _ => break,
            }
        }
        let until = tokio::time::Instant::now() + linger;
        while let Ok(Some(Ok(d))) = tokio::time::timeout_at(until, consumer.next()).await {
            got.push(d);
        }
        let _ = ch.close(200, "ok".into()).await;
        got
    }

    /// Records on the exchange.
    pub async fn records(&self, want: usize) -> Vec<lapin::message::Delivery> {
        self.drain(
            &self.sink.clone(),
            want,
            Duration::from_secs(20),
            Duration::from_millis(500),
        )
        .await
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.admin_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Stops the relay and simulator, deletes every queue, the exchange and every Redis key.
    pub async fn cleanup(mut self) {
        self.stop.cancel();
        if let Some(t) = self.app_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
        self.sim.stop().await;
        if let Some((conn, _)) = self.amqp.take() {
            let _ = conn.close(200, "bye".into()).await;
        }
        remove_relay_resources(
            &self.exchange,
            &self.work_queue,
            &[self.sink.clone()],
            &self.prefix,
        )
        .await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A header of a delivery as text.
pub fn header(d: &lapin::message::Delivery, key: &str) -> Option<String> {
    o365_relay::broker::header_str(&d.properties, key)
}
