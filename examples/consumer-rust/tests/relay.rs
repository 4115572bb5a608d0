//! The example consumer against the real thing: the relay built in process (as the relay's own
//! tests build it), the simulator, the local RabbitMQ and Redis. The scenarios are the test
//! harness's (`test_support::consumer`), the same the Python example passes
//! (tests/consumers/python.rs at the workspace root).

#[path = "../../../tests/common/pipeline_relay.rs"]
mod pipeline_relay;

use pipeline_relay::InProcess;
use std::process::Command;
use test_support::consumer::{a_stream_is_read_again_from_its_start, records_arrive_exactly_once};
use test_support::{Pipeline, TENANT_A};

/// Stops the relay, then cleans the pipeline up.
async fn stop(relay: InProcess, p: Pipeline) {
    relay.stop().await;
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
    let relay = InProcess::start(&mut p).await;
    records_arrive_exactly_once(&p, consumer).await;
    stop(relay, p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_consumer_reads_a_stream_again_from_its_start() {
    let mut p = Pipeline::start("cons", &[TENANT_A]).await;
    let relay = InProcess::start(&mut p).await;
    a_stream_is_read_again_from_its_start(&p, consumer).await;
    stop(relay, p).await;
}
