//! A relay built in process on a `test_support::Pipeline` (simulator, environment, sink,
//! clean-up), and the relay binary for its commands.

#![allow(dead_code)]

pub use test_support::*;

use o365_relay::app::Application;
use o365_relay::config::Settings;
use std::time::Duration;

/// A running relay; stop it with [`Relay::stop`], which also cleans the pipeline up.
pub struct Relay {
    pub pipeline: Pipeline,
    stop: Box<dyn Fn() + Send>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Relay {
    /// A pipeline serving `tenants`, and the relay on it, its RabbitMQ topology declared.
    pub async fn start(tenants: &[&str]) -> Relay {
        let mut p = Pipeline::start("cons", tenants).await;
        let q = o365_relay::work_queue::Names::new(&p.names.work_queue);
        p.guard
            .queues
            .extend([q.dead, q.parked].into_iter().chain(q.retry));
        let settings = Settings::from_vars(p.env.vars().to_vec()).expect("valid settings");
        let (public, admin) = p.listeners();
        let app = Application::build_with_listeners(settings, Some(public), admin)
            .await
            .expect("the relay builds");
        let parts = app.parts();
        let token = app.shutdown_token();
        let task = tokio::spawn(app.run_until_stopped());
        let declared = eventually(Duration::from_secs(10), || {
            let parts = parts.clone();
            async move { parts.broker.topology_declared() }
        })
        .await;
        assert!(declared, "the relay declared its RabbitMQ topology");
        Relay {
            pipeline: p,
            stop: Box::new(move || token.cancel()),
            task,
        }
    }

    /// `o365-relay args…` with the relay's environment; its output.
    pub fn command(&self, args: &[&str]) -> std::process::Output {
        RelayCommand::new(env!("CARGO_BIN_EXE_o365-relay"), args)
            .envs(self.pipeline.env.vars().to_vec())
            .output()
    }

    pub async fn stop(self) {
        (self.stop)();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
        self.pipeline.cleanup().await;
    }
}
