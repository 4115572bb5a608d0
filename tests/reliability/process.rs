//! The relay process dies (SIGKILL) or is stopped (SIGTERM) mid-stream and is restarted.

use crate::harness::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_stream_loses_nothing_after_a_restart() {
    let mut h = Harness::start(Setup::new("sigkill")).await;
    let mut first = h.relay_up().await;
    let load = h.load(100, 20, 5, Duration::from_millis(250));
    // Kill it once records are flowing (blobs in flight, confirms pending).
    let flowing = tokio::time::timeout(Duration::from_secs(30), async {
        while h.received.lock().unwrap().total < 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(flowing.is_ok(), "records never started flowing");
    first.sigkill();
    let killed_with = h.received.lock().unwrap().total;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let since = Instant::now();
    let _second = h.spawn_relay();
    h.wait_ready(Duration::from_secs(60)).await;
    load.await.unwrap();
    let row = h
        .settle(
            "relay SIGKILLed mid-stream, restarted after 1 s",
            since,
            Duration::from_secs(90),
            Duration::from_secs(2),
            format!("killed after {killed_with} records had arrived"),
        )
        .await;
    h.assert_none_lost(&row);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_exits_cleanly_and_loses_nothing_after_a_restart() {
    let mut h = Harness::start(Setup::new("sigterm")).await;
    let mut first = h.relay_up().await;
    let load = h.load(100, 20, 5, Duration::from_millis(250));
    let flowing = tokio::time::timeout(Duration::from_secs(30), async {
        while h.received.lock().unwrap().total < 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(flowing.is_ok(), "records never started flowing");
    let stopping = Instant::now();
    first.sigterm();
    // O365_SHUTDOWN_TIMEOUT is 10 s; Kubernetes' grace period is 30 s by default.
    let status = first.wait_exit(Duration::from_secs(25)).await;
    let took = stopping.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "the relay did not exit within 25 s of SIGTERM; log {}",
            first.log.display()
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM must end in a clean exit; log {}",
        first.log.display()
    );
    assert!(
        took <= Duration::from_secs(15),
        "shutdown took {took:?}, beyond O365_SHUTDOWN_TIMEOUT (10 s) plus slack"
    );
    let log = std::fs::read_to_string(&first.log).unwrap_or_default();
    assert!(log.contains("Stopped."), "no orderly stop in the log");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let since = Instant::now();
    let _second = h.spawn_relay();
    h.wait_ready(Duration::from_secs(60)).await;
    load.await.unwrap();
    let row = h
        .settle(
            "SIGTERM during load, restarted after 1 s",
            since,
            Duration::from_secs(90),
            Duration::from_secs(2),
            format!("exit code 0 after {:.1} s", took.as_secs_f64()),
        )
        .await;
    h.assert_none_lost(&row);
}
