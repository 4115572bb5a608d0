//! The example consumers (`examples/consumer-python`, `examples/consumer-rust`) as child
//! processes, and the scenarios both must pass against a running relay ([`Pipeline`]).
//!
//! What the harness relies on, which both consumers' READMEs describe: the command-line options
//! of [`ConsumerArgs`]; a line starting `ready` on standard error once the queue is declared,
//! bound and consumed; one JSON object per processed record on standard output (at least
//! `message_id` and `routing_key`); a line `duplicate <message_id>` on standard error for each
//! message skipped by the de-duplication; a last line `stopped: N records, D duplicates` on
//! standard error; exit status 0 on SIGTERM.

use crate::guard::ResourceGuard;
use crate::pipeline::Pipeline;
use crate::services::AMQP;
use crate::sink::{depth, message_id};
use lapin::options::BasicPublishOptions;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The options both consumers take.
#[derive(Clone, Debug)]
pub struct ConsumerArgs {
    pub amqp_url: String,
    pub exchange: String,
    pub queue: String,
    /// Binding keys (`--bind`, once each).
    pub bind: Vec<String>,
    /// `quorum`, `classic` or `stream`.
    pub queue_type: String,
    /// `--stream-offset` (stream queues only).
    pub stream_offset: Option<String>,
}

impl ConsumerArgs {
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--amqp-url".to_string(),
            self.amqp_url.clone(),
            "--exchange".into(),
            self.exchange.clone(),
            "--queue".into(),
            self.queue.clone(),
            "--queue-type".into(),
            self.queue_type.clone(),
        ];
        for key in &self.bind {
            args.push("--bind".into());
            args.push(key.clone());
        }
        if let Some(offset) = &self.stream_offset {
            args.push("--stream-offset".into());
            args.push(offset.clone());
        }
        args
    }
}

/// A running consumer; its output is read line by line as it comes. Killed on drop.
pub struct ConsumerProcess {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl ConsumerProcess {
    /// Starts `cmd` with its standard output and error piped to the harness.
    pub fn spawn(mut cmd: Command) -> ConsumerProcess {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("the consumer starts ({cmd:?}): {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        collect(out, stdout.clone());
        collect(err, stderr.clone());
        ConsumerProcess {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits for the `ready` line; panics with what it printed when it exits or `wait` passes.
    pub async fn wait_ready(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            if self.stderr_lines().iter().any(|l| l.starts_with("ready")) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the consumer exited ({status}) before it was ready:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the consumer was not ready within {wait:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The records it processed so far (its standard output, one JSON object a line).
    pub fn records(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!("a consumer's output line is one JSON object ({e}): {l}")
                })
            })
            .collect()
    }

    /// The message ids it processed so far, with how often each.
    pub fn processed(&self) -> BTreeMap<String, usize> {
        let mut ids = BTreeMap::new();
        for r in self.records() {
            let id = r["message_id"]
                .as_str()
                .unwrap_or_else(|| panic!("a processed record names its message_id: {r}"));
            *ids.entry(id.to_string()).or_insert(0) += 1;
        }
        ids
    }

    /// The message ids it skipped as duplicates so far.
    pub fn duplicates(&self) -> Vec<String> {
        self.stderr_lines()
            .iter()
            .filter_map(|l| l.strip_prefix("duplicate "))
            .map(|id| id.trim().to_string())
            .collect()
    }

    /// Waits until `done` holds for it (`true`), or `wait` passes or it exits (`false`).
    pub async fn wait_until(
        &mut self,
        wait: Duration,
        done: impl Fn(&ConsumerProcess) -> bool,
    ) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            if done(self) {
                return true;
            }
            if Instant::now() >= deadline || matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM (through `kill`, to need no extra crate and no `unsafe`), then waits up to 10 s
    /// for it to exit; its exit status.
    pub async fn stop(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the readers take the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the consumer did not stop within 10 s of SIGTERM:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Everything it printed, for a failure message.
    pub fn log(&self) -> String {
        let out = self.stdout.lock().unwrap_or_else(|e| e.into_inner());
        format!(
            "--- stderr\n{}\n--- stdout ({} lines)\n{}",
            self.stderr_lines().join("\n"),
            out.len(),
            out.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
        )
    }
}

impl Drop for ConsumerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn collect(from: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            into.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    });
}

/// The ids of the records of `blobs`.
fn record_ids(blobs: &[o365_sim::SimBlob]) -> BTreeSet<String> {
    blobs.iter().flat_map(|b| b.record_ids.clone()).collect()
}

/// The pipeline's first tenant.
fn tenant(p: &Pipeline) -> String {
    p.sim.tenants().first().expect("a tenant").clone()
}

const WAIT: Duration = Duration::from_secs(30);

/// A consumer bound `Audit.Exchange.*` gets every Exchange record the relay published, and no
/// other, exactly once after its de-duplication — also when messages come twice (the relay's
/// at-least-once: a publish whose confirm was lost is published again, simulated here by
/// publishing copies of three delivered messages) — and acknowledges each (its queue is empty
/// after it stopped). `consumer` makes the command line from the options.
pub async fn records_arrive_exactly_once(p: &Pipeline, consumer: impl Fn(Vec<String>) -> Command) {
    let queue = format!("consumer.{}.exchange", p.names.id);
    let mut guard = ResourceGuard::new().queues([queue.clone()]);
    let args = ConsumerArgs {
        amqp_url: AMQP.into(),
        exchange: p.names.exchange.clone(),
        queue: queue.clone(),
        bind: vec!["Audit.Exchange.*".into()],
        queue_type: "quorum".into(),
        stream_offset: None,
    };
    let mut c = ConsumerProcess::spawn(consumer(args.to_args()));
    c.wait_ready(WAIT).await;

    let tenant = tenant(p);
    let exchange = p.sim.publish(&tenant, "Audit.Exchange", 2, Some(6)).await;
    let sharepoint = p.sim.publish(&tenant, "Audit.SharePoint", 1, Some(6)).await;
    let want = record_ids(&exchange);
    let all: BTreeSet<String> = want.union(&record_ids(&sharepoint)).cloned().collect();
    let published = p
        .sink
        .drain(all.len(), WAIT, Duration::from_millis(300))
        .await;
    let published_ids: BTreeSet<String> = published.iter().map(message_id).collect();
    assert_eq!(published_ids, all, "the relay published every record");

    // The same messages again, as the relay publishes them when a confirm was lost.
    let copies: Vec<_> = published
        .iter()
        .filter(|d| d.routing_key.as_str().starts_with("Audit.Exchange."))
        .take(3)
        .collect();
    assert_eq!(copies.len(), 3);
    for d in &copies {
        p.sink
            .channel()
            .basic_publish(
                p.names.exchange.as_str().into(),
                d.routing_key.clone(),
                BasicPublishOptions::default(),
                &d.data,
                d.properties.clone(),
            )
            .await
            .expect("publish a copy")
            .await
            .expect("the copy is confirmed or unconfirmed, never an error");
    }

    let arrived = c
        .wait_until(WAIT, |c| {
            c.processed().len() >= want.len() && c.duplicates().len() >= copies.len()
        })
        .await;
    assert!(
        arrived,
        "{} of {} records processed, {} duplicates skipped:\n{}",
        c.processed().len(),
        want.len(),
        c.duplicates().len(),
        c.log()
    );
    // Anything extra would come now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = c.stop().await;
    assert!(
        status.success(),
        "stopped by SIGTERM: {status}\n{}",
        c.log()
    );

    let processed = c.processed();
    let twice: Vec<_> = processed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "processed more than once: {twice:?}");
    let ids: BTreeSet<String> = processed.keys().cloned().collect();
    assert_eq!(ids, want, "exactly the Exchange records (the binding key)");
    for r in c.records() {
        let rk = r["routing_key"].as_str().unwrap_or_default();
        assert!(rk.starts_with("Audit.Exchange."), "{r}");
    }
    // The copies were skipped (and nothing but Exchange records: a duplicate the relay itself
    // published, which it does only when a confirm is lost, would be skipped too).
    let skipped: BTreeSet<String> = c.duplicates().into_iter().collect();
    let copied: BTreeSet<String> = copies.iter().map(|d| message_id(d)).collect();
    assert!(
        copied.is_subset(&skipped) && skipped.is_subset(&want),
        "skipped {skipped:?}, copies {copied:?}"
    );
    let summary = format!("stopped: {} records, ", want.len());
    assert!(
        c.stderr_lines().iter().any(|l| l.starts_with(&summary)),
        "a last line {summary:?}…:\n{}",
        c.log()
    );
    assert_eq!(
        depth(p.sink.connection(), &queue).await,
        Some(0),
        "every message was acknowledged (an unacknowledged one returns to the queue)"
    );
    guard.release().await;
}

/// A consumer of a stream queue (`x-queue-type: stream`) bound to the exchange gets every
/// record; a second consumer of the same stream started later from offset `first` reads the
/// whole history again.
pub async fn a_stream_is_read_again_from_its_start(
    p: &Pipeline,
    consumer: impl Fn(Vec<String>) -> Command,
) {
    let queue = format!("consumer.{}.stream", p.names.id);
    let mut guard = ResourceGuard::new().queues([queue.clone()]);
    let args = ConsumerArgs {
        amqp_url: AMQP.into(),
        exchange: p.names.exchange.clone(),
        queue: queue.clone(),
        bind: vec!["#".into()],
        queue_type: "stream".into(),
        stream_offset: Some("first".into()),
    };
    let mut first = ConsumerProcess::spawn(consumer(args.to_args()));
    first.wait_ready(WAIT).await;

    let tenant = tenant(p);
    let mut blobs = p.sim.publish(&tenant, "Audit.General", 1, Some(5)).await;
    blobs.extend(p.sim.publish(&tenant, "DLP.All", 1, Some(4)).await);
    let want = record_ids(&blobs);
    let published = p
        .sink
        .drain(want.len(), WAIT, Duration::from_millis(300))
        .await;
    let published: BTreeSet<String> = published.iter().map(message_id).collect();
    assert_eq!(published, want, "the relay published every record");

    read_everything("first", &mut first, &want).await;
    // Later, a new consumer reads the history from its start.
    let mut again = ConsumerProcess::spawn(consumer(args.to_args()));
    again.wait_ready(WAIT).await;
    read_everything("again", &mut again, &want).await;
    guard.release().await;
}

async fn read_everything(name: &str, c: &mut ConsumerProcess, want: &BTreeSet<String>) {
    let arrived = c
        .wait_until(WAIT, |c| c.processed().len() >= want.len())
        .await;
    assert!(
        arrived,
        "consumer {name}: {} of {} records:\n{}",
        c.processed().len(),
        want.len(),
        c.log()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = c.stop().await;
    assert!(
        status.success(),
        "consumer {name} stopped: {status}\n{}",
        c.log()
    );
    let processed = c.processed();
    assert!(
        processed.values().all(|n| *n == 1),
        "consumer {name}: {processed:?}"
    );
    let ids: BTreeSet<String> = processed.into_keys().collect();
    assert_eq!(&ids, want, "consumer {name}");
}
