//! The connection: one shared connection to one node of `O365_AMQP_URL`, rebuilt after any
//! failure (with the topology declared again on each new one), and the channels opened on it.
//!
//! A connection is made to the first endpoint that answers, trying them in turn from the one
//! after the node connected to (or failed) last — so after its node dies the relay moves to a
//! live one, as other clients' host lists do. Each connection carries the client property
//! `connection_name`, so `rabbitmqctl list_connections client_properties` shows where each
//! replica is. With amqps://, the broker's certificate is always verified, against the system
//! CA store and `O365_AMQP_CA_PATH`; `O365_AMQP_CLIENT_CERT_PATH` is presented when asked.

use super::{Broker, BrokerError};
use crate::config::{AmqpEndpoint, ClientIdentity, PemFile};
use crate::domain::secret::Secret;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Channel, Connection, ConnectionProperties};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The files of an amqps:// connection, read at start by the configuration.
#[derive(Clone, Debug)]
pub(super) struct TlsFiles {
    ca: Option<PemFile>,
    client: Option<ClientIdentity>,
}

impl TlsFiles {
    /// lapin's (rustls) configuration: extra trusted roots and a PEM identity.
    fn lapin_config(&self) -> OwnedTLSConfig {
        OwnedTLSConfig {
            identity: self.client.as_ref().map(|c| OwnedIdentity::PKCS8 {
                pem: c.cert.pem.clone(),
                key: c.key_pem.expose().clone(),
            }),
            cert_chain: self
                .ca
                .as_ref()
                .map(|ca| String::from_utf8_lossy(&ca.pem).into_owned()),
        }
    }
}

/// The shared connection and its generation (a new one per connection made).
pub(super) struct Live {
    generation: u64,
    connection: Arc<Connection>,
}

/// One node the broker may connect to.
pub(super) struct Endpoint {
    /// The URL as lapin takes it (with `heartbeat=10` unless the operator set one).
    url: Secret<String>,
    /// `host:port`, for logs and `o365-relay check`.
    address: String,
}

impl Endpoint {
    pub(super) fn new(e: &AmqpEndpoint) -> Endpoint {
        let mut url = e.url.expose().clone();
        if !url.contains("heartbeat=") {
            url.push_str(if url.contains('?') {
                "&heartbeat=10"
            } else {
                "?heartbeat=10"
            });
        }
        Endpoint {
            url: Secret::new(url),
            address: e.address.clone(),
        }
    }
}

/// A connection made by [`Broker::connect`], and the endpoint that answered (`host:port`).
pub struct Connected {
    connection: Connection,
    pub endpoint: String,
}

impl Connected {
    /// Closes the connection cleanly.
    pub async fn close(self, why: &str) {
        let _ = self.connection.close(200, why.into()).await;
    }
}

/// Whether RabbitMQ answers at `url` (one connection, closed at once): the demo's preflight.
/// The error is lapin's, which may quote the URL — callers show their own redacted text.
pub async fn probe(url: &str) -> Result<(), String> {
    let c = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| e.to_string())?;
    let _ = c.close(200, "preflight".into()).await;
    Ok(())
}

impl Broker {
    /// With amqps://, trusts `ca` (`O365_AMQP_CA_PATH`) in addition to the system's CA store
    /// and presents `client` (`O365_AMQP_CLIENT_CERT_PATH` / `O365_AMQP_CLIENT_KEY_PATH`) when
    /// the broker asks for a certificate. The broker's certificate is always verified.
    /// docs/OPERATIONS.md, "Managed Redis and RabbitMQ (TLS)".
    pub fn with_tls(mut self, ca: Option<&PemFile>, client: Option<&ClientIdentity>) -> Broker {
        // The configuration refuses a list that mixes amqp:// and amqps://.
        if self
            .endpoints
            .iter()
            .any(|e| e.url.expose().starts_with("amqps://"))
        {
            self.tls = Some(TlsFiles {
                ca: ca.cloned(),
                client: client.cloned(),
            });
        }
        self
    }

    /// `None` for plain AMQP; with amqps://, what the broker's certificate is checked against
    /// and the client certificate presented (`CA /path`, `system CA store`, `client certificate
    /// /path`), for `o365-relay check`.
    pub fn tls(&self) -> Option<String> {
        let tls = self.tls.as_ref()?;
        let mut parts = vec![match &tls.ca {
            Some(ca) => format!("CA {} and the system CA store", ca.path.display()),
            None => "system CA store".to_string(),
        }];
        if let Some(c) = &tls.client {
            parts.push(format!("client certificate {}", c.cert.path.display()));
        }
        Some(parts.join(", "))
    }

    /// Connects and declares the topology at start-up, retrying with backoff (200 ms doubling to
    /// 10 s) until RabbitMQ answers or `stop`; true once declared.
    pub async fn declare_until_ready(&self, stop: &tokio_util::sync::CancellationToken) -> bool {
        let mut delay = Duration::from_millis(200);
        while !stop.is_cancelled() {
            match self.ensure_connected().await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot declare the RabbitMQ topology yet; retrying.");
                    tokio::select! { _ = stop.cancelled() => return false, _ = tokio::time::sleep(delay) => {} }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        false
    }

    /// Connects (declaring the topology) unless connected: `/readyz` and start-up use it.
    pub async fn ensure_connected(&self) -> Result<(), BrokerError> {
        self.connection().await.map(|_| ())
    }

    /// Opens a new connection, not shared with anything else: tries the endpoints in turn,
    /// starting after the one connected to (or failed) last, each bounded in time; the first
    /// that answers wins. With one endpoint its error is the error; with several, every
    /// endpoint's is listed (`host:port: why`).
    pub async fn connect(&self) -> Result<Connected, BrokerError> {
        let n = self.endpoints.len();
        if n == 0 {
            return Err(self.failed(BrokerError::Unavailable(
                "no RabbitMQ endpoint is configured (O365_AMQP_URL)".into(),
            )));
        }
        let start = self.next_endpoint.load(Ordering::SeqCst) % n;
        let mut errors = Vec::with_capacity(n);
        for i in (0..n).map(|k| (start + k) % n) {
            let endpoint = &self.endpoints[i];
            match self.connect_to(endpoint).await {
                Ok(connection) => {
                    self.next_endpoint.store((i + 1) % n, Ordering::SeqCst);
                    return Ok(Connected {
                        connection,
                        endpoint: endpoint.address.clone(),
                    });
                }
                Err(e) => {
                    if n > 1 {
                        tracing::warn!(endpoint = %endpoint.address, error = %e, "A RabbitMQ endpoint did not answer.");
                    }
                    errors.push((endpoint.address.as_str(), e));
                }
            }
        }
        let e = if n == 1 {
            errors
                .pop()
                .map(|(_, e)| e)
                .expect("one endpoint was tried")
        } else {
            BrokerError::Unavailable(format!(
                "no RabbitMQ endpoint answered: {}",
                errors
                    .iter()
                    .map(|(address, e)| format!("{address}: {}", unavailable_reason(e)))
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        };
        Err(self.failed(e))
    }

    /// One attempt at one endpoint, bounded by [`CONNECT_TIMEOUT`].
    async fn connect_to(&self, endpoint: &Endpoint) -> Result<Connection, BrokerError> {
        let runtime = lapin::runtime::default_runtime()
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let tls = self
            .tls
            .as_ref()
            .map(TlsFiles::lapin_config)
            .unwrap_or_default();
        let properties = ConnectionProperties::default()
            .with_connection_name(self.connection_name.as_str().into());
        match tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect_with_config(endpoint.url.expose(), properties, tls, runtime),
        )
        .await
        {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(self.connect_error(e.to_string())),
            Err(_) => Err(BrokerError::Unavailable(
                "connection attempt timed out".into(),
            )),
        }
    }

    /// A connection failure as an operator reads it: a failed TLS handshake names the variables
    /// to look at.
    fn connect_error(&self, e: String) -> BrokerError {
        match self.tls() {
            Some(trust) if crate::config::is_tls_failure(&e) => BrokerError::Unavailable(format!(
                "TLS handshake with RabbitMQ failed: {e} (verified against: {trust}; check O365_AMQP_CA_PATH, O365_AMQP_CLIENT_CERT_PATH / O365_AMQP_CLIENT_KEY_PATH, and that the host name in O365_AMQP_URL is one the certificate names)"
            )),
            _ => BrokerError::Unavailable(e),
        }
    }

    /// A connection attempt failed: remembered for `/readyz`, and callers fail fast for a
    /// second instead of each trying again.
    fn failed(&self, e: BrokerError) -> BrokerError {
        *self.failed_at.lock().expect("poisoned") = Some(std::time::Instant::now());
        self.noted(e)
    }

    /// An operation on the shared connection failed (a channel could not be opened: usually
    /// the connection just died): remembered for `/readyz`, but it holds back no reconnect.
    /// Counting it as a failed attempt kept the relay off a live node for a second after its
    /// node died (measured on a 3-node cluster: 1.1 s of the 1.5 s recovery).
    pub(super) fn noted(&self, e: BrokerError) -> BrokerError {
        *self.last_error.lock().expect("poisoned") = Some(e.to_string());
        e
    }

    /// The endpoint (`host:port`) of the shared connection, while there is one.
    pub fn endpoint(&self) -> Option<String> {
        self.connected_to.lock().expect("poisoned").clone()
    }

    /// The last failure, for `/readyz`.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("poisoned").clone()
    }

    /// The shared connection, reconnecting (and declaring the topology) when it is gone.
    async fn connection(&self) -> Result<(Arc<Connection>, u64), BrokerError> {
        let mut live = self.live.lock().await;
        if let Some(l) = live.as_ref() {
            if l.connection.status().connected() {
                return Ok((l.connection.clone(), l.generation));
            }
            let endpoint = self.endpoint().unwrap_or_default();
            tracing::warn!(%endpoint, "RabbitMQ connection lost; reconnecting.");
        }
        *live = None;
        *self.connected_to.lock().expect("poisoned") = None;
        let recently_failed = self
            .failed_at
            .lock()
            .expect("poisoned")
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
        if recently_failed {
            return Err(BrokerError::Unavailable(
                self.last_error().unwrap_or_else(|| "reconnecting".into()),
            ));
        }
        let Connected {
            connection,
            endpoint,
        } = self.connect().await?;
        let connection = Arc::new(connection);
        self.connections_opened.inc();
        let ch = connection
            .create_channel()
            .await
            .map_err(|e| self.failed(e.into()))?;
        self.declare_on(&ch).await.map_err(|e| self.failed(e))?;
        let _ = ch.close(200, "declared".into()).await;
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        if generation > 1 {
            tracing::info!(%endpoint, "RabbitMQ connection re-established.");
        } else {
            tracing::info!(%endpoint, "Connected to RabbitMQ.");
        }
        *self.connected_to.lock().expect("poisoned") = Some(endpoint);
        *self.last_error.lock().expect("poisoned") = None;
        *self.failed_at.lock().expect("poisoned") = None;
        *live = Some(Live {
            generation,
            connection: connection.clone(),
        });
        Ok((connection, generation))
    }

    /// A fresh channel on the shared connection (consumers and rotations own theirs).
    pub(super) async fn channel(&self) -> Result<Channel, BrokerError> {
        self.channel_and_generation().await.map(|(ch, _)| ch)
    }

    /// A fresh channel, and the generation of the connection it was opened on.
    pub(super) async fn channel_and_generation(&self) -> Result<(Channel, u64), BrokerError> {
        let (connection, generation) = self.connection().await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| self.noted(e.into()))?;
        Ok((channel, generation))
    }

    /// Forgets the connection of `generation` after an error, so the next call reconnects.
    pub(super) async fn invalidate(&self, generation: u64) {
        let mut live = self.live.lock().await;
        if live.as_ref().is_some_and(|l| l.generation == generation) {
            if let Some(l) = live.take() {
                *self.connected_to.lock().expect("poisoned") = None;
                let _ = l.connection.close(320, "reconnecting".into()).await;
            }
        }
    }

    /// Closes the connection cleanly (shutdown).
    pub async fn close(&self) {
        if let Some(l) = self.live.lock().await.take() {
            let _ = l.connection.close(200, "shutdown".into()).await;
        }
    }
}

/// What an endpoint's failure says, without the "RabbitMQ is unreachable" each one starts with.
fn unavailable_reason(e: &BrokerError) -> String {
    match e {
        BrokerError::Unavailable(why) => why.clone(),
        other => other.to_string(),
    }
}
