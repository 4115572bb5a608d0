//! How the store reaches Redis (`O365_REDIS_MODE`): one server, a Redis Cluster, or the master
//! that Sentinel names. The rest of the store sees one connection type, [`Conn`], whatever the
//! topology.
//!
//! Why it is built so: docs/DESIGN.md, "store/topology".

use crate::config::{RedisMode, RedisSettings};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, Value,
};
use std::time::Duration;

/// Bounds of one connection attempt and one reply, in every mode: a dead node costs callers
/// a fast error, never a hang (the store then degrades; docs/DESIGN.md, "store").
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The cluster's slot of `key` (CRC16/XMODEM of the key or of its hash tag, mod 16384), as
/// Redis computes it (`CLUSTER KEYSLOT`).
pub(super) fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(tagged) % 16384
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// A connection to Redis in any mode. Cheap to clone (both kinds are multiplexed handles).
#[derive(Clone)]
pub(super) enum Conn {
    /// Standalone, or the master Sentinel named.
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A master of the cluster, as `CLUSTER NODES` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Node {
    pub host: String,
    pub port: u16,
}

impl Conn {
    /// Sends `cmd` to one node of the cluster (a `SCAN`, an `INFO`); elsewhere, to the server.
    pub(super) async fn on_node(&mut self, node: &Node, cmd: &Cmd) -> redis::RedisResult<Value> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                let to = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: node.host.clone(),
                    port: node.port,
                });
                c.route_command(cmd, to).await
            }
        }
    }
}

/// What `CLUSTER NODES` says: the masters that serve slots and are not failed, the replicas,
/// and the nodes marked failed. A failed master stays listed (`master,fail`) until it is
/// forgotten: whatever walks every master must skip it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct ClusterView {
    pub masters: Vec<Node>,
    pub replicas: usize,
    pub failed: usize,
    pub slots: u32,
}

pub(super) fn parse_cluster_nodes(text: &str) -> ClusterView {
    let mut view = ClusterView::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(addr), Some(flags)) = (f.get(1), f.get(2)) else {
            continue;
        };
        let flags: Vec<&str> = flags.split(',').collect();
        if flags.iter().any(|x| *x == "fail" || *x == "noaddr") {
            view.failed += 1;
            continue;
        }
        if flags.contains(&"slave") || flags.contains(&"replica") {
            view.replicas += 1;
            continue;
        }
        if !flags.contains(&"master") {
            continue;
        }
        // `host:port@bus-port[,hostname]`
        let hostport = addr.split(['@', ',']).next().unwrap_or("");
        let Some((host, port)) = hostport.rsplit_once(':') else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        let slots: u32 = f
            .iter()
            .skip(8)
            .filter(|s| !s.starts_with('['))
            .map(|range| match range.split_once('-') {
                Some((a, b)) => match (a.parse::<u32>(), b.parse::<u32>()) {
                    (Ok(a), Ok(b)) if b >= a => b - a + 1,
                    _ => 0,
                },
                None => u32::from(range.parse::<u32>().is_ok()),
            })
            .sum();
        if slots == 0 {
            continue;
        }
        view.slots += slots;
        view.masters.push(Node {
            host: host.to_string(),
            port,
        });
    }
    view
}

/// The client side of one topology; [`Target::connect`] makes a [`Conn`].
pub(super) enum Target {
    Standalone(redis::Client),
    Cluster(ClusterClient),
    Sentinel(Sentinels),
}

impl Target {
    pub(super) fn new(settings: &RedisSettings) -> Result<Target, String> {
        let certs = || {
            settings.ca.as_ref().map(|ca| redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.pem.clone()),
            })
        };
        let unusable_ca = |e: redis::RedisError| match &settings.ca {
            Some(ca) => format!(
                "the CA in O365_REDIS_CA_PATH ({}) is unusable: {e}",
                ca.path.display()
            ),
            None => format!("bad URL: {e}"),
        };
        let urls: Vec<&str> = settings.urls.iter().map(|u| u.expose().as_str()).collect();
        match &settings.mode {
            RedisMode::Standalone => {
                let url = urls.first().copied().unwrap_or_default();
                let client = match certs() {
                    Some(c) if settings.is_tls() => redis::Client::build_with_tls(url, c),
                    _ => redis::Client::open(url),
                };
                client.map(Target::Standalone).map_err(unusable_ca)
            }
            RedisMode::Cluster => {
                let mut b = ClusterClient::builder(urls)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    // A master's failover takes a few seconds (the replica is promoted after
                    // `cluster-node-timeout`); a call retries for about as long, then fails
                    // and the store degrades until the cluster is whole again.
                    .retries(4)
                    .min_retry_wait(100)
                    .max_retry_wait(1000);
                if let Some(c) = certs() {
                    b = b.certs(c);
                }
                b.build().map(Target::Cluster).map_err(unusable_ca)
            }
            RedisMode::Sentinel { master } => {
                let sentinels = urls
                    .iter()
                    .map(|u| u.into_connection_info())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("bad URL: {e}"))?;
                Ok(Target::Sentinel(Sentinels {
                    sentinels,
                    master: master.clone(),
                    ca: settings.ca.as_ref().map(|ca| ca.pem.clone()),
                    next: std::sync::atomic::AtomicUsize::new(0),
                }))
            }
        }
    }

    /// A new connection; for Sentinel, to the master the sentinels name now.
    pub(super) async fn connect(&self) -> Result<Conn, String> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_number_of_retries(1)
            .set_max_delay(500);
        match self {
            Target::Standalone(client) => {
                ConnectionManager::new_with_config(client.clone(), config)
                    .await
                    .map(Conn::Single)
                    .map_err(|e| e.to_string())
            }
            Target::Cluster(client) => client
                .get_async_connection()
                .await
                .map(Conn::Cluster)
                .map_err(|e| e.to_string()),
            Target::Sentinel(s) => {
                let client = s.master().await?;
                ConnectionManager::new_with_config(client, config)
                    .await
                    .map(Conn::Single)
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// The standalone server's client, for a plain connection attempt that tells why TLS fails.
    pub(super) fn standalone(&self) -> Option<&redis::Client> {
        match self {
            Target::Standalone(c) => Some(c),
            _ => None,
        }
    }
}

/// Why a sentinel did not answer.
enum Refused {
    /// It refused the credentials.
    Auth(String),
    Other(String),
}

/// The sentinels of one master.
pub(super) struct Sentinels {
    sentinels: Vec<ConnectionInfo>,
    master: String,
    ca: Option<Vec<u8>>,
    /// The sentinel asked first next time: the one after the last that failed to answer.
    next: std::sync::atomic::AtomicUsize,
}

impl Sentinels {
    /// The master's client: the first sentinel that answers names it, and the server confirms
    /// it is a master.
    async fn master(&self) -> Result<redis::Client, String> {
        use std::sync::atomic::Ordering;
        let n = self.sentinels.len();
        let start = self.next.load(Ordering::Relaxed);
        let mut why = Vec::new();
        for i in 0..n {
            let k = (start + i) % n;
            let sentinel = &self.sentinels[k];
            match self.ask(sentinel).await {
                Ok(client) => return Ok(client),
                Err(e) => {
                    self.next.store((k + 1) % n, Ordering::Relaxed);
                    why.push(format!("sentinel {}: {e}", sentinel.addr));
                }
            }
        }
        Err(format!(
            "no sentinel named a reachable master '{}' ({})",
            self.master,
            why.join("; ")
        ))
    }

    async fn ask(&self, sentinel: &ConnectionInfo) -> Result<redis::Client, String> {
        let reply = match self.master_addr(sentinel.clone()).await {
            // A sentinel without a password refuses the master's credentials (WRONGPASS for a
            // user it does not know, "without any password configured" for a bare password).
            Err(Refused::Auth(_)) => {
                let mut bare = sentinel.clone();
                bare.redis.username = None;
                bare.redis.password = None;
                self.master_addr(bare).await
            }
            other => other,
        }
        .map_err(|e| match e {
            Refused::Auth(e) | Refused::Other(e) => e,
        })?;
        let (host, port) = reply.ok_or_else(|| format!("does not know '{}'", self.master))?;
        let addr = match &sentinel.addr {
            ConnectionAddr::TcpTls { .. } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        let info = ConnectionInfo {
            addr,
            redis: sentinel.redis.clone(),
        };
        let client = self.client(info)?;
        let mut c = tokio::time::timeout(
            CONNECT_TIMEOUT + RESPONSE_TIMEOUT,
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| "the master it names did not answer in time".to_string())?
        .map_err(|e| format!("the master it names is unreachable: {e}"))?;
        let role: Vec<Value> =
            tokio::time::timeout(RESPONSE_TIMEOUT, redis::cmd("ROLE").query_async(&mut c))
                .await
                .map_err(|_| "ROLE timed out".to_string())?
                .map_err(|e| format!("ROLE failed: {e}"))?;
        match role.first() {
            Some(Value::BulkString(r)) if r == b"master" => Ok(client),
            Some(Value::SimpleString(r)) if r == "master" => Ok(client),
            _ => Err("names a server that is not (or no longer) a master".into()),
        }
    }

    /// `SENTINEL get-master-addr-by-name`: `None` when the sentinel does not monitor it.
    async fn master_addr(
        &self,
        sentinel: ConnectionInfo,
    ) -> Result<Option<(String, u16)>, Refused> {
        let client = self.client(sentinel).map_err(Refused::Other)?;
        let ask = async {
            let mut c = client.get_multiplexed_async_connection().await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&self.master)
                .query_async::<Option<(String, u16)>>(&mut c)
                .await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT + RESPONSE_TIMEOUT, ask).await {
            Err(_) => Err(Refused::Other("did not answer in time".into())),
            Ok(Err(e))
                if e.kind() == redis::ErrorKind::AuthenticationFailed
                    || e.to_string().contains("without any password configured") =>
            {
                Err(Refused::Auth(e.to_string()))
            }
            Ok(r) => r.map_err(|e| Refused::Other(e.to_string())),
        }
    }

    fn client(&self, info: ConnectionInfo) -> Result<redis::Client, String> {
        let tls = matches!(info.addr, ConnectionAddr::TcpTls { .. });
        match &self.ca {
            Some(ca) if tls => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            _ => redis::Client::open(info),
        }
        .map_err(|e| e.to_string())
    }

    /// The master's name, for messages.
    pub(super) fn master_name(&self) -> &str {
        &self.master
    }

    /// How many sentinels are configured.
    pub(super) fn count(&self) -> usize {
        self.sentinels.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_the_ones_redis_computes() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"), "an empty tag is no tag");
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
        assert_eq!(
            slot(b"o365relay:token:{0b5e4b6c-33f4-4f53-8a44-2f5a8d0e9c11}"),
            slot(b"o365relay:quota:{0b5e4b6c-33f4-4f53-8a44-2f5a8d0e9c11}:calendar")
        );
    }

    #[test]
    fn cluster_nodes_lists_the_masters_that_serve_and_skips_failed_ones() {
        let text = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,host-a slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383 [16384->-abc]
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:30005@31005 slave 67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 0 1426238316232 5 connected
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master,fail - 0 0 1 connected
824fe116063bc5fcf9f4ffd895bc17aee7731ac3 127.0.0.1:30006@31006 master - 0 1426238317741 6 connected 0-5460
";
        let view = parse_cluster_nodes(text);
        assert_eq!(
            view.masters,
            vec![
                Node {
                    host: "127.0.0.1".into(),
                    port: 30002
                },
                Node {
                    host: "127.0.0.1".into(),
                    port: 30003
                },
                Node {
                    host: "127.0.0.1".into(),
                    port: 30006
                },
            ]
        );
        assert_eq!((view.replicas, view.failed, view.slots), (2, 1, 16384));
        // Hostile or cut lines are skipped, never a panic.
        let odd =
            parse_cluster_nodes("x\n y z\nid :@ master - 0 0 1 connected 9-1\nid h:99999 master");
        assert_eq!(odd, ClusterView::default());
    }
}
