//! The relay built in process on a `test_support::Pipeline` (simulator, environment, sink,
//! clean-up), for tests/consumers/helpers.rs (tests/consumers, tests/tracing), which includes
//! this file (the harness cannot depend on the relay).

use o365_relay::app::Application;
use o365_relay::config::Settings;
use std::time::Duration;
use test_support::{eventually, Pipeline};

/// A relay running on a pipeline; stop it with [`InProcess::stop`].
pub struct InProcess {
    stop: Box<dyn Fn() + Send>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    /// The relay on `p`, its RabbitMQ topology declared; its queues join `p`'s clean-up.
    pub async fn start(p: &mut Pipeline) -> InProcess {
        let q = o365_relay::pipeline::work_queue::QueueNames::new(&p.names.work_queue);
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
        InProcess {
            stop: Box::new(move || token.cancel()),
            task,
        }
    }

    /// Stops the relay gracefully and waits for it (at most 15 s).
    pub async fn stop(self) {
        (self.stop)();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
    }
}
