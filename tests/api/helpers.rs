//! `TestEnv`: a simulator, a relay built in process with `Application::build_with_listeners`,
//! and a sink queue bound to the relay's exchange — all with names unique to the test, cleaned
//! up after. The harness itself is `crates/test-support`; what is here is specific to these
//! tests: the relay's `Settings` and in-process `Application`.

#![allow(dead_code)]

pub use test_support::*;

use lapin::Channel;
use o365_relay::app::Application;
use o365_relay::config::Settings;
use o365_sim::Simulator;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The relay's components as the tests reach them (the only place this binary names the type).
pub type RelayParts = o365_relay::app::Parts;

/// The components of a running `Application` (the only place this binary asks for them).
fn parts_of(app: &Application) -> Arc<RelayParts> {
    app.parts()
}

/// Components (no listeners, no loops) built from `vars` with `overrides`: a second replica,
/// or what the CLI builds.
pub fn relay_with(vars: &[(String, String)], overrides: &[(&str, &str)]) -> Arc<RelayParts> {
    let vars = RelayEnv::default()
        .overrides(vars.iter().cloned())
        .overrides(overrides.iter().copied());
    RelayParts::new(Settings::from_vars(vars.into_vars()).unwrap()).unwrap()
}

/// The relay binary with a clean environment (`crates/test-support` cannot know its path).
pub fn relay_command(args: &[&str]) -> RelayCommand {
    RelayCommand::new(env!("CARGO_BIN_EXE_o365-relay"), args)
}

/// The client secret the simulator accepts.
pub const CLIENT_SECRET: &str = "test-client-secret-value";

/// How a test wants its environment.
#[derive(Clone)]
pub struct Options {
    /// Tenants the simulator knows.
    pub sim_tenants: Vec<String>,
    /// Tenants in `O365_TENANTS`.
    pub static_tenants: Vec<String>,
    pub use_secret: bool,
    pub token_lifetime: Duration,
    /// How long the simulator serves published content (its `contentExpiration`).
    pub content_lifetime: Duration,
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
            content_lifetime: Duration::from_secs(7 * 86_400),
            workers: true,
            extra_env: Vec::new(),
            amqp_url: AMQP.into(),
            redis_url: REDIS.into(),
        }
    }
}

pub struct TestEnv {
    pub sim: Simulator,
    pub relay: Arc<RelayParts>,
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
    sink_queue: Option<Sink>,
    guard: ResourceGuard,
}

impl TestEnv {
    pub async fn start(opts: Options) -> TestEnv {
        init_tracing();
        let names = Names::new("test");
        let dir = std::env::temp_dir().join(format!("o365-relay-test-{}", names.id));
        let (cert, cert_path, key_path) = write_cert(&dir);
        let sim = SimBuilder::new()
            .client_secret(CLIENT_SECRET)
            .client_certs(vec![cert])
            .tenants(&opts.sim_tenants)
            .token_lifetime(opts.token_lifetime)
            .content_lifetime(opts.content_lifetime)
            .notification_retry_delays(vec![Duration::from_millis(200), Duration::from_millis(400)])
            .start()
            .await;
        let public = bind();
        let admin = bind();
        let public_url = url_of(&public);
        let admin_url = url_of(&admin);
        let env = RelayEnv::new(&names, &sim.url())
            .public_url(&public_url)
            .tenants(&opts.static_tenants)
            .redis_url(&opts.redis_url)
            .amqp_url(&opts.amqp_url)
            .retries("100ms", "500ms")
            .set("O365_MAX_ATTEMPTS", "4")
            .without_background_loops()
            .workers(opts.workers);
        let env = if opts.use_secret {
            env.client_secret(CLIENT_SECRET)
        } else {
            env.client_certificate(cert_path, key_path)
        };
        let vars = env.overrides(opts.extra_env.iter().cloned()).into_vars();
        // The sink exists before the relay publishes (records are published as mandatory).
        let sink_queue = if opts.amqp_url == AMQP {
            Some(
                Sink::bind(AMQP, &names.exchange, &names.sink, SinkQueue::Plain)
                    .await
                    .expect("RabbitMQ is running"),
            )
        } else {
            None
        };
        let guard = relay_resources(&names);
        let settings = Settings::from_vars(vars.clone()).expect("test settings are valid");
        let app = Application::build_with_listeners(settings, Some(public), admin)
            .await
            .expect("relay builds");
        let relay = parts_of(&app);
        let stop = app.shutdown_token();
        let app_task = Some(tokio::spawn(app.run_until_stopped()));
        let env = TestEnv {
            sim,
            relay,
            stop,
            app_task,
            public_url,
            admin_url,
            auth_id: names.auth_id,
            id: names.id,
            exchange: names.exchange,
            work_queue: names.work_queue,
            sink: names.sink,
            prefix: names.prefix,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            vars,
            dir,
            sink_queue,
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

    fn sink_queue(&self) -> &Sink {
        self.sink_queue.as_ref().expect("test has RabbitMQ")
    }

    pub fn channel(&self) -> &Channel {
        self.sink_queue().channel()
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
        sink::depth(self.sink_queue().connection(), queue)
            .await
            .unwrap_or_else(|| panic!("queue {queue} exists"))
    }

    /// Messages in a queue right now; 0 when it does not exist (yet).
    pub async fn depth_or_zero(&self, queue: &str) -> u32 {
        sink::depth(self.sink_queue().connection(), queue)
            .await
            .unwrap_or(0)
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
        sink::drain(self.sink_queue().connection(), queue, want, wait, linger).await
    }

    /// Records on the exchange.
    pub async fn records(&self, want: usize) -> Vec<lapin::message::Delivery> {
        self.sink_queue()
            .drain(want, Duration::from_secs(20), Duration::from_millis(500))
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
        if let Some(sink) = self.sink_queue.take() {
            sink.close().await;
        }
        self.guard.release().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes the relay's exchange, its work, retry, dead and parked queues, the sink and every
/// Redis key under the prefix.
pub fn relay_resources(names: &Names) -> ResourceGuard {
    let q = o365_relay::work_queue::Names::new(&names.work_queue);
    ResourceGuard::for_relay(names, [q.dead, q.parked].into_iter().chain(q.retry))
}

/// A header of a delivery as text.
pub fn header(d: &lapin::message::Delivery, key: &str) -> Option<String> {
    test_support::header(&d.properties, key)
}
