//! The one in-process environment of the integration tests (`tests/api`, `tests/onboarding`,
//! `tests/security`): a simulator, one or more relays built with
//! `Application::build_with_listeners` against the real Redis and RabbitMQ, and optionally a
//! sink queue bound to the relay's exchange — all with names unique to the test, cleaned up
//! after. Each binary's `helpers.rs` includes this file and says its defaults
//! (`impl Default for Options`); the harness underneath is `crates/test-support`.

#![allow(dead_code)]

pub use test_support::*;

use lapin::Channel;
use o365_relay::app::Application;
use o365_relay::config::Settings;
use o365_sim::Simulator;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The relay's components as the tests reach them (the only place the tests name the type).
pub type RelayParts = o365_relay::app::Parts;

/// The client secret the simulator accepts.
pub const CLIENT_SECRET: &str = "test-client-secret-value";
/// Who consents in the simulator's consent flow.
pub const CONSENT_UPN: &str = "admin@contoso.onmicrosoft.com";

/// How a test wants its environment. Each test binary's `helpers.rs` gives the defaults.
#[derive(Clone)]
pub struct Options {
    /// Tenants the simulator knows.
    pub sim_tenants: Vec<String>,
    /// Tenants in `O365_TENANTS`.
    pub static_tenants: Vec<String>,
    /// The client secret instead of the certificate.
    pub use_secret: bool,
    pub token_lifetime: Duration,
    /// How long the simulator serves published content (its `contentExpiration`).
    pub content_lifetime: Duration,
    /// The simulator's notification retries.
    pub notification_retries: Vec<Duration>,
    /// `O365_ENABLE_WORKERS`.
    pub workers: bool,
    /// A sink queue bound `#` to the exchange before the relay starts ([`TestEnv::records`]),
    /// when the relay uses the machine's RabbitMQ.
    pub sink: bool,
    /// The binary's own settings, before `extra_env`.
    pub base_env: Vec<(String, String)>,
    /// The test's own settings, last.
    pub extra_env: Vec<(String, String)>,
    pub amqp_url: String,
    pub redis_url: String,
    /// The Redis prefix (default: unique to the test). Set it to prepare keys before the
    /// relay starts; it must still be unique to the test.
    pub prefix: Option<String>,
    /// The host name in the relay's public URL (default `127.0.0.1`, the simulator's).
    /// `localhost` puts the relay on another *site* than the simulator, as Entra is to a
    /// real deployment, so a browser treats the consent callback as a cross-site navigation.
    pub public_host: Option<String>,
}

impl Options {
    /// What every binary starts from: two tenants known and served, the certificate, workers
    /// on, no sink, the local Redis and RabbitMQ.
    pub fn base() -> Options {
        Options {
            sim_tenants: vec![TENANT_A.into(), TENANT_B.into()],
            static_tenants: vec![TENANT_A.into(), TENANT_B.into()],
            use_secret: false,
            token_lifetime: Duration::from_secs(3600),
            content_lifetime: Duration::from_secs(7 * 86_400),
            notification_retries: vec![Duration::from_millis(200), Duration::from_millis(400)],
            workers: true,
            sink: false,
            base_env: Vec::new(),
            extra_env: Vec::new(),
            amqp_url: AMQP.into(),
            redis_url: REDIS.into(),
            prefix: None,
            public_host: None,
        }
    }
}

/// One running relay (an `Application`).
pub struct Instance {
    pub relay: Arc<RelayParts>,
    pub stop: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub public_url: String,
    pub admin_url: String,
}

impl Instance {
    /// Stops the application gracefully and waits for it.
    pub async fn shutdown(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
    }
}

pub struct TestEnv {
    pub sim: Simulator,
    /// The first relay; `others` are extra replicas sharing the Redis prefix.
    pub main: Instance,
    pub others: Vec<Instance>,
    /// The first relay's components.
    pub relay: Arc<RelayParts>,
    pub public_url: String,
    pub admin_url: String,
    pub auth_id: String,
    pub id: String,
    pub exchange: String,
    pub work_queue: String,
    /// The sink queue's name (bound only with [`Options::sink`]).
    pub sink: String,
    pub prefix: String,
    pub http: reqwest::Client,
    pub vars: Vec<(String, String)>,
    pub dir: std::path::PathBuf,
    pub cert_path: String,
    pub key_path: String,
    sink_queue: Option<Sink>,
    guard: ResourceGuard,
}

/// An HTTP client that never follows redirects (each hop is asserted by the tests).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A simulator that knows `tenants` and accepts the client secret and `certs`.
pub async fn start_sim(tenants: &[String], certs: Vec<Vec<u8>>) -> Simulator {
    SimBuilder::new()
        .client_secret(CLIENT_SECRET)
        .client_certs(certs)
        .tenants(tenants)
        .consent_upn(CONSENT_UPN)
        .start()
        .await
}

impl TestEnv {
    pub async fn start(opts: Options) -> TestEnv {
        init_tracing();
        let mut names = Names::new("test");
        if let Some(prefix) = &opts.prefix {
            names = names.with_prefix(prefix);
        }
        let dir = std::env::temp_dir().join(format!("o365-relay-test-{}", names.id));
        let (cert, cert_path, key_path) = write_cert(&dir);
        let sim = SimBuilder::new()
            .client_secret(CLIENT_SECRET)
            .client_certs(vec![cert])
            .tenants(&opts.sim_tenants)
            .consent_upn(CONSENT_UPN)
            .token_lifetime(opts.token_lifetime)
            .content_lifetime(opts.content_lifetime)
            .notification_retry_delays(opts.notification_retries.clone())
            .start()
            .await;
        let public = bind();
        let admin = bind();
        let mut public_url = url_of(&public);
        if let Some(host) = &opts.public_host {
            public_url = public_url.replace("127.0.0.1", host);
        }
        let env = RelayEnv::new(&names, &sim.url())
            .public_url(&public_url)
            .tenants(&opts.static_tenants)
            .redis_url(&opts.redis_url)
            .amqp_url(&opts.amqp_url)
            .without_background_loops()
            .workers(opts.workers);
        let env = if opts.use_secret {
            env.client_secret(CLIENT_SECRET)
        } else {
            env.client_certificate(&cert_path, &key_path)
        };
        let vars = env
            .overrides(opts.base_env.iter().cloned())
            .overrides(opts.extra_env.iter().cloned())
            .into_vars();
        // The sink exists before the relay publishes (records are published as mandatory); only
        // on the machine's broker (a test pointing the relay elsewhere checks without one).
        let sink_queue = if opts.sink && opts.amqp_url == AMQP {
            Some(
                Sink::bind(
                    &opts.amqp_url,
                    &names.exchange,
                    &names.sink,
                    SinkQueue::Plain,
                )
                .await
                .expect("RabbitMQ is running"),
            )
        } else {
            None
        };
        let guard = relay_resources(&names);
        let main = launch(&vars, public, admin).await;
        if opts.amqp_url == AMQP {
            wait_ready(&main.relay).await;
        }
        let Names {
            id,
            exchange,
            work_queue,
            sink,
            prefix,
            auth_id,
        } = names;
        TestEnv {
            sim,
            relay: main.relay.clone(),
            public_url,
            admin_url: main.admin_url.clone(),
            main,
            others: Vec::new(),
            auth_id,
            id,
            exchange,
            work_queue,
            sink,
            prefix,
            http: client(),
            vars,
            dir,
            cert_path,
            key_path,
            sink_queue,
            guard,
        }
    }

    /// Starts another replica with the same settings (same Redis prefix, same public URL
    /// unless overridden), on its own listeners. Returns its index in `others`.
    pub async fn add_replica(&mut self, extra: &[(&str, &str)], public: TcpListener) -> usize {
        let vars = RelayEnv::default()
            .overrides(self.vars.iter().cloned())
            .overrides(extra.iter().copied())
            .into_vars();
        let inst = launch(&vars, public, bind()).await;
        wait_ready(&inst.relay).await;
        self.others.push(inst);
        self.others.len() - 1
    }

    /// Components (no listeners, no loops) sharing this environment's settings with
    /// `overrides`: a second replica for store-level checks, or what the CLI builds.
    pub fn relay_with(&self, overrides: &[(&str, &str)]) -> Arc<RelayParts> {
        relay_with(&self.vars, overrides)
    }

    /// The relay binary serving this environment's settings with `extra`, on ports of its
    /// own, its log in the pretty format at info into `log` (under the test's folder): the
    /// process once ready, its public URL and its admin URL.
    pub async fn serve_binary(
        &self,
        extra: &[(&str, &str)],
        log: &str,
    ) -> (RelayProcess, String, String) {
        let (public_port, admin_port) = (free_port(), free_port());
        let vars = RelayEnv::default()
            .overrides(self.vars.iter().cloned())
            .listen_on(public_port, admin_port)
            .set("O365_LOG_FORMAT", "pretty")
            .overrides(extra.iter().copied())
            .into_vars();
        let admin_url = format!("http://127.0.0.1:{admin_port}");
        let mut relay = relay_command(&["serve"])
            .envs(vars)
            .env("RUST_LOG", "info")
            .spawn(self.dir.join(log));
        relay.wait_ready(&admin_url, Duration::from_secs(30)).await;
        (relay, format!("http://127.0.0.1:{public_port}"), admin_url)
    }

    /// A key under the test's Redis prefix.
    pub fn redis_key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// Registered tenant ids (static ones included), as the relay lists them.
    pub async fn tenant_ids(&self) -> Vec<String> {
        self.relay
            .tenants
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.tenant_id.to_string())
            .collect()
    }

    fn sink_queue(&self) -> &Sink {
        self.sink_queue
            .as_ref()
            .expect("the test asked for a sink (Options::sink)")
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

    /// The first relay's `/metrics`.
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

    /// The value of one series (`name{labels}`, as written) on the first relay's `/metrics`.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        metric_value(&text, series).unwrap_or_else(|| panic!("no {series} on /metrics:\n{text}"))
    }

    /// Stops every relay and the simulator, deletes the queues, the exchange and every Redis key.
    pub async fn cleanup(mut self) {
        self.main.shutdown().await;
        for o in &mut self.others {
            o.shutdown().await;
        }
        self.sim.stop().await;
        if let Some(sink) = self.sink_queue.take() {
            sink.close().await;
        }
        self.guard.release().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Components (no listeners, no loops) built from `vars` with `overrides`.
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

async fn launch(vars: &[(String, String)], public: TcpListener, admin: TcpListener) -> Instance {
    let public_url = url_of(&public);
    let admin_url = url_of(&admin);
    let settings = Settings::from_vars(vars.to_vec()).expect("test settings are valid");
    let app = Application::build_with_listeners(settings, Some(public), admin)
        .await
        .expect("relay builds");
    let relay = app.parts();
    let stop = app.shutdown_token();
    let task = Some(tokio::spawn(app.run_until_stopped()));
    Instance {
        relay,
        stop,
        task,
        public_url,
        admin_url,
    }
}

/// Waits until the relay declared its RabbitMQ topology (it then accepts notifications).
async fn wait_ready(relay: &Arc<RelayParts>) {
    let r = relay.clone();
    let ok = eventually(Duration::from_secs(15), || {
        let r = r.clone();
        async move { r.broker.topology_declared() }
    })
    .await;
    assert!(ok, "relay never declared its RabbitMQ topology");
}

/// Removes the relay's exchange, its work, retry, dead and parked queues, the sink and every
/// Redis key under the prefix.
pub fn relay_resources(names: &Names) -> ResourceGuard {
    let q = o365_relay::pipeline::work_queue::QueueNames::new(&names.work_queue);
    ResourceGuard::for_relay(names, [q.dead, q.parked].into_iter().chain(q.retry))
}

/// The value of one series (`name{labels}`, as written) in a `/metrics` text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A header of a delivery as text.
pub fn header(d: &lapin::message::Delivery, key: &str) -> Option<String> {
    test_support::header(&d.properties, key)
}

/// A raw Redis connection for checks the relay's API does not expose (TTLs, deletions).
pub async fn redis() -> redis::aio::MultiplexedConnection {
    redis_connection().await
}
