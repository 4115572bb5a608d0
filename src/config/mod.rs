//! Configuration from the environment (`.env.example` lists every variable with its default and
//! its range; README.md, "Running it"). Each concern reads its own variables ([`microsoft`],
//! [`http`], [`redis`], [`amqp`], [`pipeline`], [`process`], [`consent`]) through the readers
//! in [`parse`], which record a problem and carry on, so that *every* problem is reported at
//! start, one line per variable, instead of stopping at the first.

mod amqp;
mod base_url;
mod consent;
mod http;
mod microsoft;
mod net;
mod parse;
mod pipeline;
mod process;
mod redis;
#[cfg(test)]
mod tests;
mod tls;

pub use self::redis::{RedisMode, RedisSettings};
pub use amqp::{AmqpEndpoint, QueueType};
pub use base_url::BaseUrl;
pub use consent::{ConsentMode, MIN_CONSENT_KEY_LEN};
pub use microsoft::Credential;
pub use net::IpNet;
pub use process::LogFormat;
pub use tls::{is_tls_failure, ClientIdentity, PemFile};

use crate::domain::secret::Secret;
use crate::domain::{ContentType, TenantId};
use std::time::Duration;
use url::Url;

/// Everything the relay needs, parsed and checked. Every duration and number lies within the
/// range documented in `.env.example`, so arithmetic on it cannot overflow.
#[derive(Clone, Debug)]
pub struct Settings {
    pub client_id: String,
    /// The certificate when `O365_CLIENT_CERT_PATH` and `O365_CLIENT_KEY_PATH` are set (then
    /// `O365_CLIENT_SECRET` is ignored), else the client secret.
    pub credential: Credential,
    pub webhook_auth_id: Secret<String>,
    /// The external base URL, no trailing slash.
    pub public_url: Option<BaseUrl>,
    pub tenants: Vec<TenantId>,
    pub publisher_id: Option<TenantId>,
    pub content_types: Vec<ContentType>,
    /// Entra ID base URL (`O365_LOGIN_URL`, or the `O365_CLOUD` preset), no trailing slash.
    pub login_url: BaseUrl,
    /// Management API origin (`O365_MANAGE_URL`, or the `O365_CLOUD` preset), no trailing
    /// slash; also the token `resource` and the only origin a `contentUri` may have.
    pub manage_url: BaseUrl,
    pub listen: String,
    pub admin_listen: String,
    /// `O365_ADMIN_HOSTS`: names the admin listener answers to besides IP literals and
    /// `localhost` ([`crate::http::admin::origin`]).
    pub admin_hosts: Vec<String>,
    /// `O365_REDIS_MODE`, `O365_REDIS_URL`, `O365_REDIS_SENTINEL_MASTER`, `O365_REDIS_PREFIX`,
    /// `O365_REDIS_CA_PATH`.
    pub redis: RedisSettings,
    /// `O365_AMQP_URL`: one endpoint, or the nodes of one cluster, in the order given (at
    /// least one).
    pub amqp_endpoints: Vec<AmqpEndpoint>,
    /// `O365_AMQP_CA_PATH`: a private CA for amqps://, trusted with the system's CA store.
    pub amqp_ca: Option<PemFile>,
    /// `O365_AMQP_CLIENT_CERT_PATH` and `O365_AMQP_CLIENT_KEY_PATH`: the client certificate
    /// presented to RabbitMQ over amqps://.
    pub amqp_client: Option<ClientIdentity>,
    pub amqp_exchange: String,
    pub amqp_work_queue: String,
    pub amqp_queue_type: QueueType,
    pub worker_concurrency: usize,
    /// `O365_TENANT_CONCURRENCY`: a tenant's share of this replica's workers while the replica
    /// is busy ([`crate::pipeline::scheduling`]).
    pub tenant_concurrency: usize,
    pub reconcile_interval: Duration,
    pub reconcile_lookback: Duration,
    /// `O365_RECONCILE_CONCURRENCY`: tenants reconciled at once in a pass, and kept at once by
    /// the subscription keeper.
    pub reconcile_concurrency: usize,
    /// `O365_METRICS_PER_TENANT`: the reconciliation series carry a `tenant_id` label (one
    /// series per tenant) instead of one aggregate each.
    pub metrics_per_tenant: bool,
    pub admin_token: Option<Secret<String>>,
    /// `O365_ADMIN_ALLOW_UNAUTHENTICATED`: serve the admin API without a token on a
    /// non-loopback address (see [`Settings::check_serve`]).
    pub admin_allow_unauthenticated: bool,
    /// `O365_ADMIN_LOGIN_FAILURES_PER_MINUTE`: wrong or missing admin tokens one client may
    /// send per minute (per replica) before its attempts are refused uncompared (429).
    pub admin_login_failures_per_minute: u32,
    pub log_format: LogFormat,
    pub enable_webhook: bool,
    pub enable_workers: bool,
    pub enable_reconciler: bool,
    pub enable_keeper: bool,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub quota_per_minute: u32,
    pub http_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub record_dedup_ttl: Duration,
    pub keeper_interval: Duration,
    /// How often a parked tenant is probed (`O365_PARK_PROBE_INTERVAL`).
    pub park_probe_interval: Duration,
    /// The longest interval between probes of a routing key paused by a full consumer queue
    /// (`O365_BACKPRESSURE_PROBE_MAX`, [`crate::pipeline::backpressure`]).
    pub backpressure_probe_max: Duration,
    /// A blob's whole fetch, from request to last byte (`O365_FETCH_TIMEOUT`).
    pub fetch_timeout: Duration,
    /// How long a webhook request body may take to arrive (`O365_WEBHOOK_BODY_TIMEOUT`).
    pub webhook_body_timeout: Duration,
    /// `O365_TRUSTED_PROXIES`: whose `X-Forwarded-For` names the client (consent rate limit,
    /// failed admin sign-ins).
    pub trusted_proxies: Vec<IpNet>,
    /// `O365_CONSENT_MODE`: who may onboard through the consent flow.
    pub consent_mode: ConsentMode,
    /// `O365_CONSENT_ALLOWED_TENANTS` (only with `O365_CONSENT_MODE=allowlist`).
    pub consent_allowed_tenants: Vec<TenantId>,
    /// `O365_CONSENT_STARTS_PER_MINUTE`: consent starts per client and replica.
    pub consent_starts_per_minute: u32,
    /// `O365_CONSENT_STATE_KEY`: the key that signs consent states; `None` = one shared
    /// through Redis.
    pub consent_state_key: Option<Secret<String>>,
}

/// Every configuration problem found, one line each (`O365_X: what is wrong; what is expected`).
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Settings, ConfigErrors> {
        // `std::env::vars` panics on a value that is not UTF-8 (and the panic prints it): read
        // the raw values, refuse such an `O365_*` variable by name only, ignore everyone else's.
        let mut vars = Vec::new();
        let mut not_utf8 = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str().filter(|n| n.starts_with("O365_")) else {
                continue;
            };
            match value.into_string() {
                Ok(value) => vars.push((name.to_string(), value)),
                Err(_) => not_utf8.push(name.to_string()),
            }
        }
        if not_utf8.is_empty() {
            return Settings::from_vars(vars);
        }
        let mut errors: Vec<String> = not_utf8
            .iter()
            .map(|name| format!("{name}: is not valid UTF-8 (the value is not shown)"))
            .collect();
        // The other variables' problems too, but not a second line for the same variable.
        if let Err(rest) = Settings::from_vars(vars) {
            errors.extend(
                rest.0
                    .into_iter()
                    .filter(|line| !not_utf8.iter().any(|n| line.starts_with(&format!("{n}:")))),
            );
        }
        Err(ConfigErrors(errors))
    }

    /// Parses `O365_*` variables from any source (tests pass a list of pairs).
    pub fn from_vars<I, K, V>(vars: I) -> Result<Settings, ConfigErrors>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(k, _)| k.starts_with("O365_"))
            .collect();
        let mut p = parse::Parser::default();
        let ms = microsoft::read(&vars, &mut p);
        let http = http::read(&vars, &mut p);
        let redis = redis::read(&vars, &mut p);
        let amqp = amqp::read(&vars, &mut p);
        let pipeline = pipeline::read(&vars, &mut p);
        let process = process::read(&vars, &mut p);
        let consent = consent::read(&vars, &mut p);
        let credential = match ms.credential {
            Some(c) if p.is_ok() => c,
            _ => return Err(ConfigErrors(p.into_errors())),
        };
        Ok(Settings {
            client_id: ms.client_id,
            credential,
            webhook_auth_id: ms.webhook_auth_id,
            public_url: http.public_url,
            tenants: ms.tenants,
            publisher_id: ms.publisher_id,
            content_types: ms.content_types,
            login_url: ms.login_url,
            manage_url: ms.manage_url,
            listen: http.listen,
            admin_listen: http.admin_listen,
            admin_hosts: http.admin_hosts,
            redis,
            amqp_endpoints: amqp.endpoints,
            amqp_ca: amqp.ca,
            amqp_client: amqp.client,
            amqp_exchange: amqp.exchange,
            amqp_work_queue: amqp.work_queue,
            amqp_queue_type: amqp.queue_type,
            worker_concurrency: pipeline.worker_concurrency,
            tenant_concurrency: pipeline.tenant_concurrency,
            reconcile_interval: pipeline.reconcile_interval,
            reconcile_lookback: pipeline.reconcile_lookback,
            reconcile_concurrency: pipeline.reconcile_concurrency,
            metrics_per_tenant: process.metrics_per_tenant,
            admin_token: http.admin_token,
            admin_allow_unauthenticated: http.admin_allow_unauthenticated,
            admin_login_failures_per_minute: http.admin_login_failures_per_minute,
            log_format: process.log_format,
            enable_webhook: process.enable_webhook,
            enable_workers: process.enable_workers,
            enable_reconciler: process.enable_reconciler,
            enable_keeper: process.enable_keeper,
            max_attempts: pipeline.max_attempts,
            retry_base: pipeline.retry_base,
            retry_max: pipeline.retry_max,
            quota_per_minute: pipeline.quota_per_minute,
            http_timeout: http.http_timeout,
            shutdown_timeout: process.shutdown_timeout,
            record_dedup_ttl: pipeline.record_dedup_ttl,
            keeper_interval: pipeline.keeper_interval,
            park_probe_interval: pipeline.park_probe_interval,
            backpressure_probe_max: pipeline.backpressure_probe_max,
            fetch_timeout: http.fetch_timeout,
            webhook_body_timeout: http.webhook_body_timeout,
            trusted_proxies: http.trusted_proxies,
            consent_mode: consent.mode,
            consent_allowed_tenants: consent.allowed_tenants,
            consent_starts_per_minute: consent.starts_per_minute,
            consent_state_key: consent.state_key,
        })
    }

    /// `serve` needs the public URL: it is the webhook address given to Microsoft.
    /// What `serve` needs beyond a valid configuration: a public URL, and an admin listener
    /// that is protected — on a loopback address, or with `O365_ADMIN_TOKEN`, or explicitly
    /// opened with `O365_ADMIN_ALLOW_UNAUTHENTICATED=true` (e.g. behind a NetworkPolicy).
    pub fn check_serve(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        if let Err(e) = self.require_public_url() {
            errors.extend(e.0);
        }
        let loopback = self
            .admin_listen
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback());
        if !loopback && self.admin_token.is_none() && !self.admin_allow_unauthenticated {
            errors.push(format!(
                "O365_ADMIN_TOKEN: is required when O365_ADMIN_LISTEN ({}) is not a loopback address (the admin API can add and remove tenants); set a token, listen on 127.0.0.1, or set O365_ADMIN_ALLOW_UNAUTHENTICATED=true if a network policy already keeps the port private",
                self.admin_listen
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    pub fn require_public_url(&self) -> Result<&BaseUrl, ConfigErrors> {
        self.public_url.as_ref().ok_or_else(|| {
            ConfigErrors(vec![
                "O365_PUBLIC_URL: is required for serve (the external https base URL behind the ingress, e.g. https://relay.example.com)".into(),
            ])
        })
    }

    /// `{O365_PUBLIC_URL}/webhook`.
    pub fn webhook_address(&self) -> Option<String> {
        self.public_url.as_ref().map(|u| format!("{u}/webhook"))
    }

    /// `{O365_PUBLIC_URL}/consent/callback`.
    pub fn consent_redirect_uri(&self) -> Option<String> {
        self.public_url
            .as_ref()
            .map(|u| format!("{u}/consent/callback"))
    }

    /// The `PublisherIdentifier` for calls about `tenant` (Office 365 Management Activity API
    /// reference: the `PublisherIdentifier` parameter of every operation).
    pub fn publisher_for<'a>(&'a self, tenant: &'a TenantId) -> &'a TenantId {
        self.publisher_id.as_ref().unwrap_or(tenant)
    }

    /// Whether `O365_PUBLIC_URL` is plain http, which Microsoft refuses for webhooks (AF20021).
    pub fn public_url_is_insecure(&self) -> bool {
        self.public_url.as_ref().is_some_and(|u| !u.is_https())
    }
}

/// `scheme://user:***@host…`: a URL with its password hidden, for messages.
pub fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "[unparseable url]".into(),
    }
}
