//! Supervision of the background loops (content workers, reconciler, subscription keeper,
//! marker flusher). A loop is meant to run until shutdown; one that returns or panics before is
//! restarted with backoff and counted (`o365_task_restarts_total{task}`). A loop that keeps dying
//! ([`Policy::max_restarts`] within [`Policy::window`]) is given up on and named in
//! [`Supervisor::failed`], which turns `/healthz` to 503 so Kubernetes restarts the pod — a
//! replica whose consumer is dead must not look alive.

use crate::ops::metrics::Metrics;
use futures_util::FutureExt;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// When to restart and when to give up.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// First delay before a restart; doubles per restart within the window.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Restarts allowed within `window` before the task is given up on.
    pub max_restarts: usize,
    pub window: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            max_restarts: 10,
            window: Duration::from_secs(600),
        }
    }
}

pub struct Supervisor {
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    failed: Arc<Mutex<Vec<String>>>,
    tasks: Mutex<tokio::task::JoinSet<()>>,
}

impl Supervisor {
    /// Loops are asked to stop through `shutdown` (they receive a clone).
    pub fn new(metrics: Arc<Metrics>, shutdown: CancellationToken) -> Supervisor {
        Supervisor {
            metrics,
            shutdown,
            failed: Arc::new(Mutex::new(Vec::new())),
            tasks: Mutex::new(tokio::task::JoinSet::new()),
        }
    }

    /// The token supervised loops stop on.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs `make()` under the default [`Policy`].
    pub fn spawn<F, Fut>(&self, task: &'static str, make: F)
    where
        F: Fn(CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.spawn_with(task, Policy::default(), make)
    }

    /// Runs the loop `make(shutdown)` until shutdown, restarting it whenever it returns or
    /// panics before that.
    pub fn spawn_with<F, Fut>(&self, task: &'static str, policy: Policy, make: F)
    where
        F: Fn(CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let shutdown = self.shutdown.clone();
        let metrics = self.metrics.clone();
        let failed = self.failed.clone();
        let supervised = async move {
            let mut restarts: VecDeque<Instant> = VecDeque::new();
            loop {
                let run = std::panic::AssertUnwindSafe(make(shutdown.clone())).catch_unwind();
                let result = run.await;
                if shutdown.is_cancelled() {
                    return;
                }
                let now = Instant::now();
                while restarts
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > policy.window)
                {
                    restarts.pop_front();
                }
                if restarts.len() >= policy.max_restarts {
                    tracing::error!(task, restarts = restarts.len(), "A background task keeps failing; giving up on it (/healthz now fails so the pod is restarted).");
                    failed.lock().expect("poisoned").push(task.to_string());
                    return;
                }
                restarts.push_back(now);
                metrics.task_restarts.with_label_values(&[task]).inc();
                let delay = policy
                    .backoff
                    .saturating_mul(1 << (restarts.len() - 1).min(16))
                    .min(policy.max_backoff);
                match result {
                    Ok(()) => {
                        tracing::error!(
                            task,
                            delay_ms = delay.as_millis() as u64,
                            "A background task ended unexpectedly; restarting it."
                        )
                    }
                    Err(_) => {
                        tracing::error!(
                            task,
                            delay_ms = delay.as_millis() as u64,
                            "A background task panicked; restarting it."
                        )
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        };
        self.tasks.lock().expect("poisoned").spawn(supervised);
    }

    /// Tasks given up on (empty while everything runs).
    pub fn failed(&self) -> Vec<String> {
        self.failed.lock().expect("poisoned").clone()
    }

    /// Waits until every supervised task has stopped, or `deadline`; then aborts the rest.
    pub async fn join(&self, deadline: tokio::time::Instant) {
        let mut tasks = std::mem::take(&mut *self.tasks.lock().expect("poisoned"));
        let all = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout_at(deadline, all).await.is_err() {
            tracing::warn!("Background tasks did not stop in time; aborting them.");
            tasks.abort_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn quick(max_restarts: usize) -> Policy {
        Policy {
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            max_restarts,
            window: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn a_panicking_loop_is_restarted_counted_and_finally_given_up_on() {
        let metrics = Arc::new(Metrics::new());
        let sup = Supervisor::new(metrics.clone(), CancellationToken::new());
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        sup.spawn_with("injected", quick(3), move |_| {
            r.fetch_add(1, Ordering::SeqCst);
            async { panic!("injected fault") }
        });
        // Generous: join returns as soon as the task is given up on (a loaded machine is slow).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        sup.join(deadline).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            4,
            "first run and three restarts"
        );
        assert_eq!(
            metrics.task_restarts.with_label_values(&["injected"]).get(),
            3
        );
        assert_eq!(sup.failed(), vec!["injected".to_string()]);
    }

    #[tokio::test]
    async fn a_loop_that_recovers_keeps_running_and_stops_on_shutdown() {
        let metrics = Arc::new(Metrics::new());
        let stop = CancellationToken::new();
        let sup = Supervisor::new(metrics.clone(), stop.clone());
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        sup.spawn_with("flaky", quick(3), move |shutdown| {
            let n = r.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    panic!("first run fails");
                }
                shutdown.cancelled().await;
            }
        });
        let restarted = async {
            while runs.load(Ordering::SeqCst) < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), restarted)
            .await
            .expect("the loop is restarted");
        tokio::time::sleep(Duration::from_millis(20)).await;
        stop.cancel();
        sup.join(tokio::time::Instant::now() + Duration::from_secs(5))
            .await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "no restart after the recovery"
        );
        assert_eq!(metrics.task_restarts.with_label_values(&["flaky"]).get(), 1);
        assert!(sup.failed().is_empty());
    }
}
