//! The TLS servers these tests start and stop themselves: a `redis-server` listening only on a
//! TLS port, with an ACL user, and `stunnel` putting a TLS listener in front of the local
//! RabbitMQ (127.0.0.1:5672). Both use the test's private PKI ([`test_support::Pki`]) and are
//! killed when dropped. `.ci/tls-setup` installs stunnel.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use test_support::{free_port, Pki};

/// The ACL user the TLS Redis knows (its `default` user is switched off).
pub const REDIS_USER: &str = "relay";
pub const REDIS_PASSWORD: &str = "tls-test-password-7c1e";

/// A child process killed (and reaped) on drop, with its log file for failure messages.
struct Server {
    child: Child,
    log: PathBuf,
    what: &'static str,
}

impl Server {
    fn spawn(what: &'static str, cmd: &mut Command, log: PathBuf) -> Server {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {what} ({e}); run `bash .ci/tls-setup` to install it")
            });
        Server { child, log, what }
    }

    /// Waits until `port` accepts connections; panics with the server's log if it never does.
    fn wait_listening(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited at start ({status}):\n{}",
                    self.what,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{} does not listen on {port}:\n{}",
            self.what,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `redis-server --port 0 --tls-port <free>`: TLS only, the server certificate of `pki`, no
/// client certificate asked for, the ACL user [`REDIS_USER`] and no usable `default` user.
pub struct TlsRedis {
    _server: Server,
    pub port: u16,
}

impl TlsRedis {
    pub fn start(pki: &Pki) -> TlsRedis {
        let port = free_port();
        let log = pki.dir.join("redis.log");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", "0", "--bind", "127.0.0.1"])
            .args(["--tls-port", &port.to_string()])
            .args(["--tls-cert-file", &pki.server_cert])
            .args(["--tls-key-file", &pki.server_key])
            .args(["--tls-ca-cert-file", &pki.ca])
            .args(["--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &pki.dir.display().to_string()])
            .args(["--logfile", &log.display().to_string()])
            .args(["--user", "default", "off"])
            .args(["--user", REDIS_USER, "on"])
            .arg(format!(">{REDIS_PASSWORD}"))
            .args(["~*", "&*", "+@all"]);
        let mut server = Server::spawn("redis-server", &mut cmd, log);
        server.wait_listening(port);
        TlsRedis {
            _server: server,
            port,
        }
    }

    /// `rediss://relay:…@127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!(
            "rediss://{REDIS_USER}:{REDIS_PASSWORD}@127.0.0.1:{}",
            self.port
        )
    }
}

/// `stunnel` accepting TLS on a free port and forwarding to RabbitMQ at 127.0.0.1:5672, with
/// the server certificate of `pki`; with `require_client_cert`, it refuses a client without a
/// certificate signed by the test CA (`verifyChain = yes`, which implies `requireCert`).
pub struct TlsRabbit {
    _server: Server,
    pub port: u16,
}

impl TlsRabbit {
    pub fn start(pki: &Pki, require_client_cert: bool) -> TlsRabbit {
        let port = free_port();
        let name = if require_client_cert { "mtls" } else { "tls" };
        let log = pki.dir.join(format!("stunnel-{name}.log"));
        let conf = pki.dir.join(format!("stunnel-{name}.conf"));
        let verify = if require_client_cert {
            format!("CAfile = {}\nverifyChain = yes\n", pki.ca)
        } else {
            String::new()
        };
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\noutput = {log}\ndebug = 5\n\n[amqps]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:5672\ncert = {cert}\nkey = {key}\n{verify}",
                log = log.display(),
                cert = pki.server_cert,
                key = pki.server_key,
            ),
        )
        .expect("write the stunnel configuration");
        let mut server = Server::spawn("stunnel", Command::new(stunnel()).arg(&conf), log);
        server.wait_listening(port);
        TlsRabbit {
            _server: server,
            port,
        }
    }

    /// `amqps://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn url(&self) -> String {
        format!("amqps://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

/// Debian installs stunnel4 as `stunnel` (and `stunnel4`).
fn stunnel() -> &'static str {
    if Path::new("/usr/bin/stunnel").exists() || which("stunnel") {
        "stunnel"
    } else {
        "stunnel4"
    }
}

fn which(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

/// The TLS and ACL arguments every TLS Redis node of these tests shares.
fn tls_node_args(cmd: &mut Command, pki: &Pki, port: u16, dir: &Path, log: &Path) {
    cmd.args(["--port", "0", "--bind", "127.0.0.1"])
        .args(["--tls-port", &port.to_string()])
        .args(["--tls-cert-file", &pki.server_cert])
        .args(["--tls-key-file", &pki.server_key])
        .args(["--tls-ca-cert-file", &pki.ca])
        // The cluster bus and replication are TLS connections from node to node: the nodes
        // present the client certificate (the server's has no clientAuth usage).
        .args(["--tls-client-cert-file", &pki.client_cert])
        .args(["--tls-client-key-file", &pki.client_key])
        .args(["--tls-auth-clients", "no"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--dir", &dir.display().to_string()])
        .args(["--logfile", &log.display().to_string()])
        .args(["--user", "default", "off"])
        .args(["--user", REDIS_USER, "on"])
        .arg(format!(">{REDIS_PASSWORD}"))
        .args(["~*", "&*", "+@all"]);
}

/// `redis-cli` over TLS as the ACL user, for setting up the topologies.
fn tls_cli(pki: &Pki, port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["--tls", "--cacert", &pki.ca, "-h", "127.0.0.1"])
        .args(["-p", &port.to_string()])
        .args([
            "--user",
            REDIS_USER,
            "--pass",
            REDIS_PASSWORD,
            "--no-auth-warning",
        ])
        .args(args)
        .output()
        .expect("redis-cli runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A Redis Cluster of three masters (no replicas) on TLS only, its bus on TLS too, with the
/// ACL user [`REDIS_USER`] and no usable `default` user: what a managed cluster-mode offering
/// with in-transit encryption and RBAC looks like.
pub struct TlsRedisCluster {
    _nodes: Vec<Server>,
    pub ports: Vec<u16>,
}

impl TlsRedisCluster {
    pub fn start(pki: &Pki) -> TlsRedisCluster {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for port in &ports {
            let dir = pki.dir.join(format!("cluster-{port}"));
            std::fs::create_dir_all(&dir).expect("node dir");
            let log = dir.join("redis.log");
            let mut cmd = Command::new("redis-server");
            tls_node_args(&mut cmd, pki, *port, &dir, &log);
            cmd.args(["--cluster-enabled", "yes", "--tls-cluster", "yes"])
                .args([
                    "--cluster-config-file",
                    &dir.join("nodes.conf").display().to_string(),
                ])
                .args(["--cluster-node-timeout", "2000"]);
            let mut node = Server::spawn("redis-server (TLS cluster node)", &mut cmd, log);
            node.wait_listening(*port);
            nodes.push(node);
        }
        let mut create = vec!["--cluster", "create"];
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        create.extend(addrs.iter().map(String::as_str));
        create.push("--cluster-yes");
        let out = tls_cli(pki, ports[0], &create);
        assert!(
            out.contains("All 16384 slots covered"),
            "cluster create:\n{out}"
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ports
            .iter()
            .all(|p| tls_cli(pki, *p, &["cluster", "info"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "the TLS cluster never became ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        TlsRedisCluster {
            _nodes: nodes,
            ports,
        }
    }

    /// Every node as a seed, `rediss://relay:…@127.0.0.1:<port>`, comma-separated.
    pub fn seed_urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("rediss://{REDIS_USER}:{REDIS_PASSWORD}@127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A TLS master with the ACL user, and one sentinel watching it over TLS. The sentinel itself
/// has no password (a common set-up): the relay's credentials are for the master.
pub struct TlsSentinel {
    _nodes: Vec<Server>,
    pub sentinel_port: u16,
    pub master_name: String,
}

impl TlsSentinel {
    pub fn start(pki: &Pki) -> TlsSentinel {
        let master_port = free_port();
        let sentinel_port = free_port();
        let master_name = format!("relay-{master_port}");
        let dir = pki.dir.join(format!("sentinel-{master_port}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let log = dir.join("master.log");
        let mut cmd = Command::new("redis-server");
        tls_node_args(&mut cmd, pki, master_port, &dir, &log);
        let mut master = Server::spawn("redis-server (TLS master)", &mut cmd, log);
        master.wait_listening(master_port);
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port 0\nbind 127.0.0.1\ntls-port {sentinel_port}\ntls-cert-file {cert}\ntls-key-file {key}\ntls-ca-cert-file {ca}\ntls-auth-clients no\ntls-replication yes\ndir {dir}\nlogfile {log}\nsentinel monitor {master_name} 127.0.0.1 {master_port} 1\nsentinel auth-user {master_name} {REDIS_USER}\nsentinel auth-pass {master_name} {REDIS_PASSWORD}\n",
                cert = pki.server_cert,
                key = pki.server_key,
                ca = pki.ca,
                dir = dir.display(),
                log = dir.join("sentinel.log").display(),
            ),
        )
        .expect("write sentinel.conf");
        let mut sentinel = Server::spawn(
            "redis-server --sentinel (TLS)",
            Command::new("redis-server").arg(&conf).arg("--sentinel"),
            dir.join("sentinel.log"),
        );
        sentinel.wait_listening(sentinel_port);
        TlsSentinel {
            _nodes: vec![master, sentinel],
            sentinel_port,
            master_name,
        }
    }

    /// The sentinel, with the credentials the relay also uses for the master.
    pub fn url(&self) -> String {
        format!(
            "rediss://{REDIS_USER}:{REDIS_PASSWORD}@127.0.0.1:{}",
            self.sentinel_port
        )
    }
}
