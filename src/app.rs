//! Wiring: [`Application::build`] makes every part from [`Settings`], binds both listeners and
//! starts the background loops; `main.rs`, `demo` and every test use it the same way.

use crate::admin;
use crate::broker::Broker;
use crate::config::{Credential, Settings};
use crate::management::ManagementClient;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::subscriptions::Subscriptions;
use crate::tenants::Tenants;
use crate::tokens::{EntraClient, TokenProvider};
use crate::{consent, reconciler, subscriptions, webhook, worker};
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Everything a request handler or a background loop needs.
pub struct Relay {
    pub settings: Arc<Settings>,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub broker: Arc<Broker>,
    pub tokens: Arc<TokenProvider>,
    pub management: Arc<ManagementClient>,
    pub tenants: Arc<Tenants>,
    pub subscriptions: Arc<Subscriptions>,
    /// Set when a graceful stop begins, so `/readyz` turns 503 and Kubernetes stops routing here.
    pub stopping: std::sync::atomic::AtomicBool,
}

/// The one HTTP client: no redirects (it carries bearer tokens), bounded connect and read times.
pub fn http_client(settings: &Settings) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(settings.http_timeout)
        .user_agent(concat!("o365-relay/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("Failed to build the HTTP client")
}

impl Relay {
    pub fn new(settings: Settings) -> anyhow::Result<Arc<Relay>> {
        let settings = Arc::new(settings);
        let http = http_client(&settings)?;
        let store = Arc::new(
            Store::new(settings.redis_url.expose(), &settings.redis_prefix)
                .context("O365_REDIS_URL")?,
        );
        let metrics = Arc::new(Metrics::new());
        let broker = Arc::new(Broker::new(&settings));
        let tokens = Arc::new(TokenProvider::new(
            EntraClient::new(&settings, http.clone()),
            store.clone(),
            metrics.clone(),
        ));
        let management = Arc::new(ManagementClient::new(
            &settings,
            http,
            tokens.clone(),
            store.clone(),
            metrics.clone(),
        ));
        let tenants = Arc::new(Tenants::new(store.clone(), settings.tenants.clone()));
        let subscriptions = Arc::new(Subscriptions::new(
            settings.clone(),
            management.clone(),
            store.clone(),
            metrics.clone(),
        ));
        Ok(Arc::new(Relay {
            settings,
            store,
            metrics,
            broker,
            tokens,
            management,
            tenants,
            subscriptions,
            stopping: std::sync::atomic::AtomicBool::new(false),
        }))
    }
}

pub struct Application {
    relay: Arc<Relay>,
    public: Option<actix_web::dev::Server>,
    admin: actix_web::dev::Server,
    public_port: u16,
    admin_port: u16,
    shutdown: CancellationToken,
}

impl Application {
    /// Binds `O365_LISTEN` and `O365_ADMIN_LISTEN`.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let public =
            if settings.enable_webhook {
                Some(TcpListener::bind(&settings.listen).with_context(|| {
                    format!("O365_LISTEN: cannot listen on {}", settings.listen)
                })?)
            } else {
                None
            };
        let admin = TcpListener::bind(&settings.admin_listen).with_context(|| {
            format!(
                "O365_ADMIN_LISTEN: cannot listen on {}",
                settings.admin_listen
            )
        })?;
        Application::build_with_listeners(settings, public, admin).await
    }

    /// Uses listeners bound by the caller (tests and `demo` bind port 0 first, to know the
    /// webhook URL before the relay starts).
    pub async fn build_with_listeners(
        settings: Settings,
        public: Option<TcpListener>,
        admin: TcpListener,
    ) -> anyhow::Result<Application> {
        if settings.public_url_is_insecure() {
            tracing::warn!("O365_PUBLIC_URL is not https: Microsoft refuses such webhooks (AF20021). Fine for the simulator only.");
        }
        let relay = Relay::new(settings)?;
        let shutdown_timeout = relay.settings.shutdown_timeout.as_secs();
        let data = web::Data::from(relay.clone());
        let (public, public_port) = match public {
            Some(listener) => {
                let port = listener.local_addr()?.port();
                let d = data.clone();
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(d.clone())
                        .route("/webhook", web::post().to(webhook::webhook))
                        .configure(consent::routes)
                })
                .listen(listener)?
                .workers(2)
                .disable_signals()
                .shutdown_timeout(shutdown_timeout)
                .run();
                (Some(server), port)
            }
            None => (None, 0),
        };
        let admin_port = admin.local_addr()?.port();
        let d = data.clone();
        let admin =
            HttpServer::new(move || App::new().app_data(d.clone()).configure(admin::routes))
                .listen(admin)?
                .workers(1)
                .disable_signals()
                .shutdown_timeout(5)
                .run();
        Ok(Application {
            relay,
            public,
            admin,
            public_port,
            admin_port,
            shutdown: CancellationToken::new(),
        })
    }

    pub fn public_port(&self) -> u16 {
        self.public_port
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    pub fn relay(&self) -> Arc<Relay> {
        self.relay.clone()
    }

    /// Cancel this to stop the application gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs until the shutdown token is cancelled, then stops in order: no new webhook
    /// requests (in-flight ones finish), consumers stop and in-flight blobs finish or are left
    /// unacked for redelivery, confirms are awaited, the connection is closed.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let relay = self.relay.clone();
        let workers_stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();

        // Declare the topology before anything else uses it; retried until RabbitMQ answers.
        {
            let relay = relay.clone();
            let stop = workers_stop.clone();
            tasks.spawn(async move {
                let mut delay = Duration::from_millis(200);
                while !stop.is_cancelled() {
                    match relay.broker.declare_topology().await {
                        Ok(()) => {
                            tracing::info!(exchange = %relay.broker.names().exchange, queue = %relay.broker.names().work, "RabbitMQ topology declared.");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "Cannot declare the RabbitMQ topology yet; retrying.");
                            tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(delay) => {} }
                            delay = (delay * 2).min(Duration::from_secs(10));
                        }
                    }
                }
            });
        }
        // Markers written while Redis was down are written once it is back.
        {
            let relay = relay.clone();
            let stop = workers_stop.clone();
            tasks.spawn(async move {
                loop {
                    tokio::select! { _ = stop.cancelled() => break, _ = tokio::time::sleep(Duration::from_secs(2)) => {} }
                    if relay.store.deferred_len() > 0 {
                        if let Ok(n) = relay.store.flush_deferred().await {
                            tracing::info!(markers = n, "Wrote the de-duplication markers deferred during the Redis outage.");
                        }
                    }
                }
                let _ = relay.store.flush_deferred().await;
            });
        }
        if relay.settings.enable_workers {
            tasks.spawn(worker::run(relay.clone(), workers_stop.clone()));
        }
        if relay.settings.enable_reconciler {
            tasks.spawn(reconciler::run(relay.clone(), workers_stop.clone()));
        }
        if relay.settings.enable_keeper && relay.settings.public_url.is_some() {
            tasks.spawn(subscriptions::keep(
                relay.subscriptions.clone(),
                relay.tenants.clone(),
                relay.store.clone(),
                relay.settings.keeper_interval,
                workers_stop.clone(),
            ));
        }
        if let Credential::Certificate(c) = &relay.settings.credential {
            relay
                .metrics
                .certificate_expiry
                .set(c.seconds_left() as f64);
            if c.seconds_left() < 30 * 86_400 {
                tracing::warn!(not_after = %c.not_after, "The client certificate expires within 30 days: register a new one (o365-relay cert new) and rotate.");
            }
        }

        let public_handle = self.public.as_ref().map(|s| s.handle());
        let admin_handle = self.admin.handle();
        let public_task = self.public.map(tokio::spawn);
        let admin_task = tokio::spawn(self.admin);

        self.shutdown.cancelled().await;
        relay
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        tracing::info!("Shutting down: no new webhook requests.");
        if let Some(h) = public_handle {
            h.stop(true).await;
        }
        workers_stop.cancel();
        let budget = relay.settings.shutdown_timeout + Duration::from_secs(1);
        if tokio::time::timeout(budget, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tracing::warn!("Background tasks did not stop in time; aborting them.");
            tasks.abort_all();
        }
        relay.broker.close().await;
        admin_handle.stop(true).await;
        if let Some(t) = public_task {
            let _ = t.await;
        }
        let _ = admin_task.await;
        tracing::info!("Stopped.");
        Ok(())
    }
}
