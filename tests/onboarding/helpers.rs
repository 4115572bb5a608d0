//! `TestEnv` for onboarding: a simulator, one or more relays built in process with
//! `Application::build_with_listeners` against the real Redis and RabbitMQ, all with names
//! unique to the test (Redis prefix, exchange, work queue) and cleaned up after. The harness
//! itself is `crates/test-support`; what is here is specific to these tests.

#![allow(dead_code)]

pub use test_support::*;

use o365_relay::app::Application;
use o365_relay::config::Settings;
use o365_sim::Simulator;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The relay's components as the tests reach them (the only place this binary names the type).
pub type RelayParts = o365_relay::app::Parts;

/// The components of a running `Application` (the only place this binary asks for them).
fn parts_of(app: &Application) -> Arc<RelayParts> {
    app.parts()
}

/// The relay binary with a clean environment (`crates/test-support` cannot know its path).
pub fn relay_command(args: &[&str]) -> RelayCommand {
    RelayCommand::new(env!("CARGO_BIN_EXE_o365-relay"), args)
}

/// A tenant configured in `O365_TENANTS` (served without consent).
pub const TENANT_STATIC: &str = "0b6a3c1d-2e4f-4a5b-9c8d-7e6f5a4b3c2d";
pub const CONSENT_UPN: &str = "admin@contoso.onmicrosoft.com";
pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";
pub const ALL_TYPES: [&str; 5] = o365_sim::CONTENT_TYPES;

#[derive(Clone)]
pub struct Options {
    pub sim_tenants: Vec<String>,
    pub static_tenants: Vec<String>,
    pub extra_env: Vec<(String, String)>,
    /// The Redis prefix (default: unique to the test). Set it to prepare keys before the
    /// relay starts; it must still be unique to the test.
    pub prefix: Option<String>,
    /// The host name in the relay's public URL (default `127.0.0.1`, the simulator's).
    /// `localhost` puts the relay on another *site* than the simulator, as Entra is to a
    /// real deployment, so a browser treats the consent callback as a cross-site navigation.
    pub public_host: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sim_tenants: vec![TENANT_A.into(), TENANT_B.into(), TENANT_STATIC.into()],
            static_tenants: vec![TENANT_STATIC.into()],
            extra_env: Vec::new(),
            prefix: None,
            public_host: None,
        }
    }
}

/// One running relay process (an `Application`).
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
    pub relay: Arc<RelayParts>,
    pub public_url: String,
    pub admin_url: String,
    pub auth_id: String,
    pub id: String,
    pub exchange: String,
    pub work_queue: String,
    pub prefix: String,
    pub http: reqwest::Client,
    pub vars: Vec<(String, String)>,
    pub dir: std::path::PathBuf,
    pub cert_path: String,
    pub key_path: String,
    guard: ResourceGuard,
}

/// An HTTP client that never follows redirects (each hop is asserted by the tests).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub async fn start_sim(tenants: &[String], certs: Vec<Vec<u8>>) -> Simulator {
    SimBuilder::new()
        .client_secret("test-client-secret-value")
        .client_certs(certs)
        .tenants(tenants)
        .consent_upn(CONSENT_UPN)
        .notification_retry_delays(vec![Duration::from_millis(200)])
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
        let dir = std::env::temp_dir().join(format!("o365-onboarding-{}", names.id));
        let (cert, cert_path, key_path) = write_cert(&dir);
        let sim = start_sim(&opts.sim_tenants, vec![cert]).await;
        let public = bind();
        let admin = bind();
        let mut public_url = url_of(&public);
        if let Some(host) = &opts.public_host {
            public_url = public_url.replace("127.0.0.1", host);
        }
        let admin_url = url_of(&admin);
        let vars = RelayEnv::new(&names, &sim.url())
            .client_certificate(&cert_path, &key_path)
            .public_url(&public_url)
            .tenants(&opts.static_tenants)
            .without_background_loops()
            .workers(false)
            .set("O365_SHUTDOWN_TIMEOUT", "3s")
            .set("O365_HTTP_TIMEOUT", "10s")
            .overrides(opts.extra_env.iter().cloned())
            .into_vars();
        let guard = relay_resources(&names);
        let main = launch(&vars, public, admin).await;
        wait_ready(&main.relay).await;
        let Names {
            id,
            exchange,
            work_queue,
            prefix,
            auth_id,
            ..
        } = names;
        TestEnv {
            sim,
            relay: main.relay.clone(),
            public_url,
            admin_url,
            main,
            others: Vec::new(),
            auth_id,
            id,
            exchange,
            work_queue,
            prefix,
            http: client(),
            vars,
            dir,
            cert_path,
            key_path,
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

    /// A `Relay` (no listeners, no loops) sharing this environment's settings: a second
    /// replica for store-level checks, or what the CLI builds.
    pub fn second_relay(&self) -> Arc<RelayParts> {
        RelayParts::new(Settings::from_vars(self.vars.clone()).unwrap()).unwrap()
    }

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

    /// POSTs a notification for one freshly published blob of `tenant` to `/webhook`.
    pub async fn notify_for(&self, tenant: &str) -> reqwest::Response {
        let blob = self
            .sim
            .publish_raw(
                tenant,
                "Audit.Exchange",
                vec![format!(
                    r#"{{"Id":"{}","RecordType":2,"CreationTime":"2026-01-01T00:00:00","Operation":"Send","OrganizationId":"{tenant}","UserType":0,"Workload":"Exchange"}}"#,
                    uuid::Uuid::new_v4()
                )],
            )
            .await;
        let body = serde_json::json!([{
            "tenantId": blob.tenant_id, "clientId": CLIENT_ID, "contentType": blob.content_type,
            "contentId": blob.content_id, "contentUri": blob.content_uri,
            "contentCreated": blob.content_created, "contentExpiration": blob.content_expiration,
        }]);
        self.http
            .post(format!("{}/webhook", self.public_url))
            .header("Webhook-AuthID", &self.auth_id)
            .header("Content-Type", "application/json; utf-8")
            .body(serde_json::to_vec(&body).unwrap())
            .send()
            .await
            .unwrap()
    }

    /// Stops every relay and the simulator, deletes the queues, the exchange and every Redis key.
    pub async fn cleanup(mut self) {
        self.main.shutdown().await;
        for o in &mut self.others {
            o.shutdown().await;
        }
        self.sim.stop().await;
        self.guard.release().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn launch(vars: &[(String, String)], public: TcpListener, admin: TcpListener) -> Instance {
    let public_url = url_of(&public);
    let admin_url = url_of(&admin);
    let settings = Settings::from_vars(vars.to_vec()).expect("test settings are valid");
    let app = Application::build_with_listeners(settings, Some(public), admin)
        .await
        .expect("relay builds");
    let relay = parts_of(&app);
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

/// A raw Redis connection for checks the relay's API does not expose (TTLs, deletions).
pub async fn redis() -> redis::aio::MultiplexedConnection {
    redis_connection().await
}

/// Removes the relay's exchange, its work, retry and dead queues and every Redis key under
/// the prefix.
fn relay_resources(names: &Names) -> ResourceGuard {
    let q = o365_relay::work_queue::Names::new(&names.work_queue);
    ResourceGuard::for_relay(names, [q.dead].into_iter().chain(q.retry))
}

/// Asserts the sim shows all five subscriptions of `tenant` enabled with our webhook.
pub fn assert_subscribed(sim: &Simulator, tenant: &str, public_url: &str, auth_id: &str) {
    let subs = sim.subscriptions(tenant);
    assert_eq!(
        subs.len(),
        5,
        "expected five subscriptions for {tenant}: {subs:?}"
    );
    for s in subs {
        assert_eq!(s.status, "enabled", "{s:?}");
        let hook = s.webhook.expect("webhook registered");
        assert_eq!(hook.address, format!("{public_url}/webhook"));
        assert_eq!(hook.status, "enabled");
        assert_eq!(hook.auth_id, auth_id);
    }
}

/// Total `/start` calls the simulator received for `tenant`.
pub fn start_calls(sim: &Simulator, tenant: &str) -> u64 {
    ALL_TYPES.iter().map(|ct| sim.start_calls(tenant, ct)).sum()
}

/// `(name, value)` of every `<input type="hidden">` of an HTML page (the simulator's form).
pub fn hidden_inputs(html: &str) -> Vec<(String, String)> {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let key = format!("{name}=\"");
        let start = tag.find(&key)? + key.len();
        let end = tag[start..].find('"')? + start;
        Some(unescape(&tag[start..end]))
    };
    html.split("<input")
        .skip(1)
        .filter_map(|rest| {
            let tag = &rest[..rest.find('>')?];
            if attr(tag, "type").as_deref() != Some("hidden") {
                return None;
            }
            Some((attr(tag, "name")?, attr(tag, "value").unwrap_or_default()))
        })
        .collect()
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A query parameter of a URL.
pub fn query_param(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
