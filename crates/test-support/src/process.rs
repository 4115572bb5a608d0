//! The relay as a child process, with exactly the environment a test gives it. The binary's
//! path comes from the caller: `env!("CARGO_BIN_EXE_o365-relay")`, which only the relay's own
//! test targets know, or another binary that runs the relay (the benchmark re-executes itself
//! as `o365-bench serve-relay`).

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
    stdin_pipe: bool,
}

impl RelayCommand {
    /// `bin args…` with an empty environment.
    pub fn new(bin: impl AsRef<Path>, args: &[&str]) -> RelayCommand {
        RelayCommand {
            bin: bin.as_ref().to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            vars: Vec::new(),
            stdin_pipe: false,
        }
    }

    /// Gives the child a pipe as its standard input, held open by the [`RelayProcess`]
    /// (instead of `/dev/null`). A child that stops when its input closes, as `o365-bench
    /// serve-relay` does, then never outlives the process that started it, however that ends.
    pub fn stdin_pipe(mut self) -> RelayCommand {
        self.stdin_pipe = true;
        self
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
            .stdin(if self.stdin_pipe {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        cmd
    }

    /// Runs it to the end and returns what it printed and its exit status.
    pub fn output(&self) -> Output {
        self.command().output().expect("the o365-relay binary runs")
    }

    /// Starts it, its standard output and error both written to `log`.
    pub fn spawn(&self, log: impl AsRef<Path>) -> RelayProcess {
        self.try_spawn(log).expect("the relay process starts")
    }

    /// [`RelayCommand::spawn`], or why the log could not be created or the binary not run.
    pub fn try_spawn(&self, log: impl AsRef<Path>) -> std::io::Result<RelayProcess> {
        let log = log.as_ref().to_path_buf();
        let out = File::create(&log)?;
        let err = out.try_clone()?;
        let child = self.command().stdout(out).stderr(err).spawn()?;
        Ok(RelayProcess { child, log })
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
        if let Err(e) = self.try_wait_ready(admin_url, wait).await {
            panic!("{e}; log {}", self.log.display());
        }
    }

    /// Waits until `{admin_url}/readyz` answers 200; `Err` saying why when the process exits
    /// first or `wait` passes (it is left running then).
    pub async fn try_wait_ready(&mut self, admin_url: &str, wait: Duration) -> Result<(), String> {
        let deadline = Instant::now() + wait;
        loop {
            if readyz(admin_url).await {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("the relay exited ({status}) before it was ready"));
            }
            if Instant::now() >= deadline {
                return Err(format!("relay not ready within {wait:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops it as Kubernetes stops a pod: SIGTERM, then SIGKILL when it has not exited within
    /// `grace`. Its exit status when it exited by itself; `None` when it was killed.
    pub async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Ok(Some(s)) = self.child.try_wait() {
            return Some(s);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.wait_exit(grace).await;
        if status.is_none() {
            self.sigkill();
        }
        status
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell that waits for a line on its standard input, then exits 0.
    fn reader() -> RelayCommand {
        RelayCommand::new("/bin/sh", &["-c", "read line; exit 0"]).inherit("PATH")
    }

    fn log(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("test-support-{name}-{}.log", crate::unique()))
    }

    #[tokio::test]
    async fn a_piped_stdin_keeps_another_binary_running_until_it_is_closed() {
        let path = log("stdin");
        let mut p = reader()
            .stdin_pipe()
            .try_spawn(&path)
            .expect("/bin/sh runs");
        assert_eq!(p.wait_exit(Duration::from_millis(300)).await, None);
        drop(p.child.stdin.take());
        let status = p.wait_exit(Duration::from_secs(10)).await;
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
        let _ = std::fs::remove_file(path);
    }

    #[tokio::test]
    async fn without_a_pipe_stdin_is_closed_from_the_start() {
        let path = log("null");
        let mut p = reader().try_spawn(&path).expect("/bin/sh runs");
        let status = p.wait_exit(Duration::from_secs(10)).await;
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_missing_binary_is_an_error_not_a_panic() {
        let path = log("missing");
        let r = RelayCommand::new("/nonexistent/o365-relay", &["serve"]).try_spawn(&path);
        assert!(r.is_err());
        let _ = std::fs::remove_file(path);
    }

    #[tokio::test]
    async fn stop_kills_what_ignores_sigterm() {
        let path = log("stop");
        let cmd = |script: &str| RelayCommand::new("/bin/sh", &["-c", script]).inherit("PATH");
        let mut polite = cmd("trap 'exit 3' TERM; while :; do sleep 0.05; done")
            .try_spawn(&path)
            .expect("/bin/sh runs");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let status = polite.stop(Duration::from_secs(10)).await;
        assert_eq!(status.and_then(|s| s.code()), Some(3));
        let mut stubborn = cmd("trap '' TERM; while :; do sleep 0.05; done")
            .try_spawn(&path)
            .expect("/bin/sh runs");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(stubborn.stop(Duration::from_millis(300)).await, None);
        assert!(stubborn.child.try_wait().is_ok_and(|s| s.is_some()));
        let _ = std::fs::remove_file(path);
    }
}
