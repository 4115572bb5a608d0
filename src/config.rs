//! Configuration from the environment (`.env.example` lists every variable with its default;
//! README.md, "Running it"). Every variable is read as text through envy into one flat struct,
//! then each is parsed on its own so that *every* problem is reported at start, one line per
//! variable, instead of stopping at the first.

use crate::certs::ClientCertificate;
use crate::domain::{ContentType, TenantId};
use crate::secret::Secret;
use serde::Deserialize;
use std::time::Duration;
use url::Url;

/// The raw variables, without the `O365_` prefix. Flat and all text: envy cannot flatten and
/// would stop at the first bad number (envy issue #26, "Serde flatten":
/// <https://github.com/softprops/envy/issues/26>).
#[derive(Debug, Default, Deserialize)]
struct Raw {
    client_id: Option<String>,
    client_cert_path: Option<String>,
    client_key_path: Option<String>,
    client_secret: Option<String>,
    webhook_auth_id: Option<String>,
    public_url: Option<String>,
    tenants: Option<String>,
    publisher_id: Option<String>,
    content_types: Option<String>,
    cloud: Option<String>,
    login_url: Option<String>,
    manage_url: Option<String>,
    listen: Option<String>,
    admin_listen: Option<String>,
    redis_url: Option<String>,
    redis_prefix: Option<String>,
    amqp_url: Option<String>,
    amqp_exchange: Option<String>,
    amqp_work_queue: Option<String>,
    amqp_queue_type: Option<String>,
    worker_concurrency: Option<String>,
    reconcile_interval: Option<String>,
    reconcile_lookback: Option<String>,
    admin_token: Option<String>,
    log_format: Option<String>,
    // Additions listed in README.md, "Changelog" (documented in .env.example).
    enable_webhook: Option<String>,
    enable_workers: Option<String>,
    enable_reconciler: Option<String>,
    enable_keeper: Option<String>,
    max_attempts: Option<String>,
    retry_base: Option<String>,
    retry_max: Option<String>,
    quota_per_minute: Option<String>,
    http_timeout: Option<String>,
    shutdown_timeout: Option<String>,
    record_dedup_ttl: Option<String>,
    keeper_interval: Option<String>,
    fetch_timeout: Option<String>,
    webhook_body_timeout: Option<String>,
}

/// The client credential used with Entra ID.
#[derive(Clone, Debug)]
pub enum Credential {
    Certificate(ClientCertificate),
    Secret(Secret<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueType {
    Quorum,
    Classic,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Everything the relay needs, parsed and checked.
#[derive(Clone, Debug)]
pub struct Settings {
    pub client_id: String,
    pub credential: Credential,
    /// A client secret kept besides a certificate; used for nothing but an explicit fallback.
    pub client_secret: Option<Secret<String>>,
    pub webhook_auth_id: Secret<String>,
    pub public_url: Option<Url>,
    pub tenants: Vec<TenantId>,
    pub publisher_id: Option<TenantId>,
    pub content_types: Vec<ContentType>,
    pub cloud: String,
    /// Entra ID base URL, no trailing slash.
    pub login_url: String,
    /// Management API base URL, no trailing slash; also the token `resource` and the only origin
    /// a `contentUri` may have.
    pub manage_url: String,
    pub listen: String,
    pub admin_listen: String,
    pub redis_url: Secret<String>,
    pub redis_prefix: String,
    pub amqp_url: Secret<String>,
    pub amqp_exchange: String,
    pub amqp_work_queue: String,
    pub amqp_queue_type: QueueType,
    pub worker_concurrency: usize,
    pub reconcile_interval: Duration,
    pub reconcile_lookback: Duration,
    pub admin_token: Option<Secret<String>>,
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
    /// A blob's whole fetch, from request to last byte (`O365_FETCH_TIMEOUT`).
    pub fetch_timeout: Duration,
    /// How long a webhook request body may take to arrive (`O365_WEBHOOK_BODY_TIMEOUT`).
    pub webhook_body_timeout: Duration,
}

/// Every configuration problem found, one line each (`O365_X: what is wrong; what is expected`).
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

const SEVEN_DAYS: Duration = Duration::from_secs(7 * 24 * 3600);

/// Collects problems while parsing.
struct Parser {
    errors: Vec<String>,
}

impl Parser {
    fn fail(&mut self, var: &str, msg: impl std::fmt::Display) {
        self.errors.push(format!("O365_{var}: {msg}"));
    }

    fn text(&mut self, var: &str, v: Option<String>, default: &str) -> String {
        let s = match v.map(|s| s.trim().to_string()) {
            Some(s) if !s.is_empty() => s,
            _ => default.to_string(),
        };
        if s.is_empty() {
            self.fail(var, "is required but not set");
        }
        s
    }

    fn duration(&mut self, var: &str, v: Option<String>, default: &str) -> Duration {
        let s = self.text(var, v, default);
        match humantime::parse_duration(&s) {
            Ok(d) => d,
            Err(e) => {
                self.fail(
                    var,
                    format!("'{s}' is not a duration ({e}); expected e.g. 30s, 15m, 24h"),
                );
                Duration::ZERO
            }
        }
    }

    fn number<T: std::str::FromStr + Default>(
        &mut self,
        var: &str,
        v: Option<String>,
        default: &str,
    ) -> T {
        let s = self.text(var, v, default);
        s.parse().unwrap_or_else(|_| {
            self.fail(var, format!("'{s}' is not a whole number"));
            // The default keeps later range checks from reporting the same variable twice.
            default.parse().unwrap_or_default()
        })
    }

    fn boolean(&mut self, var: &str, v: Option<String>) -> bool {
        let s = self.text(var, v, "true");
        match s.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => {
                self.fail(
                    var,
                    format!("'{s}' is not a boolean (expected true or false)"),
                );
                true
            }
        }
    }

    fn base_url(&mut self, var: &str, s: &str) -> String {
        match Url::parse(s) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                if u.query().is_some() || u.fragment().is_some() {
                    self.fail(var, format!("'{s}' must not have a query or fragment"));
                }
                s.trim_end_matches('/').to_string()
            }
            _ => {
                self.fail(var, format!("'{s}' is not an http(s) URL"));
                String::new()
            }
        }
    }
}

/// The two base URLs of each Microsoft cloud: (login, manage). Manage URLs per plan: Office 365
/// Management Activity API reference, "Activity API operations"; login URLs: Microsoft identity
/// platform, "National clouds" ("Microsoft Entra authentication endpoints").
fn cloud_preset(cloud: &str) -> Option<(&'static str, &'static str)> {
    Some(match cloud {
        "enterprise" => (
            "https://login.microsoftonline.com",
            "https://manage.office.com",
        ),
        "gcc" => (
            "https://login.microsoftonline.com",
            "https://manage-gcc.office.com",
        ),
        "gcc-high" => (
            "https://login.microsoftonline.us",
            "https://manage.office365.us",
        ),
        "dod" => (
            "https://login.microsoftonline.us",
            "https://manage.protection.apps.mil",
        ),
        _ => return None,
    })
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Settings, ConfigErrors> {
        Settings::from_vars(std::env::vars())
    }

    /// Parses `O365_*` variables from any source (tests pass a list of pairs).
    pub fn from_vars<I, K, V>(vars: I) -> Result<Settings, ConfigErrors>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let pairs: Vec<(String, String)> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(k, _)| k.starts_with("O365_"))
            .collect();
        let raw: Raw = envy::prefixed("O365_")
            .from_iter(pairs)
            .map_err(|e| ConfigErrors(vec![format!("environment: {e}")]))?;
        let mut p = Parser { errors: Vec::new() };

        let client_id = p.text("CLIENT_ID", raw.client_id, "");
        if !client_id.is_empty() && uuid::Uuid::parse_str(&client_id).is_err() {
            p.fail(
                "CLIENT_ID",
                format!(
                    "'{client_id}' is not a GUID (the app registration's Application (client) ID)"
                ),
            );
        }

        let secret = raw.client_secret.filter(|s| !s.is_empty()).map(Secret::new);
        let cert = match (
            raw.client_cert_path.filter(|s| !s.is_empty()),
            raw.client_key_path.filter(|s| !s.is_empty()),
        ) {
            (Some(c), Some(k)) => match ClientCertificate::load(&c, &k) {
                Ok(cert) => Some(cert),
                Err(e) => {
                    p.errors.push(e);
                    None
                }
            },
            (Some(_), None) => {
                p.fail(
                    "CLIENT_KEY_PATH",
                    "is required when O365_CLIENT_CERT_PATH is set",
                );
                None
            }
            (None, Some(_)) => {
                p.fail(
                    "CLIENT_CERT_PATH",
                    "is required when O365_CLIENT_KEY_PATH is set",
                );
                None
            }
            (None, None) => None,
        };
        let credential = match (cert, &secret) {
            (Some(c), _) => Some(Credential::Certificate(c)),
            (None, Some(s)) => Some(Credential::Secret(s.clone())),
            (None, None) => {
                if !p
                    .errors
                    .iter()
                    .any(|e| e.contains("CLIENT_CERT_PATH") || e.contains("CLIENT_KEY_PATH"))
                {
                    p.fail(
                        "CLIENT_CERT_PATH",
                        "no client credential: set O365_CLIENT_CERT_PATH and O365_CLIENT_KEY_PATH, or O365_CLIENT_SECRET",
                    );
                }
                None
            }
        };

        let auth_id = p.text("WEBHOOK_AUTH_ID", raw.webhook_auth_id, "");
        if !auth_id.is_empty() && auth_id.chars().count() < 16 {
            p.fail(
                "WEBHOOK_AUTH_ID",
                "is shorter than 16 characters; use a long random value",
            );
        }

        let public_url = raw.public_url.filter(|s| !s.trim().is_empty()).and_then(|s| {
            let s = s.trim().trim_end_matches('/').to_string();
            match Url::parse(&s) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Some(u),
                _ => {
                    p.fail("PUBLIC_URL", format!("'{s}' is not an http(s) URL (expected e.g. https://relay.example.com)"));
                    None
                }
            }
        });

        let mut tenants = Vec::new();
        for t in raw
            .tenants
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            match TenantId::parse(t) {
                Ok(t) if !tenants.contains(&t) => tenants.push(t),
                Ok(_) => {}
                Err(e) => p.fail("TENANTS", e),
            }
        }
        let publisher_id = raw
            .publisher_id
            .filter(|s| !s.trim().is_empty())
            .and_then(|s| {
                TenantId::parse(&s)
                    .map_err(|e| p.fail("PUBLISHER_ID", e))
                    .ok()
            });

        let mut content_types = Vec::new();
        match raw.content_types.filter(|s| !s.trim().is_empty()) {
            None => content_types.extend(ContentType::ALL),
            Some(list) => {
                for c in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    match c.parse::<ContentType>() {
                        Ok(ct) if !content_types.contains(&ct) => content_types.push(ct),
                        Ok(_) => {}
                        Err(e) => p.fail("CONTENT_TYPES", e),
                    }
                }
                if content_types.is_empty() {
                    p.fail("CONTENT_TYPES", "lists no content type");
                }
            }
        }

        let cloud = p
            .text("CLOUD", raw.cloud, "enterprise")
            .to_ascii_lowercase();
        let (login_default, manage_default) = cloud_preset(&cloud).unwrap_or_else(|| {
            p.fail(
                "CLOUD",
                format!("'{cloud}' is not a cloud (expected enterprise, gcc, gcc-high or dod)"),
            );
            cloud_preset("enterprise").expect("enterprise preset")
        });
        let login = p.text("LOGIN_URL", raw.login_url, login_default);
        let login_url = p.base_url("LOGIN_URL", &login);
        let manage = p.text("MANAGE_URL", raw.manage_url, manage_default);
        let manage_url = p.base_url("MANAGE_URL", &manage);
        if let Ok(u) = Url::parse(&manage_url) {
            if u.path() != "/" && !u.path().is_empty() {
                p.fail(
                    "MANAGE_URL",
                    "must be an origin without a path (e.g. https://manage.office.com)",
                );
            }
        }

        let listen = p.text("LISTEN", raw.listen, "0.0.0.0:8080");
        let admin_listen = p.text("ADMIN_LISTEN", raw.admin_listen, "0.0.0.0:9090");
        for (var, addr) in [("LISTEN", &listen), ("ADMIN_LISTEN", &admin_listen)] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                p.fail(
                    var,
                    format!("'{addr}' is not an address:port (expected e.g. 0.0.0.0:8080)"),
                );
            }
        }

        let redis_url = p.text("REDIS_URL", raw.redis_url, "redis://127.0.0.1:6379");
        if !(redis_url.starts_with("redis://")
            || redis_url.starts_with("rediss://")
            || redis_url.starts_with("unix://"))
        {
            p.fail(
                "REDIS_URL",
                "must start with redis://, rediss:// or unix://",
            );
        }
        let redis_prefix = p.text("REDIS_PREFIX", raw.redis_prefix, "o365relay:");
        let amqp_url = p.text(
            "AMQP_URL",
            raw.amqp_url,
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        );
        if !(amqp_url.starts_with("amqp://") || amqp_url.starts_with("amqps://")) {
            p.fail("AMQP_URL", "must start with amqp:// or amqps://");
        }
        let amqp_exchange = p.text("AMQP_EXCHANGE", raw.amqp_exchange, "o365.audit");
        let amqp_work_queue = p.text("AMQP_WORK_QUEUE", raw.amqp_work_queue, "o365.content");
        for (var, name) in [
            ("AMQP_EXCHANGE", &amqp_exchange),
            ("AMQP_WORK_QUEUE", &amqp_work_queue),
        ] {
            if name.len() > 200 || name.starts_with("amq.") {
                p.fail(var, "must be at most 200 bytes and must not start with 'amq.' (reserved by RabbitMQ)");
            }
        }
        let queue_type = p.text("AMQP_QUEUE_TYPE", raw.amqp_queue_type, "quorum");
        let amqp_queue_type = match queue_type.to_ascii_lowercase().as_str() {
            "quorum" => QueueType::Quorum,
            "classic" => QueueType::Classic,
            other => {
                p.fail(
                    "AMQP_QUEUE_TYPE",
                    format!("'{other}' is not a queue type (expected quorum or classic)"),
                );
                QueueType::Quorum
            }
        };
        let worker_concurrency: usize =
            p.number("WORKER_CONCURRENCY", raw.worker_concurrency, "16");
        if !(1..=1024).contains(&worker_concurrency) {
            p.fail("WORKER_CONCURRENCY", "must be between 1 and 1024");
        }
        let reconcile_interval = p.duration("RECONCILE_INTERVAL", raw.reconcile_interval, "15m");
        if reconcile_interval < Duration::from_secs(1) {
            p.fail("RECONCILE_INTERVAL", "must be at least 1s");
        }
        let reconcile_lookback = p.duration("RECONCILE_LOOKBACK", raw.reconcile_lookback, "24h");
        if reconcile_lookback > SEVEN_DAYS || reconcile_lookback < Duration::from_secs(60) {
            p.fail(
                "RECONCILE_LOOKBACK",
                "must be between 1m and 7d (Microsoft keeps content for 7 days)",
            );
        }
        let admin_token = raw.admin_token.filter(|s| !s.is_empty()).map(Secret::new);
        if admin_token.as_ref().is_some_and(|t| t.expose().len() < 16) {
            p.fail(
                "ADMIN_TOKEN",
                "is shorter than 16 characters; use a long random value",
            );
        }
        let log_format = match p
            .text("LOG_FORMAT", raw.log_format, "json")
            .to_ascii_lowercase()
            .as_str()
        {
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            other => {
                p.fail(
                    "LOG_FORMAT",
                    format!("'{other}' is not a log format (expected json or pretty)"),
                );
                LogFormat::Json
            }
        };
        let enable_webhook = p.boolean("ENABLE_WEBHOOK", raw.enable_webhook);
        let enable_workers = p.boolean("ENABLE_WORKERS", raw.enable_workers);
        let enable_reconciler = p.boolean("ENABLE_RECONCILER", raw.enable_reconciler);
        let enable_keeper = p.boolean("ENABLE_KEEPER", raw.enable_keeper);
        let max_attempts: u32 = p.number("MAX_ATTEMPTS", raw.max_attempts, "10");
        if !(1..=100).contains(&max_attempts) {
            p.fail("MAX_ATTEMPTS", "must be between 1 and 100");
        }
        let retry_base = p.duration("RETRY_BASE", raw.retry_base, "10s");
        let retry_max = p.duration("RETRY_MAX", raw.retry_max, "30m");
        if retry_base.is_zero() || retry_max < retry_base {
            p.fail(
                "RETRY_BASE",
                "must be above zero and not above O365_RETRY_MAX",
            );
        }
        let quota_per_minute: u32 = p.number("QUOTA_PER_MINUTE", raw.quota_per_minute, "2000");
        if quota_per_minute == 0 {
            p.fail("QUOTA_PER_MINUTE", "must be above zero");
        }
        let http_timeout = p.duration("HTTP_TIMEOUT", raw.http_timeout, "60s");
        let shutdown_timeout = p.duration("SHUTDOWN_TIMEOUT", raw.shutdown_timeout, "30s");
        let record_dedup_ttl = p.duration("RECORD_DEDUP_TTL", raw.record_dedup_ttl, "24h");
        let keeper_interval = p.duration("KEEPER_INTERVAL", raw.keeper_interval, "5m");
        if keeper_interval < Duration::from_secs(1) {
            p.fail("KEEPER_INTERVAL", "must be at least 1s");
        }
        let fetch_timeout = p.duration("FETCH_TIMEOUT", raw.fetch_timeout, "5m");
        if !(Duration::from_secs(1)..=Duration::from_secs(6 * 3600)).contains(&fetch_timeout) {
            p.fail("FETCH_TIMEOUT", "must be between 1s and 6h");
        }
        let webhook_body_timeout =
            p.duration("WEBHOOK_BODY_TIMEOUT", raw.webhook_body_timeout, "10s");
        if !(Duration::from_millis(100)..=Duration::from_secs(120)).contains(&webhook_body_timeout)
        {
            p.fail("WEBHOOK_BODY_TIMEOUT", "must be between 100ms and 2m");
        }
        if shutdown_timeout > Duration::from_secs(3600) {
            p.fail("SHUTDOWN_TIMEOUT", "must be at most 1h");
        }

        if !p.errors.is_empty() {
            return Err(ConfigErrors(p.errors));
        }
        Ok(Settings {
            client_id: client_id.to_ascii_lowercase(),
            credential: credential.expect("checked above"),
            client_secret: secret,
            webhook_auth_id: Secret::new(auth_id),
            public_url,
            tenants,
            publisher_id,
            content_types,
            cloud,
            login_url,
            manage_url,
            listen,
            admin_listen,
            redis_url: Secret::new(redis_url),
            redis_prefix,
            amqp_url: Secret::new(amqp_url),
            amqp_exchange,
            amqp_work_queue,
            amqp_queue_type,
            worker_concurrency,
            reconcile_interval,
            reconcile_lookback,
            admin_token,
            log_format,
            enable_webhook,
            enable_workers,
            enable_reconciler,
            enable_keeper,
            max_attempts,
            retry_base,
            retry_max,
            quota_per_minute,
            http_timeout,
            shutdown_timeout,
            record_dedup_ttl,
            keeper_interval,
            fetch_timeout,
            webhook_body_timeout,
        })
    }

    /// `serve` needs the public URL: it is the webhook address given to Microsoft.
    pub fn require_public_url(&self) -> Result<&Url, ConfigErrors> {
        self.public_url.as_ref().ok_or_else(|| {
            ConfigErrors(vec![
                "O365_PUBLIC_URL: is required for serve (the external https base URL behind the ingress, e.g. https://relay.example.com)".into(),
            ])
        })
    }

    /// `{O365_PUBLIC_URL}/webhook`.
    pub fn webhook_address(&self) -> Option<String> {
        self.public_url
            .as_ref()
            .map(|u| format!("{}/webhook", u.as_str().trim_end_matches('/')))
    }

    /// `{O365_PUBLIC_URL}/consent/callback`.
    pub fn consent_redirect_uri(&self) -> Option<String> {
        self.public_url
            .as_ref()
            .map(|u| format!("{}/consent/callback", u.as_str().trim_end_matches('/')))
    }

    /// The `PublisherIdentifier` for calls about `tenant` (Office 365 Management Activity API
    /// reference: the `PublisherIdentifier` parameter of every operation).
    pub fn publisher_for<'a>(&'a self, tenant: &'a TenantId) -> &'a TenantId {
        self.publisher_id.as_ref().unwrap_or(tenant)
    }

    /// Whether `O365_PUBLIC_URL` is plain http, which Microsoft refuses for webhooks (AF20021).
    pub fn public_url_is_insecure(&self) -> bool {
        self.public_url
            .as_ref()
            .is_some_and(|u| u.scheme() != "https")
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

#[cfg(test)]
mod tests {
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
        assert_eq!(s.redis_prefix, "o365relay:");
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
    fn secrets_do_not_show_in_debug_output() {
        let mut v = base();
        v.push(("O365_ADMIN_TOKEN", "admin-token-0123456789".into()));
        v.push((
            "O365_AMQP_URL",
            "amqp://user:amqp-password@rabbit:5672/%2f".into(),
        ));
        let s = Settings::from_vars(v).unwrap();
        let dbg = format!("{s:?}");
        for secret in [
            "s3cret-value-for-tests",
            "0123456789abcdef0123",
            "admin-token-0123456789",
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
}
