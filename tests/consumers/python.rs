//! examples/consumer-python against `o365-relay demo` (the scenario of [`crate::demo`], the
//! same the Rust example passes). Its Python is the venv `.ci/consumers-setup` makes
//! (examples/consumer-python/.venv), or `O365_CONSUMER_PYTHON`.

use std::path::PathBuf;
use std::process::Command;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_consumer_gets_every_record_of_the_demo_once_and_acknowledges_it() {
    let python = python();
    crate::demo::every_record_of_the_demo_arrives_once(move |args| {
        let mut cmd = Command::new(&python);
        cmd.arg(example().join("consumer.py")).args(args);
        cmd
    })
    .await;
}
