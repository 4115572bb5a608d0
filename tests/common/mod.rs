//! Pieces every integration-test binary shares (`#[path = "../common/mod.rs"] mod common;`):
//! the local services, the simulator's app registration, unique names, polling, and removing
//! what a test created in RabbitMQ and Redis.

#![allow(dead_code)]

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use std::net::TcpListener;
use std::time::Duration;

pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS: &str = "redis://127.0.0.1:6379";
pub const TENANT_A: &str = "41463f53-8812-40f4-890f-865bf6e35190";
pub const TENANT_B: &str = "7a0c1f2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b";
pub const CLIENT_ID: &str = "a6099727-6b7b-482c-b509-1df309acc563";

/// A short random id for names unique to one test.
pub fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// A listener on a free loopback port.
pub fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind a free port")
}

/// `http://127.0.0.1:{port}` of a listener.
pub fn url_of(l: &TcpListener) -> String {
    format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
}

/// Test logs through the test writer; level from `RUST_LOG` (default `warn`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .try_init();
}

/// A fresh RSA key and self-signed certificate (valid a year) written to `dir`:
/// `(cert_pem, cert_path, key_path)`.
pub fn write_cert(dir: &std::path::Path) -> (Vec<u8>, String, String) {
    let (key, cert) = o365_relay::certs::generate("o365-relay tests", 365, 2048).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let cert_path = dir.join("client.crt");
    let key_path = dir.join("client.key");
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    (
        cert,
        cert_path.display().to_string(),
        key_path.display().to_string(),
    )
}

/// Polls `f` until it is true or `wait` passes.
pub async fn eventually<F, Fut>(wait: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deletes the relay's exchange, its work, retry and dead queues, `extra` queues, and every
/// Redis key under `prefix`.
pub async fn remove_relay_resources(
    exchange: &str,
    work_queue: &str,
    extra: &[String],
    prefix: &str,
) {
    if let Ok(conn) = lapin::Connection::connect(AMQP, Default::default()).await {
        if let Ok(ch) = conn.create_channel().await {
            let mut queues = vec![work_queue.to_string(), format!("{work_queue}.dead")];
            queues.extend(o365_relay::work_queue::retry_queue_names(work_queue));
            queues.extend(extra.iter().cloned());
            for q in queues {
                let _ = ch
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            let _ = ch
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = conn.close(200, "bye".into()).await;
    }
    if let Ok(store) = o365_relay::store::Store::new(REDIS, prefix) {
        let _ = store.purge_prefix().await;
    }
}

/// Removes a test's RabbitMQ and Redis resources when dropped, so a test that panics before
/// its clean-up leaves nothing behind either. `release` does it in the normal path.
pub struct ResourceGuard {
    pub exchange: String,
    pub work_queue: String,
    pub extra_queues: Vec<String>,
    pub prefix: String,
    done: bool,
}

impl ResourceGuard {
    pub fn new(
        exchange: &str,
        work_queue: &str,
        extra_queues: &[String],
        prefix: &str,
    ) -> ResourceGuard {
        ResourceGuard {
            exchange: exchange.into(),
            work_queue: work_queue.into(),
            extra_queues: extra_queues.to_vec(),
            prefix: prefix.into(),
            done: false,
        }
    }

    pub async fn release(&mut self) {
        remove_relay_resources(
            &self.exchange,
            &self.work_queue,
            &self.extra_queues,
            &self.prefix,
        )
        .await;
        self.done = true;
    }
}

impl Drop for ResourceGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (e, w, x, p) = (
            self.exchange.clone(),
            self.work_queue.clone(),
            self.extra_queues.clone(),
            self.prefix.clone(),
        );
        // Drop may run inside a runtime (a panicking test): clean up on a thread of its own.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(remove_relay_resources(&e, &w, &x, &p));
            }
        })
        .join();
    }
}
