//! The example consumers (`examples/consumer-python`, `examples/consumer-rust`) as child
//! processes. The scenario both must pass, against `o365-relay demo`, is the relay's
//! (tests/consumers/demo.rs): it needs the relay binary, which only the relay's tests know.
//!
//! What the harness relies on, which both consumers' READMEs describe: the command-line options
//! of [`ConsumerArgs`]; a line starting `ready` on standard error once the queue is declared,
//! bound and consumed; one JSON object per processed record on standard output (at least
//! `message_id` and `routing_key`); a line `duplicate <message_id>` on standard error for each
//! message skipped by the de-duplication; a last line `stopped: N records, D duplicates` on
//! standard error; exit status 0 on SIGTERM.

use std::collections::BTreeMap;
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
