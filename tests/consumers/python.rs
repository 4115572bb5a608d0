//! examples/consumer-python against the relay: the scenarios of `test_support::consumer`, the
//! same the Rust example passes (examples/consumer-rust/tests/relay.rs). Its Python is the venv
//! `.ci/consumers-setup` makes (examples/consumer-python/.venv), or `O365_CONSUMER_PYTHON`.

use crate::helpers::*;
use std::path::PathBuf;
use std::process::Command;
use test_support::consumer::{a_stream_is_read_again_from_its_start, records_arrive_exactly_once};

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/consumer-python")
}

/// The venv's Python, with pika; fails (does not skip) with how to make it when missing.
fn python() -> PathBuf {
    let python = std::env::var_os("O365_CONSUMER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| example().join(".venv/bin/python"));
    let has_pika = Command::new(&python)
        .args(["-c", "import pika"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_pika,
        "{} is missing or has no pika: the Python consumer test needs the example's venv. Make it \
         with `bash .ci/consumers-setup` (CI runs it), or point O365_CONSUMER_PYTHON at a Python \
         with examples/consumer-python/requirements.txt installed.",
        python.display()
    );
    python
}

fn consumer(python: PathBuf) -> impl Fn(Vec<String>) -> Command {
    move |args| {
        let mut cmd = Command::new(&python);
        cmd.arg(example().join("consumer.py")).args(args);
        cmd
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_consumer_processes_each_record_once_and_acknowledges_it() {
    let python = python();
    let relay = Relay::start(&[TENANT_A]).await;
    records_arrive_exactly_once(&relay.pipeline, consumer(python)).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_consumer_reads_a_stream_again_from_its_start() {
    let python = python();
    let relay = Relay::start(&[TENANT_A]).await;
    a_stream_is_read_again_from_its_start(&relay.pipeline, consumer(python)).await;
    relay.stop().await;
}
