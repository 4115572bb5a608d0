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
