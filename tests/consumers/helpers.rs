//! A relay built in process on a `test_support::Pipeline` (simulator, environment, sink,
//! clean-up), and the relay binary for its commands.

#![allow(dead_code)]

pub use test_support::*;

#[path = "../common/pipeline_relay.rs"]
mod pipeline_relay;

use pipeline_relay::InProcess;

/// A running relay; stop it with [`Relay::stop`], which also cleans the pipeline up.
pub struct Relay {
    pub pipeline: Pipeline,
    relay: InProcess,
}

impl Relay {
    /// A pipeline serving `tenants`, and the relay on it, its RabbitMQ topology declared.
    pub async fn start(tenants: &[&str]) -> Relay {
        let mut pipeline = Pipeline::start("cons", tenants).await;
        let relay = InProcess::start(&mut pipeline).await;
        Relay { pipeline, relay }
    }

    /// `o365-relay args…` with the relay's environment; its output.
    pub fn command(&self, args: &[&str]) -> std::process::Output {
        RelayCommand::new(env!("CARGO_BIN_EXE_o365-relay"), args)
            .envs(self.pipeline.env.vars().to_vec())
            .output()
    }

    pub async fn stop(self) {
        self.relay.stop().await;
        self.pipeline.cleanup().await;
    }
}
