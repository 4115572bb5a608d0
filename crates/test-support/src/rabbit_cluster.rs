//! A RabbitMQ cluster of three nodes of its own, for the tests of the relay on a cluster.
//!
//! It runs beside the machine's broker and never touches it (`rabbit@localhost` on 5672 is never
//! stopped, joined or reset, and its Erlang cookie is not read or changed), as
//! `shared/reference/library-notes.md` ("Clusters on this machine") describes:
//!
//! - one directory per cluster under the temporary directory, one sub-directory per node with
//!   its own `rabbitmq.conf` (`listeners.tcp.local = 127.0.0.1:{port}`, `loopback_users = none`),
//!   an empty plugin list, and the node's database, logs and pid file;
//! - node names unique to the run (`o365t{id}n{N}@localhost`: `RABBITMQ_NODENAME` must be set,
//!   or `/etc/rabbitmq/rabbitmq-env.conf` makes a node the machine's broker), free ports for
//!   AMQP and Erlang distribution;
//! - an Erlang cookie of its own in a `HOME` of its own, shared by the three nodes and every
//!   `rabbitmqctl` call made here;
//! - the nodes run as the `rabbitmq` user when the tests run as root (as the Debian service
//!   does), else as the tests' user; `/usr/lib/rabbitmq/bin/rabbitmq-server -detached` (not the
//!   Debian wrapper, which writes the machine broker's startup log);
//! - the three boot in parallel (about 20 s each on two cores); nodes 2 and 3 then join node 1
//!   (`stop_app`, `join_cluster`, `start_app`).
//!
//! A test kills a node with SIGKILL ([`RabbitCluster::kill`]), starts it again
//! ([`RabbitCluster::restart`], it rejoins by itself), and finds on which node a named connection
//! is ([`RabbitCluster::node_of_connection`]). Dropping the cluster kills its nodes and removes
//! its directory (`RABBIT_CLUSTER_KEEP=1`, or a panic, keeps the files: node logs under
//! `n{N}/log`); a cluster left behind by a test process that was itself killed is removed by
//! the next [`RabbitCluster::start`].

use crate::services::free_port;
use std::collections::HashSet;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
/// Directories of clusters start with this (and the id of the run).
const DIR_PREFIX: &str = "o365-rabbit-cluster-";
/// How long a node may take to boot: about 20 s alone, more while other nodes and builds share
/// the two cores.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// The nodes of a cluster.
pub const NODES: usize = 3;

/// A running three-node cluster; killed and removed on drop.
pub struct RabbitCluster {
    inner: Arc<Inner>,
}

/// Who runs the nodes and the CLI.
#[derive(Clone, Copy, Debug)]
struct RunAs {
    /// `(uid, gid)` to switch to (the `rabbitmq` user) when running as root.
    ids: Option<(u32, u32)>,
}

struct Node {
    /// `o365t{id}n{N}@localhost`.
    name: String,
    amqp_port: u16,
    dist_port: u16,
    dir: PathBuf,
}

struct Inner {
    dir: PathBuf,
    home: PathBuf,
    run_as: RunAs,
    nodes: Vec<Node>,
    /// The operating-system process of each node while it runs (read from its pid file).
    pids: Mutex<Vec<Option<u32>>>,
}

impl RabbitCluster {
    /// Boots a fresh cluster of [`NODES`] nodes and waits until all of them run and are
    /// clustered; `Err` says which step failed (and where the node logs are).
    pub async fn start() -> Result<RabbitCluster, String> {
        let inner = tokio::task::spawn_blocking(Inner::boot)
            .await
            .map_err(|e| format!("the cluster boot panicked: {e}"))??;
        Ok(RabbitCluster {
            inner: Arc::new(inner),
        })
    }

    /// The AMQP URLs of the nodes, comma-separated (`O365_AMQP_URL` for the relay).
    pub fn urls(&self) -> String {
        (1..=NODES)
            .map(|n| self.url(n))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The AMQP URL of node `n` (1-based), guest account, default vhost.
    pub fn url(&self, n: usize) -> String {
        crate::services::amqp_url(&self.address(n))
    }

    /// `127.0.0.1:{port}` of node `n`'s AMQP listener.
    pub fn address(&self, n: usize) -> String {
        format!("127.0.0.1:{}", self.inner.node(n).amqp_port)
    }

    /// The Erlang node name of node `n` (`o365t…n2@localhost`).
    pub fn node_name(&self, n: usize) -> &str {
        &self.inner.node(n).name
    }

    /// Where the cluster keeps its files (node logs under `n{N}/log`).
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Whether node `n` runs (as far as this cluster knows: it was not killed since).
    pub fn is_running(&self, n: usize) -> bool {
        self.inner.pid(n).is_some_and(alive)
    }

    /// SIGKILLs node `n`: no clean shutdown, its connections drop at once. Returns when the
    /// process is gone.
    pub fn kill(&self, n: usize) {
        self.inner.kill(n);
    }

    /// Starts node `n` again after [`RabbitCluster::kill`] (same name, ports and data: it
    /// rejoins the cluster by itself) and waits until it runs.
    pub async fn restart(&self, n: usize) -> Result<(), String> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.start_node(n).and_then(|()| inner.await_node(n)))
            .await
            .map_err(|e| format!("the restart panicked: {e}"))?
    }

    /// The nodes (1-based) holding a client connection whose `connection_name` contains
    /// `name`, asked of a running node (`rabbitmqctl list_connections` lists the whole
    /// cluster's connections; the node is told by the listener port it was accepted on).
    pub async fn node_of_connection(&self, name: &str) -> Result<Vec<usize>, String> {
        Ok(self.nodes_of_connections(&[name]).await?.remove(0))
    }

    /// [`RabbitCluster::node_of_connection`] for several names with one `rabbitmqctl` call
    /// (each call boots an Erlang VM: a second or two of CPU).
    pub async fn nodes_of_connections(&self, names: &[&str]) -> Result<Vec<Vec<usize>>, String> {
        let out = self
            .ctl(&[
                "list_connections",
                "--no-table-headers",
                "--silent",
                "port",
                "client_properties",
            ])
            .await?;
        Ok(names
            .iter()
            .map(|name| {
                out.lines()
                    .filter(|l| l.contains(name))
                    .filter_map(|line| {
                        let port = line.split_whitespace().next()?.parse::<u16>().ok()?;
                        (1..=NODES).find(|&n| self.inner.node(n).amqp_port == port)
                    })
                    .collect()
            })
            .collect())
    }

    /// The members (Erlang node names) of every quorum queue, by queue name, asked of a
    /// running node with one `rabbitmqctl list_queues`.
    pub async fn quorum_members(
        &self,
    ) -> Result<std::collections::HashMap<String, Vec<String>>, String> {
        let out = self
            .ctl(&[
                "list_queues",
                "--formatter",
                "json",
                "--silent",
                "name",
                "type",
                "members",
            ])
            .await?;
        let rows: Vec<serde_json::Value> = serde_json::from_str(out.trim())
            .map_err(|e| format!("list_queues answered no JSON ({e}): {out}"))?;
        Ok(rows
            .iter()
            .filter(|r| r["type"] == "quorum")
            .filter_map(|r| {
                let members = r["members"]
                    .as_array()?
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect();
                Some((r["name"].as_str()?.to_string(), members))
            })
            .collect())
    }

    /// `rabbitmqctl -n {a running node} args…` with the cluster's cookie: its standard output,
    /// or why it failed.
    pub async fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let inner = self.inner.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let n = (1..=NODES)
                .find(|&n| inner.pid(n).is_some_and(alive))
                .ok_or("no node of the cluster runs")?;
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            inner.ctl(n, &args)
        })
        .await
        .map_err(|e| format!("rabbitmqctl panicked: {e}"))?
    }
}

impl Inner {
    fn boot() -> Result<Inner, String> {
        sweep_orphans();
        let id = crate::unique();
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{id}"));
        let run_as = RunAs::detect()?;
        let home = dir.join("home");
        let mut ports = HashSet::new();
        while ports.len() < 2 * NODES {
            ports.insert(free_port());
        }
        let mut ports = ports.into_iter();
        let mut port = || ports.next().expect("enough ports");
        let nodes: Vec<Node> = (1..=NODES)
            .map(|n| Node {
                name: format!("o365t{id}n{n}@localhost"),
                amqp_port: port(),
                dist_port: port(),
                dir: dir.join(format!("n{n}")),
            })
            .collect();
        let inner = Inner {
            dir,
            home,
            run_as,
            nodes,
            pids: Mutex::new(vec![None; NODES]),
        };
        inner.write_files()?;
        // From here on, a failure drops `inner`, which kills what started and removes the
        // directory.
        for n in 1..=NODES {
            inner.start_node(n)?;
        }
        std::thread::scope(|s| {
            let waits: Vec<_> = (1..=NODES)
                .map(|n| {
                    let inner = &inner;
                    s.spawn(move || inner.await_node(n))
                })
                .collect();
            waits
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or_else(|_| Err("a boot wait panicked".into()))
                })
                .collect::<Result<Vec<()>, String>>()
        })?;
        let first = inner.node(1).name.clone();
        for n in 2..=NODES {
            inner.ctl(n, &["stop_app"])?;
            inner.ctl(n, &["join_cluster", &first])?;
            inner.ctl(n, &["start_app"])?;
        }
        Ok(inner)
    }

    fn node(&self, n: usize) -> &Node {
        assert!((1..=NODES).contains(&n), "nodes are numbered 1 to {NODES}");
        &self.nodes[n - 1]
    }

    fn pid(&self, n: usize) -> Option<u32> {
        self.pids.lock().unwrap_or_else(|e| e.into_inner())[n - 1]
    }

    fn set_pid(&self, n: usize, pid: Option<u32>) {
        self.pids.lock().unwrap_or_else(|e| e.into_inner())[n - 1] = pid;
    }

    /// The cookie, the configuration of every node, and an owner file (which process the
    /// cluster belongs to, for [`sweep_orphans`]); all owned by whoever runs the nodes.
    fn write_files(&self) -> Result<(), String> {
        let io = |what: &str, e: std::io::Error| format!("cannot write {what}: {e}");
        std::fs::create_dir_all(&self.home).map_err(|e| io("the cluster directory", e))?;
        std::fs::write(self.dir.join("owner"), std::process::id().to_string())
            .map_err(|e| io("the owner file", e))?;
        let cookie = self.home.join(".erlang.cookie");
        let value: String = uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .to_uppercase()
            .chars()
            .filter(char::is_ascii_alphabetic)
            .chain("COOKIE".chars())
            .collect();
        std::fs::write(&cookie, value).map_err(|e| io("the Erlang cookie", e))?;
        let mut written = vec![self.dir.clone(), self.home.clone(), cookie.clone()];
        for node in &self.nodes {
            std::fs::create_dir_all(&node.dir).map_err(|e| io("a node directory", e))?;
            let conf = node.dir.join("rabbitmq.conf");
            std::fs::write(
                &conf,
                format!(
                    "listeners.tcp.local = 127.0.0.1:{}\nloopback_users = none\n",
                    node.amqp_port
                ),
            )
            .map_err(|e| io("rabbitmq.conf", e))?;
            let plugins = node.dir.join("enabled_plugins");
            std::fs::write(&plugins, "[].\n").map_err(|e| io("enabled_plugins", e))?;
            written.extend([node.dir.clone(), conf, plugins]);
        }
        if let Some((uid, gid)) = self.run_as.ids {
            for path in &written {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .map_err(|e| format!("cannot hand {} to rabbitmq: {e}", path.display()))?;
            }
        }
        // Erlang refuses a cookie that others can read.
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400))
            .map_err(|e| io("the cookie's mode", e))
    }

    /// A command as the nodes' user, with the cluster's `HOME` (its cookie) and nothing of the
    /// caller's environment but `PATH`, run in that `HOME`: Erlang reads its working directory
    /// at start, and the caller's (a CI clone under `mktemp -d`, mode 0700 and root's) is not
    /// readable by the `rabbitmq` user — `rabbitmqctl` then fails with `eacces`.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.home)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as.ids {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// `rabbitmq-server -detached` for node `n` (returns at once; [`Inner::await_node`] waits).
    fn start_node(&self, n: usize) -> Result<(), String> {
        let node = self.node(n);
        let d = &node.dir;
        let out = self
            .command(SERVER)
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .output()
            .map_err(|e| format!("cannot run {SERVER}: {e} (is rabbitmq-server installed?)"))?;
        if !out.status.success() {
            return Err(format!(
                "{SERVER} -detached for {} failed: {}",
                node.name,
                text(&out)
            ));
        }
        Ok(())
    }

    /// Waits until node `n` accepts AMQP connections (no CLI call while it boots: each costs
    /// an Erlang VM), then `await_startup`, then reads its pid file.
    fn await_node(&self, n: usize) -> Result<(), String> {
        let node = self.node(n);
        let addr: SocketAddr = ([127, 0, 0, 1], node.amqp_port).into();
        let deadline = Instant::now() + BOOT_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not listen on {addr} within {BOOT_TIMEOUT:?}; logs in {}",
                    node.name,
                    node.dir.join("log").display()
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        self.ctl(n, &["await_startup", "--timeout", "120"])?;
        let pid = std::fs::read_to_string(node.dir.join("pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .ok_or_else(|| format!("{} runs but wrote no pid file", node.name))?;
        self.set_pid(n, Some(pid));
        Ok(())
    }

    fn kill(&self, n: usize) {
        let Some(pid) = self.pid(n) else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.set_pid(n, None);
    }

    /// `rabbitmqctl -n {node n} args…`: its standard output, or why it failed.
    fn ctl(&self, n: usize, args: &[&str]) -> Result<String, String> {
        let node = self.node(n);
        let out: Output = self
            .command(CTL)
            .args(["-n", &node.name])
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {CTL}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "rabbitmqctl -n {} {} failed: {}",
                node.name,
                args.join(" "),
                text(&out)
            ))
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for n in 1..=NODES {
            self.kill(n);
        }
        if std::thread::panicking() || std::env::var_os("RABBIT_CLUSTER_KEEP").is_some() {
            // The node logs say why; the nodes are gone, so this is only files.
            eprintln!("RabbitMQ cluster files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl RunAs {
    /// The `rabbitmq` user when running as root (`id -u rabbitmq`), else the current user.
    fn detect() -> Result<RunAs, String> {
        if effective_uid() != Some(0) {
            return Ok(RunAs { ids: None });
        }
        let id = |flag: &str| -> Result<u32, String> {
            let out = Command::new("id")
                .args([flag, "rabbitmq"])
                .output()
                .map_err(|e| format!("cannot run id: {e}"))?;
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .map_err(|_| {
                    "running as root, but there is no rabbitmq user to run the nodes as".to_string()
                })
        };
        Ok(RunAs {
            ids: Some((id("-u")?, id("-g")?)),
        })
    }
}

/// The effective user id of this process (`/proc/self/status`, no `libc`).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Whether process `pid` exists (and is not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// What a failed command printed, both streams.
fn text(out: &Output) -> String {
    format!(
        "{} {}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
    .trim()
    .to_string()
}

/// Removes the clusters of test processes that no longer exist (a test killed before its drop
/// ran): their nodes — only processes whose command line names the cluster's node, so a pid
/// reused since is left alone — and their directories.
fn sweep_orphans() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix(DIR_PREFIX) else {
            continue;
        };
        let dir = entry.path();
        let owner = std::fs::read_to_string(dir.join("owner"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        if owner.is_none_or(alive) {
            continue;
        }
        for n in 1..=NODES {
            let pid = std::fs::read_to_string(dir.join(format!("n{n}/pid")))
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok());
            let Some(pid) = pid else { continue };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let node = format!("o365t{id}n{n}@localhost");
            if String::from_utf8_lossy(&cmdline).contains(&node) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_made_up_one_is_not() {
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX - 1));
        assert!(effective_uid().is_some());
    }

    /// Boots a cluster, checks it is one cluster of three, that a named connection is found on
    /// its node, that a quorum queue has a member on every node and keeps working when one is
    /// killed, and that a killed node comes back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cluster_of_three_boots_finds_connections_survives_a_kill_and_cleans_up() {
        let started = Instant::now();
        let cluster = RabbitCluster::start().await.expect("the cluster boots");
        println!(
            "cluster of {NODES} up in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let dir = cluster.dir().to_path_buf();
        let status = cluster
            .ctl(&["cluster_status", "--formatter", "json"])
            .await
            .unwrap();
        let status: serde_json::Value = serde_json::from_str(status.trim()).unwrap();
        let running = status["running_nodes"].as_array().unwrap();
        assert_eq!(running.len(), NODES, "{status}");
        assert!(
            !running.iter().any(|n| n == "rabbit@localhost"),
            "the machine's broker joined"
        );
        assert_eq!(cluster.urls().split(',').count(), NODES);

        // A named connection on node 2, found by its name.
        let name = format!("harness-self-test-{}", crate::unique());
        let props =
            lapin::ConnectionProperties::default().with_connection_name(name.clone().into());
        let conn = lapin::Connection::connect(&cluster.url(2), props)
            .await
            .unwrap();
        assert_eq!(cluster.node_of_connection(&name).await.unwrap(), [2]);

        // A quorum queue has a member on each node, and takes messages with one node dead.
        let ch = conn.create_channel().await.unwrap();
        let queue = format!("harness.{}", crate::unique());
        let mut args = lapin::types::FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
        ch.queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
        let mut members = cluster
            .quorum_members()
            .await
            .unwrap()
            .remove(&queue)
            .unwrap();
        members.sort();
        let mut all: Vec<String> = (1..=NODES)
            .map(|n| cluster.node_name(n).to_string())
            .collect();
        all.sort();
        assert_eq!(members, all);

        cluster.kill(3);
        assert!(!cluster.is_running(3));
        ch.confirm_select(Default::default()).await.unwrap();
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                Default::default(),
                b"survives",
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap();
        let confirmed = tokio::time::timeout(Duration::from_secs(30), confirm).await;
        assert!(
            matches!(confirmed, Ok(Ok(ref c)) if c.is_ack()),
            "a majority of two confirms: {confirmed:?}"
        );
        cluster.restart(3).await.expect("node 3 comes back");
        assert!(cluster.is_running(3));
        let _ = ch
            .queue_delete(queue.as_str().into(), Default::default())
            .await;
        let _ = conn.close(200, "bye".into()).await;

        drop(cluster);
        assert!(!dir.exists(), "the cluster's directory is removed");
    }
}
