//! RabbitMQ: the one owner of lapin. Keeps one connection (rebuilt after any failure, with the
//! topology declared again on each new connection), and publishes batches with publisher
//! confirms and the mandatory flag, so an unroutable message is an error, never a silent drop.
//!
//! **Endpoints.** `O365_AMQP_URL` may name several nodes of one cluster. A connection is made
//! to the first that answers, trying them in turn from the one after the node connected to (or
//! failed) last — so after its node dies the relay moves to a live one, as other clients' host
//! lists do. Each connection carries the client property `connection_name` (which process, and
//! what for), so `rabbitmqctl list_connections client_properties` shows where each replica is.
//! When a node dies, lapin fails every confirm outstanding on its connection: the submissions
//! fail (never counted as published) and their callers publish them again after the reconnect
//! (at-least-once); the work-queue consumer consumes again on the new connection.
//!
//! **Every return fails the publish that caused it.** RabbitMQ reports an unroutable mandatory
//! message with a `basic.return` sent before the message's ack, in publish order; lapin hands
//! the oldest waiting return to whichever confirm of the channel it resolves next. With several
//! tasks publishing on one channel, a record's return was reported on a webhook enqueue or a
//! retry of another task (and the record counted as published: lost). Rather than a channel per
//! publish (measured: RabbitMQ then cannot confirm many messages at once, and ingest fell by a
//! third), the publishers share one confirm channel and a [`Ledger`]:
//!
//! - a submission's messages are published contiguously (a publish lock) and get a sequence
//!   number in that order;
//! - each task awaits its own confirms; a confirm that carries a return marks *every*
//!   unanswered submission with a message of the returned routing key as unroutable;
//! - a submission is answered only after its confirms resolved and every earlier submission was
//!   answered.
//!
//! A return pops no later than the last ack of the messages published up to its own (each
//! return precedes its own ack, and each ack pops one), so it pops while its owner is still
//! unanswered — and fails it. A neighbour with the same routing key may fail with it and is
//! retried: a duplicate, never a loss. A nack is paired by delivery tag and fails its own
//! submission; a channel error or a confirm timeout fails the submissions on that channel and a
//! new channel is opened.
//!
//! **Frames.** The whole content header (properties and headers table) must fit in one frame
//! (`frame_max`, 128 KiB by default) or RabbitMQ closes the *connection*. Header values are
//! therefore capped ([`MAX_HEADER_VALUE`], with [`crate::text::TRUNCATION_MARKER`]), and AMQP short strings
//! (message ids, names) are never built from unchecked data ([`short_string`]).

use crate::config::{AmqpEndpoint, ClientIdentity, PemFile};
use crate::secret::Secret;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use lapin::{Confirmation, PublisherConfirm};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);

/// The longest header value the relay writes, in bytes. Far below `frame_max` even with every
/// header at its cap.
pub const MAX_HEADER_VALUE: usize = 1024;
/// AMQP short strings (message id, routing key, names) hold at most 255 bytes.
pub const SHORT_STRING_MAX: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("RabbitMQ is unreachable: {0}")]
    Unavailable(String),
    #[error("RabbitMQ refused the message: {0}")]
    Nacked(String),
    #[error("RabbitMQ could not route the message (no queue bound for '{0}')")]
    Unroutable(String),
    #[error("RabbitMQ operation failed: {0}")]
    Amqp(String),
}

impl From<lapin::Error> for BrokerError {
    fn from(e: lapin::Error) -> Self {
        BrokerError::Amqp(e.to_string())
    }
}

/// A queue the relay declares, with its arguments.
#[derive(Clone, Debug)]
pub struct QueueSpec {
    pub name: String,
    pub arguments: FieldTable,
}

/// What is declared on every new connection: the audit exchange and the relay's queues.
#[derive(Clone, Debug)]
pub struct Topology {
    pub exchange: String,
    pub queues: Vec<QueueSpec>,
}

/// The files of an amqps:// connection, read at start by the configuration.
#[derive(Clone, Debug)]
struct TlsFiles {
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

struct Live {
    generation: u64,
    connection: Arc<Connection>,
}

/// One node the broker may connect to.
struct Endpoint {
    /// The URL as lapin takes it (with `heartbeat=10` unless the operator set one).
    url: Secret<String>,
    /// `host:port`, for logs and `o365-relay check`.
    address: String,
}

/// A connection made by [`Broker::connect`], and the endpoint that answered (`host:port`).
pub struct Connected {
    pub connection: Connection,
    pub endpoint: String,
}

pub struct Broker {
    /// `O365_AMQP_URL`: one URL, or the nodes of one cluster, tried in turn.
    endpoints: Vec<Endpoint>,
    /// Where the next connection attempt starts: the endpoint after the one connected to last
    /// (or after the last that failed), so a reconnect moves on to another node instead of
    /// knocking on the one that just went away — as other clients' host lists do.
    next_endpoint: AtomicUsize,
    /// The endpoint of the shared connection (`host:port`), while connected.
    connected_to: Mutex<Option<String>>,
    /// The client property `connection_name`: which process, and what it does, as RabbitMQ's
    /// connection list shows it (`rabbitmqctl list_connections client_properties`).
    connection_name: String,
    /// With amqps://: the private CA and client certificate, if any ([`Broker::with_tls`]).
    tls: Option<TlsFiles>,
    topology: Topology,
    live: tokio::sync::Mutex<Option<Live>>,
    generation: AtomicU64,
    topology_declared: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// When the last connection attempt failed: for a second after it, callers get an
    /// immediate error instead of each waiting on a connect of their own (a webhook request
    /// must answer 503 fast during an outage, not queue behind reconnects).
    failed_at: Mutex<Option<std::time::Instant>>,
    connections_opened: prometheus::IntCounter,
    /// The one shared confirm channel: one channel lets RabbitMQ confirm many messages at once
    /// (measured: four channels, or a channel per batch, cost a fifth to a third of ingest).
    publisher: tokio::sync::Mutex<Option<Arc<Publisher>>>,
}

impl Broker {
    /// `endpoints` are `O365_AMQP_URL`'s, in order; `connection_name` names every connection
    /// this broker opens; `connections_opened` counts every connection made (a rise after the
    /// first means the connection was lost or closed by RabbitMQ).
    pub fn new(
        endpoints: &[AmqpEndpoint],
        connection_name: impl Into<String>,
        topology: Topology,
        connections_opened: prometheus::IntCounter,
    ) -> Broker {
        let endpoints = endpoints
            .iter()
            .map(|e| {
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
            })
            .collect();
        Broker {
            endpoints,
            next_endpoint: AtomicUsize::new(0),
            connected_to: Mutex::new(None),
            connection_name: connection_name.into(),
            tls: None,
            topology,
            live: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            topology_declared: AtomicBool::new(false),
            last_error: Mutex::new(None),
            failed_at: Mutex::new(None),
            connections_opened,
            publisher: tokio::sync::Mutex::new(None),
        }
    }

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

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Whether the topology was declared on some connection (for `/readyz`).
    pub fn topology_declared(&self) -> bool {
        self.topology_declared.load(Ordering::SeqCst)
    }

    /// Connects (declaring the topology) unless connected: `/readyz` and start-up use it.
    pub async fn ensure_connected(&self) -> Result<(), BrokerError> {
        self.connection().await.map(|_| ())
    }

    /// Messages ready in `queue`.
    pub async fn queue_depth(&self, queue: &str) -> Result<u32, BrokerError> {
        let ch = self.channel().await?;
        let q = ch
            .queue_declare(
                short_string(queue),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        let _ = ch.close(200, "ok".into()).await;
        Ok(q?.message_count())
    }

    /// Publishes messages and waits until RabbitMQ confirmed every one. Any nack, unroutable
    /// return or channel failure fails the whole submission (callers retry it whole:
    /// at-least-once).
    pub async fn publish_batch(&self, messages: Vec<OutMessage>) -> Result<(), BrokerError> {
        if messages.is_empty() {
            return Ok(());
        }
        let publisher = self.publisher().await?;
        // Start every publish of the submission in one synchronous step under the order lock:
        // a lapin publish takes its delivery tag and queues its frames on its first poll, so the
        // submission's messages are contiguous on the channel and in ledger order — without
        // holding a lock while lapin's I/O thread writes them (that serialised every publisher).
        let mut publishing: Vec<PublishFuture<'_>> = messages
            .iter()
            .map(|m| Box::pin(publish_one(&publisher.channel, m)) as PublishFuture<'_>)
            .collect();
        let mut published: Vec<Option<Result<PublisherConfirm, BrokerError>>> =
            publishing.iter().map(|_| None).collect();
        let mut opened = None;
        std::future::poll_fn(|cx| {
            let _order = publisher.order.lock().expect("poisoned");
            opened = Some(publisher.ledger.open(&messages));
            for (f, out) in publishing.iter_mut().zip(published.iter_mut()) {
                if let std::task::Poll::Ready(r) = f.as_mut().poll(cx) {
                    *out = Some(r);
                }
            }
            std::task::Poll::Ready(())
        })
        .await;
        let (seq, answer) = opened.expect("opened in the first poll");
        let slot = Slot {
            ledger: &publisher.ledger,
            seq,
            answer: Some(answer),
            answered: false,
        };
        // One deadline for the whole submission, publishes and confirms: a broker that stops
        // answering (a node that hangs rather than dies) fails the submission after
        // CONFIRM_TIMEOUT, not after CONFIRM_TIMEOUT per message.
        let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
        let mut broken = false;
        let mut refused = false;
        let mut confirms = Vec::with_capacity(messages.len());
        for (f, out) in publishing.iter_mut().zip(published) {
            let r = match out {
                Some(r) => r,
                None => tokio::time::timeout_at(deadline, f.as_mut())
                    .await
                    .unwrap_or_else(|_| {
                        broken = true;
                        Err(BrokerError::Unavailable("publish timed out".into()))
                    }),
            };
            match r {
                Ok(c) => confirms.push(c),
                Err(e) => publisher.ledger.fail(seq, e.to_string()),
            }
        }
        drop(publishing);
        // Every confirm is awaited: on a lost connection or channel lapin resolves each
        // outstanding one with an error, so the submission fails as a whole and its caller
        // publishes it again (at-least-once); none is taken for a success.
        for c in confirms {
            match tokio::time::timeout_at(deadline, c).await {
                Ok(Ok(Confirmation::Ack(None))) => {}
                Ok(Ok(Confirmation::Ack(Some(r)))) => {
                    publisher.ledger.returned(&r.delivery.routing_key)
                }
                Ok(Ok(Confirmation::Nack(r))) => {
                    refused = true;
                    if let Some(r) = r {
                        publisher.ledger.returned(&r.delivery.routing_key);
                    }
                    publisher.ledger.nacked(seq);
                }
                Ok(Ok(Confirmation::NotRequested)) => {
                    broken = true;
                    publisher
                        .ledger
                        .fail(seq, "channel is not in confirm mode".into());
                }
                Ok(Err(e)) => {
                    broken = true;
                    publisher.ledger.fail(seq, e.to_string());
                }
                Err(_) => {
                    broken = true;
                    publisher
                        .ledger
                        .fail(seq, "publisher confirm timed out".into());
                }
            }
        }
        if broken {
            // The pairing of returns on this channel is unknowable from here on.
            self.retire(&publisher).await;
        } else if refused {
            // A channel keeps a view of each quorum queue it publishes to. Opened on a node
            // while the queue's leader was being elected elsewhere (its node had just died),
            // that view can stay stale, and the channel then nacked every publish to that
            // queue — seen on a 3-node cluster: the work queue refused the webhook's blobs for
            // 90 s while records flowed on the same channel. A new channel looks the queue up
            // afresh; the old one closes when its last submission is answered.
            self.set_aside(&publisher).await;
        }
        slot.answer().await
    }

    /// Stops handing out `p` to new submissions (the next opens a new channel on the same
    /// connection); `p` closes itself when the submissions holding it are done.
    async fn set_aside(&self, p: &Arc<Publisher>) {
        let mut current = self.publisher.lock().await;
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, p)) {
            *current = None;
        }
    }

    /// The shared confirm channel, opened (with a fresh ledger) when there is none.
    async fn publisher(&self) -> Result<Arc<Publisher>, BrokerError> {
        let mut current = self.publisher.lock().await;
        if let Some(p) = current.as_ref() {
            if p.channel.status().connected() {
                return Ok(p.clone());
            }
        }
        let (channel, generation) = self.confirm_channel().await?;
        let p = Arc::new(Publisher {
            channel,
            generation,
            order: Mutex::new(()),
            ledger: Ledger::default(),
        });
        *current = Some(p.clone());
        Ok(p)
    }

    async fn retire(&self, p: &Arc<Publisher>) {
        self.set_aside(p).await;
        let _ = p.channel.close(200, "confirm failed".into()).await;
        self.invalidate(p.generation).await;
    }

    /// Closes the connection cleanly (shutdown).
    pub async fn close(&self) {
        if let Some(l) = self.live.lock().await.take() {
            let _ = l.connection.close(200, "shutdown".into()).await;
        }
    }
}

/// The shared confirm channel and its ledger.
struct Publisher {
    channel: Channel,
    generation: u64,
    /// Held while one submission's publishes are started, so they are contiguous.
    order: Mutex<()>,
    ledger: Ledger,
}

type PublishFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<PublisherConfirm, BrokerError>> + Send + 'a>,
>;

/// A submission's place in the ledger. A caller that goes away before the answer (a webhook
/// client that hung up, a task aborted at shutdown) gives its place up on drop, so the
/// submissions after it are not held for ever; it was never told "published", so nothing is
/// lost (Microsoft retries, RabbitMQ redelivers).
struct Slot<'a> {
    ledger: &'a Ledger,
    seq: u64,
    answer: Option<tokio::sync::oneshot::Receiver<Result<(), BrokerError>>>,
    answered: bool,
}

impl Slot<'_> {
    async fn answer(mut self) -> Result<(), BrokerError> {
        self.ledger.confirmed(self.seq);
        let rx = self.answer.take().expect("answered once");
        let r = rx
            .await
            .unwrap_or_else(|_| Err(BrokerError::Unavailable("publisher closed".into())));
        self.answered = true;
        r
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.ledger.abandon(self.seq);
        }
    }
}

/// The submissions published on one channel and not yet answered, in publish order.
#[derive(Default)]
struct Ledger {
    state: Mutex<LedgerState>,
}

#[derive(Default)]
struct LedgerState {
    next: u64,
    open: std::collections::BTreeMap<u64, Entry>,
}

struct Entry {
    /// The routing keys of its messages (distinct).
    keys: Vec<ShortString>,
    failed: Option<BrokerError>,
    /// Every confirm of the submission resolved.
    confirmed: bool,
    answer: Option<tokio::sync::oneshot::Sender<Result<(), BrokerError>>>,
}

impl Ledger {
    /// Registers a submission about to be published: its sequence number and where its answer
    /// will arrive.
    fn open(
        &self,
        messages: &[OutMessage],
    ) -> (u64, tokio::sync::oneshot::Receiver<Result<(), BrokerError>>) {
        let mut keys: Vec<ShortString> = Vec::new();
        for m in messages {
            if !keys.contains(&m.routing_key) {
                keys.push(m.routing_key.clone());
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut st = self.state.lock().expect("poisoned");
        let seq = st.next;
        st.next += 1;
        st.open.insert(
            seq,
            Entry {
                keys,
                failed: None,
                confirmed: false,
                answer: Some(tx),
            },
        );
        (seq, rx)
    }

    fn with_entry(&self, seq: u64, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.state.lock().expect("poisoned").open.get_mut(&seq) {
            f(e);
        }
    }

    fn fail(&self, seq: u64, why: String) {
        self.with_entry(seq, |e| {
            e.failed.get_or_insert(BrokerError::Amqp(why));
        });
    }

    fn nacked(&self, seq: u64) {
        self.with_entry(seq, |e| {
            e.failed.get_or_insert(BrokerError::Nacked(
                "RabbitMQ refused to take the message".into(),
            ));
        });
    }

    /// A return popped: every unanswered submission with a message of that key fails.
    fn returned(&self, key: &ShortString) {
        let mut st = self.state.lock().expect("poisoned");
        for e in st.open.values_mut().filter(|e| e.keys.contains(key)) {
            e.failed
                .get_or_insert_with(|| BrokerError::Unroutable(key.to_string()));
        }
    }

    /// Every confirm of `seq` resolved: answer, in order, every submission at the head whose
    /// confirms all resolved.
    fn confirmed(&self, seq: u64) {
        let mut st = self.state.lock().expect("poisoned");
        if let Some(e) = st.open.get_mut(&seq) {
            e.confirmed = true;
        }
        Self::answer_head(&mut st);
    }

    /// The caller went away: forget its submission (and unblock the ones after it).
    fn abandon(&self, seq: u64) {
        let mut st = self.state.lock().expect("poisoned");
        st.open.remove(&seq);
        Self::answer_head(&mut st);
    }

    fn answer_head(st: &mut LedgerState) {
        while let Some(mut first) = st.open.first_entry() {
            if !first.get().confirmed {
                break;
            }
            let e = first.get_mut();
            if let Some(tx) = e.answer.take() {
                let _ = tx.send(match e.failed.take() {
                    Some(err) => Err(err),
                    None => Ok(()),
                });
            }
            first.remove();
        }
    }
}

impl Broker {
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
    fn noted(&self, e: BrokerError) -> BrokerError {
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

    /// A fresh channel on the shared connection (consumers own theirs).
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        self.channel_and_generation().await.map(|(ch, _)| ch)
    }

    async fn channel_and_generation(&self) -> Result<(Channel, u64), BrokerError> {
        let (connection, generation) = self.connection().await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| self.noted(e.into()))?;
        Ok((channel, generation))
    }

    /// Forgets the connection of `generation` after an error, so the next call reconnects.
    async fn invalidate(&self, generation: u64) {
        let mut live = self.live.lock().await;
        if live.as_ref().is_some_and(|l| l.generation == generation) {
            if let Some(l) = live.take() {
                *self.connected_to.lock().expect("poisoned") = None;
                let _ = l.connection.close(320, "reconnecting".into()).await;
            }
        }
    }

    async fn declare_on(&self, ch: &Channel) -> Result<(), BrokerError> {
        declare_exchange(ch, &self.topology.exchange).await?;
        for q in &self.topology.queues {
            ch.queue_declare(
                q.name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                q.arguments.clone(),
            )
            .await?;
        }
        self.topology_declared.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// A new confirm-mode channel on the shared connection, and the connection's generation.
    async fn confirm_channel(&self) -> Result<(Channel, u64), BrokerError> {
        let (channel, generation) = self.channel_and_generation().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| self.noted(e.into()))?;
        Ok((channel, generation))
    }
}

/// What an endpoint's failure says, without the "RabbitMQ is unreachable" each one starts with.
fn unavailable_reason(e: &BrokerError) -> String {
    match e {
        BrokerError::Unavailable(why) => why.clone(),
        other => other.to_string(),
    }
}

/// Declares the audit exchange exactly as the relay does (a durable topic exchange). Whatever
/// binds before the relay starts — consumers, the demo, tests — must declare it identically, or
/// RabbitMQ refuses the second declaration (PRECONDITION_FAILED).
pub async fn declare_exchange(ch: &Channel, exchange: &str) -> Result<(), BrokerError> {
    ch.exchange_declare(
        short_string(exchange),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// Declares `queue` and binds it to every record of `exchange` (`#`), declaring the exchange
/// first: a consumer that exists before the relay publishes (records are published mandatory).
pub async fn bind_all_records(
    ch: &Channel,
    exchange: &str,
    queue: &str,
    options: QueueDeclareOptions,
    arguments: FieldTable,
) -> Result<(), BrokerError> {
    declare_exchange(ch, exchange).await?;
    ch.queue_declare(short_string(queue), options, arguments)
        .await?;
    ch.queue_bind(
        short_string(queue),
        short_string(exchange),
        "#".into(),
        lapin::options::QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// A message to publish. Names are short strings built with [`short_string`].
pub struct OutMessage {
    pub exchange: ShortString,
    pub routing_key: ShortString,
    pub body: bytes::Bytes,
    pub properties: BasicProperties,
}

/// Publishes with the mandatory flag; returns the pending confirm.
async fn publish_one(ch: &Channel, m: &OutMessage) -> Result<PublisherConfirm, BrokerError> {
    ch.basic_publish(
        m.exchange.clone(),
        m.routing_key.clone(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        &m.body,
        m.properties.clone(),
    )
    .await
    .map_err(|e| BrokerError::Amqp(e.to_string()))
}

/// An AMQP short string that cannot panic: text of more than 255 bytes becomes
/// `sha256:<64 hex digits>` of the text. Callers with a documented derivation of their own
/// (record ids) apply it first; this is the last line of defence.
pub fn short_string(s: &str) -> ShortString {
    if s.len() <= SHORT_STRING_MAX {
        ShortString::from(s)
    } else {
        ShortString::from(sha256_id(s.as_bytes()))
    }
}

/// `sha256:` and the lower-case hex SHA-256 of `bytes` (71 bytes).
pub fn sha256_id(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let digest = openssl::sha::sha256(bytes);
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Persistent JSON message properties shared by every message the relay sends.
pub fn json_properties(message_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(short_string(message_id))
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
        .with_app_id("o365-relay".into())
}

/// Adds a string header, capped at `cap` bytes (never above [`MAX_HEADER_VALUE`]).
pub fn header(table: &mut FieldTable, key: &'static str, value: &str, cap: usize) {
    let v = crate::text::capped(value, cap.min(MAX_HEADER_VALUE));
    table.insert(
        ShortString::from(key),
        AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())),
    );
}

/// Reads a string header.
pub fn header_str(props: &BasicProperties, key: &str) -> Option<String> {
    let h = props.headers().as_ref()?;
    match h.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        AMQPValue::LongLongInt(i) => Some(i.to_string()),
        AMQPValue::LongInt(i) => Some(i.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_never_exceed_255_bytes() {
        let long = "x".repeat(300);
        let s = short_string(&long);
        assert_eq!(s.as_str().len(), 71);
        assert!(s.as_str().starts_with("sha256:"));
        assert_eq!(short_string("abc").as_str(), "abc");
        assert_eq!(short_string(&long), short_string(&long));
    }
}
