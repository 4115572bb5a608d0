//! examples/consumer-rust (the `o365-consumer` binary, lapin) against `o365-relay demo` (the
//! scenario of [`crate::demo`], the same the Python example passes).
//!
//! The binary belongs to another package of the workspace, whose path Cargo gives only to that
//! package's own tests: it is built here with the cargo that runs the tests (a no-op when
//! `cargo test` at the top already built it, as it builds every default member), and run from
//! where cargo reports it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// `cargo build --bin o365-consumer` (same workspace, profile and target directory as this
/// test); the binary's path, from cargo's own report of it.
fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let relay = PathBuf::from(env!("CARGO_BIN_EXE_o365-relay"));
        let mut cmd = Command::new(cargo);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--locked", "--bin", "o365-consumer"])
            .args(["--message-format", "json-render-diagnostics"])
            .stderr(Stdio::inherit());
        // The profile this test was built with: the directory the relay binary is in.
        if relay.parent().and_then(|d| d.file_name()) == Some("release".as_ref()) {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("cargo runs");
        assert!(
            out.status.success(),
            "cargo build --bin o365-consumer failed"
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| {
                m["reason"] == "compiler-artifact" && m["target"]["name"] == "o365-consumer"
            })
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo reports the o365-consumer executable")
    })
    .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_consumer_gets_every_record_of_the_demo_once_and_acknowledges_it() {
    let bin = tokio::task::spawn_blocking(binary).await.expect("built");
    crate::demo::every_record_of_the_demo_arrives_once(move |args| {
        let mut cmd = Command::new(&bin);
        cmd.args(args);
        cmd
    })
    .await;
}
