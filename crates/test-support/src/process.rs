//! The `o365-relay` binary as a child process, with exactly the environment a test gives it.
//! The binary's path comes from the test (`env!("CARGO_BIN_EXE_o365-relay")`), which only the
//! relay's own test targets know.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// A command line of the relay binary with a clean environment: only the variables given.
#[derive(Clone, Debug)]
pub struct RelayCommand {
    bin: PathBuf,
    args: Vec<String>,
    vars: Vec<(String, String)>,
}

impl RelayCommand {
    /// `bin args…` with an empty environment.
    pub fn new(bin: impl AsRef<Path>, args: &[&str]) -> RelayCommand {
        RelayCommand {
            bin: bin.as_ref().to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            vars: Vec::new(),
        }
    }

    /// Adds these variables (a [`crate::RelayEnv`]'s, or any pairs).
    pub fn envs<K, V>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> RelayCommand
    where
        K: Into<String>,
        V: Into<String>,
    {
        for (k, v) in vars {
            self = self.env(k, v);
        }
        self
    }

    /// Sets one variable (replacing an earlier value).
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> RelayCommand {
        let name = name.into();
        self.vars.retain(|(k, _)| *k != name);
        self.vars.push((name, value.into()));
        self
    }

    /// Passes the host's value of `name` on (empty when the host has none), e.g. `PATH`.
    pub fn inherit(self, name: &str) -> RelayCommand {
        let value = std::env::var(name).unwrap_or_default();
        self.env(name, value)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args)
            .env_clear()
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs it to the end and returns what it printed and its exit status.
    pub fn output(&self) -> Output {
        self.command().output().expect("the o365-relay binary runs")
    }

    /// Starts it, its standard output and error both written to `log`.
    pub fn spawn(&self, log: impl AsRef<Path>) -> RelayProcess {
        let log = log.as_ref().to_path_buf();
        let out = File::create(&log).expect("create the relay's log file");
        let err = out.try_clone().expect("share the relay's log file");
        let child = self
            .command()
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("o365-relay starts");
        RelayProcess { child, log }
    }
}

/// A running relay; SIGKILLed on drop unless it already exited.
pub struct RelayProcess {
    pub child: Child,
    /// Where its standard output and error go.
    pub log: PathBuf,
}

impl RelayProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reaps it.
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, the signal Kubernetes sends to stop a pod (through `kill`, to need no extra
    /// crate and no `unsafe`).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits until it exits, however long that takes.
    pub fn wait(&mut self) -> Option<ExitStatus> {
        self.child.wait().ok()
    }

    /// Waits up to `wait` for it to exit; its exit status when it did.
    pub async fn wait_exit(&mut self, wait: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + wait;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `{admin_url}/readyz` answers 200; panics, naming the log, when it does not
    /// within `wait` or the process exits first.
    pub async fn wait_ready(&mut self, admin_url: &str, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            if readyz(admin_url).await {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the relay exited ({status}) before it was ready; log {}",
                    self.log.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "relay not ready within {wait:?}; log {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Everything it printed so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether `{admin_url}/readyz` answers 200 now.
pub async fn readyz(admin_url: &str) -> bool {
    let Ok(http) = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    else {
        return false;
    };
    http.get(format!("{admin_url}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Waits until `{admin_url}/readyz` answers 200 (whichever process serves it); `false` when
/// `wait` passed first.
pub async fn wait_ready(admin_url: &str, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if readyz(admin_url).await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
