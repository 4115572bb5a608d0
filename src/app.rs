//! Wiring: the one place where the parts are made from [`Settings`] ([`Parts::new`]) and the
//! components are built from them, each given just what it needs ([`Webhook`], [`Worker`],
//! [`Reconciler`], [`Keeper`], [`HealthLoop`], [`AdminApi`], [`Consent`]). [`Application::build`] binds both
//! listeners and starts the background loops; `main.rs` (through `cli/`), `demo` and every test
//! use it the same way. No other module imports this one.

use crate::broker::Broker;
use crate::config::{Credential, Settings};
use crate::http::admin::origin::OriginPolicy;
use crate::http::admin::throttle::SignInThrottle;
use crate::http::admin::{self, AdminApi};
use crate::http::consent::limiter::RateLimiter;
use crate::http::consent::policy::ConsentPolicy;
use crate::http::consent::{self, Consent};
use crate::http::status::{self, StatusReport};
use crate::microsoft::management::ManagementClient;
use crate::microsoft::notification::ContentRules;
use crate::microsoft::tokens::{EntraClient, TokenProvider};
use crate::ops::metrics::Metrics;
use crate::ops::supervise::Supervisor;
use crate::pipeline::backpressure::Backpressure;
use crate::pipeline::dead_letters::DeadLetters;
use crate::pipeline::parked::HealthLoop;
use crate::pipeline::reconciler::Reconciler;
use crate::pipeline::replay::Replayer;
use crate::pipeline::scheduling::Scheduler;
use crate::pipeline::sink::RecordSink;
use crate::pipeline::webhook::{self, Webhook};
use crate::pipeline::work_queue::{QueueNames, RetryPolicy, WorkQueue};
use crate::pipeline::worker::Worker;
use crate::store::Store;
use crate::tenancy::onboarding::Onboarding;
use crate::tenancy::parking::Parking;
use crate::tenancy::subscriptions::{Keeper, Subscriptions, WebhookTarget};
use crate::tenancy::tenants::Tenants;
use actix_web::dev::Service as _;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The shared parts, made once from [`Settings`]. Only the wiring (and the CLI and tests, which
/// drive parts directly) sees this; components receive the parts they need.
pub struct Parts {
    pub settings: Arc<Settings>,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub broker: Arc<Broker>,
    pub tokens: Arc<TokenProvider>,
    pub management: Arc<ManagementClient>,
    pub tenants: Arc<Tenants>,
    pub subscriptions: Arc<Subscriptions>,
    pub onboarding: Arc<Onboarding>,
    /// Parks and un-parks tenants ([`crate::tenancy::health`]).
    pub parking: Arc<Parking>,
    /// The checks every blob announced from outside passes.
    pub rules: ContentRules,
    pub work_queue: Arc<WorkQueue>,
    pub sink: Arc<RecordSink>,
    /// Routing keys paused by a full consumer queue (shared by the workers and the heartbeat).
    pub backpressure: Arc<Backpressure>,
    /// Admits content fetches: the tenants' turns and their share of this replica's workers.
    pub scheduler: Arc<Scheduler>,
    /// Runs the background loops; its failures turn `/healthz` to 503.
    pub supervisor: Arc<Supervisor>,
    /// Set when a graceful stop begins, so `/readyz` turns 503 and Kubernetes stops routing here.
    pub stopping: Arc<AtomicBool>,
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

/// The name this process gives its RabbitMQ connections (client property `connection_name`):
/// `o365-relay {HOSTNAME}/{pid} {command}`, e.g. `o365-relay relay-7d9f-x2k4/1 serve`, so an
/// operator (or a test) finds in `rabbitmqctl list_connections client_properties` which node a
/// replica is connected to, and what for.
fn connection_name() -> String {
    // Client properties travel before the frame size is negotiated (4 KiB at most then): a
    // host name is at most 64 bytes on Linux, and a command a word; cap both anyway.
    let host: String = std::env::var("HOSTNAME")
        .unwrap_or_else(|_| "relay".into())
        .chars()
        .take(64)
        .collect();
    // `o365-relay` alone is `serve`; an option first (`--help`) is no command.
    let command = std::env::args()
        .nth(1)
        .filter(|a| !a.starts_with('-'))
        .map(|a| a.chars().take(32).collect::<String>())
        .unwrap_or_else(|| "serve".into());
    format!("o365-relay {host}/{} {command}", std::process::id())
}

impl Parts {
    pub fn new(settings: Settings) -> anyhow::Result<Arc<Parts>> {
        let settings = Arc::new(settings);
        let http = http_client(&settings)?;
        let store = Arc::new(Store::open(&settings.redis).context("O365_REDIS_URL")?);
        let metrics = Arc::new(Metrics::with_tenant_series(settings.metrics_per_tenant));
        let names = QueueNames::new(&settings.amqp_work_queue);
        let broker = Arc::new(
            Broker::new(
                &settings.amqp_endpoints,
                connection_name(),
                names.topology(&settings.amqp_exchange, settings.amqp_queue_type),
                metrics.amqp_connections.clone(),
            )
            .with_tls(settings.amqp_ca.as_ref(), settings.amqp_client.as_ref()),
        );
        let rules = ContentRules::new(
            &settings.manage_url,
            &settings.client_id,
            &settings.content_types,
        )
        .context("O365_MANAGE_URL")?;
        let work_queue = Arc::new(WorkQueue::new(
            broker.clone(),
            store.clone(),
            names,
            rules.clone(),
            RetryPolicy {
                base: settings.retry_base,
                max: settings.retry_max,
                max_attempts: settings.max_attempts,
                in_flight_guard: crate::pipeline::work_queue::in_flight_guard(
                    settings.reconcile_interval,
                ),
            },
            metrics.clone(),
        ));
        let sink = Arc::new(RecordSink::new(broker.clone(), &settings.amqp_exchange));
        let backpressure = Arc::new(Backpressure::new(
            &settings.amqp_exchange,
            settings.backpressure_probe_max,
            metrics.clone(),
        ));
        let scheduler = Arc::new(Scheduler::new(
            store.clone(),
            settings.quota_per_minute,
            settings.tenant_concurrency,
            settings.worker_concurrency,
        ));
        let supervisor = Arc::new(Supervisor::new(metrics.clone(), CancellationToken::new()));
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
            WebhookTarget {
                address: settings.webhook_address(),
                auth_id: settings.webhook_auth_id.clone(),
            },
            settings.content_types.clone(),
            management.clone(),
            store.clone(),
            metrics.clone(),
        ));
        let parking = Arc::new(Parking {
            tenants: tenants.clone(),
            management: management.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            content_types: settings.content_types.clone(),
        });
        let onboarding = Arc::new(
            Onboarding::new(
                tenants.clone(),
                subscriptions.clone(),
                tokens.clone(),
                settings.content_types.clone(),
                settings.public_url.is_some(),
            )
            .with_parking(parking.clone()),
        );
        Ok(Arc::new(Parts {
            settings,
            store,
            metrics,
            broker,
            tokens,
            management,
            tenants,
            subscriptions,
            onboarding,
            parking,
            rules,
            work_queue,
            sink,
            backpressure,
            scheduler,
            supervisor,
            stopping: Arc::new(AtomicBool::new(false)),
        }))
    }

    fn certificate(&self) -> Option<crate::domain::certs::ClientCertificate> {
        match &self.settings.credential {
            Credential::Certificate(c) => Some(c.clone()),
            Credential::Secret(_) => None,
        }
    }

    pub fn webhook(&self) -> Webhook {
        Webhook {
            auth_id: self.settings.webhook_auth_id.clone(),
            rules: self.rules.clone(),
            tenants: self.tenants.clone(),
            queue: self.work_queue.clone(),
            metrics: self.metrics.clone(),
            store: self.store.clone(),
            body_timeout: self.settings.webhook_body_timeout,
        }
    }

    pub fn worker(&self) -> Worker {
        Worker {
            management: self.management.clone(),
            sink: self.sink.clone(),
            store: self.store.clone(),
            tenants: self.tenants.clone(),
            subscriptions: self.subscriptions.clone(),
            parking: self.parking.clone(),
            metrics: self.metrics.clone(),
            scheduler: self.scheduler.clone(),
            record_dedup_ttl: self.settings.record_dedup_ttl,
            fetch_timeout: self.settings.fetch_timeout,
            backpressure: self.backpressure.clone(),
        }
    }

    pub fn reconciler(&self) -> Reconciler {
        Reconciler {
            store: self.store.clone(),
            management: self.management.clone(),
            subscriptions: self.subscriptions.clone(),
            tenants: self.tenants.clone(),
            parking: self.parking.clone(),
            work_queue: self.work_queue.clone(),
            rules: self.rules.clone(),
            metrics: self.metrics.clone(),
            content_types: self.settings.content_types.clone(),
            interval: self.settings.reconcile_interval,
            lookback: self.settings.reconcile_lookback,
            concurrency: self.settings.reconcile_concurrency,
        }
    }

    pub fn keeper(&self) -> Keeper {
        Keeper {
            subscriptions: self.subscriptions.clone(),
            tenants: self.tenants.clone(),
            parking: self.parking.clone(),
            store: self.store.clone(),
            interval: self.settings.keeper_interval,
            concurrency: self.settings.reconcile_concurrency,
        }
    }

    /// The health loop: probes parked tenants and releases their jobs.
    pub fn health(&self) -> HealthLoop {
        HealthLoop {
            parking: self.parking.clone(),
            tenants: self.tenants.clone(),
            tokens: self.tokens.clone(),
            management: self.management.clone(),
            work_queue: self.work_queue.clone(),
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            interval: self.settings.park_probe_interval,
        }
    }

    pub fn admin_api(&self) -> AdminApi {
        AdminApi {
            onboarding: self.onboarding.clone(),
            tenants: self.tenants.clone(),
            subscriptions: self.subscriptions.clone(),
            store: self.store.clone(),
            broker: self.broker.clone(),
            work_queue: self.work_queue.clone(),
            supervisor: self.supervisor.clone(),
            metrics: self.metrics.clone(),
            admin_token: self.settings.admin_token.clone(),
            sign_in: SignInThrottle::new(
                self.settings.admin_login_failures_per_minute,
                self.settings.trusted_proxies.clone(),
                self.metrics.clone(),
            ),
            consent_policy: self.consent_policy(),
            certificate: self.certificate(),
            stopping: self.stopping.clone(),
            status: Arc::new(self.status()),
        }
    }

    pub fn status(&self) -> StatusReport {
        StatusReport {
            store: self.store.clone(),
            tenants: self.tenants.clone(),
            work_queue: self.work_queue.clone(),
            content_types: self.settings.content_types.clone(),
            quota_per_minute: self.settings.quota_per_minute,
            certificate_expires_at: self.certificate().map(|c| c.not_after),
        }
    }

    pub fn replayer(&self) -> Replayer {
        Replayer {
            management: self.management.clone(),
            worker: Arc::new(self.worker()),
            rules: self.rules.clone(),
        }
    }

    pub fn dead_letters(&self) -> DeadLetters {
        DeadLetters::new(self.broker.clone(), self.work_queue.names().clone())
    }

    /// `O365_CONSENT_MODE` and its allowlist (configured, and in Redis).
    fn consent_policy(&self) -> Arc<ConsentPolicy> {
        Arc::new(ConsentPolicy::new(
            self.settings.consent_mode,
            self.settings.consent_allowed_tenants.clone(),
            self.settings.tenants.clone(),
            self.store.clone(),
        ))
    }

    pub fn consent(&self) -> anyhow::Result<Consent> {
        Ok(Consent {
            store: self.store.clone(),
            keys: consent::state::Keys::new(
                self.settings.consent_state_key.as_ref(),
                self.store.clone(),
            )
            .context("the consent state key")?,
            tokens: self.tokens.clone(),
            onboarding: self.onboarding.clone(),
            consent_policy: self.consent_policy(),
            limiter: RateLimiter::new(self.settings.consent_starts_per_minute),
            trusted_proxies: self.settings.trusted_proxies.clone(),
            content_types: self.settings.content_types.clone(),
            login_url: self.settings.login_url.clone(),
            manage_url: self.settings.manage_url.clone(),
            client_id: self.settings.client_id.clone(),
            redirect_uri: self.settings.consent_redirect_uri(),
            public_url: self.settings.public_url.clone(),
        })
    }
}

pub struct Application {
    parts: Arc<Parts>,
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
            if settings
                .public_url
                .as_ref()
                .is_some_and(|u| u.is_loopback())
            {
                tracing::info!("O365_PUBLIC_URL is plain http on this machine: fine for a local simulator (Microsoft itself refuses such webhooks, AF20021).");
            } else {
                tracing::warn!("O365_PUBLIC_URL is not https: Microsoft refuses such webhooks (AF20021). Fine for the simulator only.");
            }
        }
        let parts = Parts::new(settings)?;
        let shutdown_timeout = parts.settings.shutdown_timeout.as_secs();
        let (public, public_port) = match public {
            Some(listener) => {
                let port = listener.local_addr()?.port();
                let webhook = web::Data::new(parts.webhook());
                let consent = web::Data::new(parts.consent()?);
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(webhook.clone())
                        .app_data(consent.clone())
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
        let admin_api = web::Data::new(parts.admin_api());
        let origin = OriginPolicy::new(&parts.settings.admin_hosts);
        if parts.settings.admin_token.is_none() {
            tracing::warn!(
                listen = %admin.local_addr()?,
                "O365_ADMIN_TOKEN is not set: whoever reaches the admin listener can add, approve and remove tenants, start subscriptions, requeue and purge dead letters, and read the status page. Keep it on loopback or behind a NetworkPolicy, or set the token. (Browsers on other sites and unknown Host names are refused either way.)"
            );
        }
        let admin_metrics = parts.metrics.clone();
        let admin = HttpServer::new(move || {
            let origin = origin.clone();
            let metrics = admin_metrics.clone();
            App::new()
                .app_data(admin_api.clone())
                .wrap_fn(move |req, srv| {
                    let call = match origin.check(req.method(), req.headers()) {
                        Ok(()) => Ok(srv.call(req)),
                        Err(refusal) => {
                            refusal.record(&metrics);
                            Err(refusal)
                        }
                    };
                    async move {
                        match call {
                            Ok(response) => response.await,
                            Err(r) => {
                                Err(actix_web::error::InternalError::new(r.message, r.status)
                                    .into())
                            }
                        }
                    }
                })
                .configure(admin::routes)
        })
        .listen(admin)?
        .workers(1)
        .disable_signals()
        .shutdown_timeout(5)
        .run();
        Ok(Application {
            parts,
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

    pub fn parts(&self) -> Arc<Parts> {
        self.parts.clone()
    }

    /// Cancel this to stop the application gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs until the shutdown token is cancelled, then stops within one budget,
    /// `O365_SHUTDOWN_TIMEOUT`, shared by every phase: no new webhook requests (in-flight ones
    /// finish), consumers stop taking jobs and jobs in flight finish or are left unacked for
    /// redelivery — all at once, against the same deadline — then the connection is closed.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let parts = self.parts.clone();
        let supervisor = parts.supervisor.clone();
        let stop = supervisor.shutdown_token();

        // Declare the topology before anything else uses it; retried until RabbitMQ answers.
        let declare = {
            let parts = parts.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                if parts.broker.declare_until_ready(&stop).await {
                    tracing::info!(exchange = %parts.sink.exchange(), queue = %parts.work_queue.names().work, "RabbitMQ topology declared.");
                }
            })
        };
        // Markers written while Redis was down are written once it is back.
        {
            let store = parts.store.clone();
            supervisor.spawn("marker_flusher", move |stop| {
                let store = store.clone();
                async move {
                    store
                        .keep_flushing_deferred(Duration::from_secs(2), stop)
                        .await
                }
            });
        }
        // "Alive" on the status page; gone from it on a graceful stop.
        {
            let store = parts.store.clone();
            let me = status::this_replica();
            let backpressure = parts.backpressure.clone();
            supervisor.spawn("heartbeat", move |stop| {
                status::heartbeat(store.clone(), me.clone(), backpressure.clone(), stop)
            });
        }
        let settings = &parts.settings;
        if settings.enable_workers {
            let worker = Arc::new(parts.worker());
            let queue = parts.work_queue.clone();
            let concurrency = settings.worker_concurrency;
            let budget = settings.shutdown_timeout;
            supervisor.spawn("workers", move |stop| {
                worker.clone().run(queue.clone(), concurrency, stop, budget)
            });
        }
        if settings.enable_reconciler {
            let reconciler = Arc::new(parts.reconciler());
            supervisor.spawn("reconciler", move |stop| reconciler.clone().run(stop));
        }
        if settings.enable_workers || settings.enable_reconciler {
            let health = Arc::new(parts.health());
            supervisor.spawn("tenant_health", move |stop| health.clone().run(stop));
        }
        if settings.enable_keeper && settings.public_url.is_some() {
            let keeper = Arc::new(parts.keeper());
            supervisor.spawn("keeper", move |stop| keeper.clone().run(stop));
        }
        if let Some(c) = parts.certificate() {
            parts.metrics.certificate_expires_in(c.seconds_left());
            if c.seconds_left() < 30 * 86_400 {
                tracing::warn!(not_after = %c.not_after, "The client certificate expires within 30 days: register a new one (o365-relay cert new) and rotate.");
            }
        }

        let public_handle = self.public.as_ref().map(|s| s.handle());
        let admin_handle = self.admin.handle();
        let public_task = self.public.map(tokio::spawn);
        let admin_task = tokio::spawn(self.admin);

        self.shutdown.cancelled().await;
        let deadline = tokio::time::Instant::now() + parts.settings.shutdown_timeout;
        parts.stopping.store(true, Ordering::SeqCst);
        tracing::info!("Shutting down: no new webhook requests, no new jobs.");
        stop.cancel();
        let public_stopped = async {
            if let Some(h) = public_handle {
                let _ = tokio::time::timeout_at(deadline, h.stop(true)).await;
            }
        };
        tokio::join!(public_stopped, supervisor.join(deadline));
        // What the webhook and the workers kept in memory to write in batches (notification
        // counts, in-flight markers) is written now: their windows would end after the process.
        match tokio::time::timeout(Duration::from_secs(2), parts.store.flush_coalesced()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Cannot write the pending notification counts and in-flight markers at stop.")
            }
            Err(_) => tracing::warn!(
                "Writing the pending notification counts and in-flight markers at stop timed out."
            ),
        }
        declare.abort();
        let _ = tokio::time::timeout(Duration::from_secs(2), parts.broker.close()).await;
        admin_handle.stop(false).await;
        if let Some(t) = public_task {
            let _ = t.await;
        }
        let _ = admin_task.await;
        tracing::info!("Stopped.");
        Ok(())
    }
}
