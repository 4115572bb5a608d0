//! The example consumer against the real thing: the relay built in process (as the relay's own
//! tests build it), the simulator, the local RabbitMQ and Redis. The scenarios are the test
//! harness's (`test_support::consumer`), the same the Python example passes
//! (tests/consumers/python.rs at the workspace root).

use o365_relay::app::Application;
use o365_relay::config::Settings;
use std::process::Command;
use std::time::Duration;
use test_support::consumer::{a_stream_is_read_again_from_its_start, records_arrive_exactly_once};
use test_support::{eventually, Pipeline, TENANT_A};

/// A running relay on the pipeline; stopped by [`stop`].
struct Relay {
    stop: Box<dyn Fn() + Send>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_relay(p: &mut Pipeline) -> Relay {
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
        stop: Box::new(move || token.cancel()),
        task,
    }
}

async fn stop(relay: Relay, p: Pipeline) {
    (relay.stop)();
    let _ = tokio::time::timeout(Duration::from_secs(15), relay.task).await;
    p.cleanup().await;
}

fn consumer(args: Vec<String>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_o365-consumer"));
    cmd.args(args);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_consumer_processes_each_record_once_and_acknowledges_it() {
    let mut p = Pipeline::start("cons", &[TENANT_A]).await;
    let relay = start_relay(&mut p).await;
    records_arrive_exactly_once(&p, consumer).await;
    stop(relay, p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_consumer_reads_a_stream_again_from_its_start() {
    let mut p = Pipeline::start("cons", &[TENANT_A]).await;
    let relay = start_relay(&mut p).await;
    a_stream_is_read_again_from_its_start(&p, consumer).await;
    stop(relay, p).await;
}
