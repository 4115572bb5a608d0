//! The services every test runs against (RabbitMQ and Redis on this machine, started by
//! `.ci/run` or by hand), the simulator's app registration, free ports and polling.

use std::net::TcpListener;
use std::time::Duration;

/// RabbitMQ's address (`host:port`), for a [`crate::Proxy`] in front of it.
pub const AMQP_ADDR: &str = "127.0.0.1:5672";
/// Redis's address (`host:port`), for a [`crate::Proxy`] in front of it.
pub const REDIS_ADDR: &str = "127.0.0.1:6379";
/// RabbitMQ's URL (default vhost, guest account).
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Redis's URL.
pub const REDIS: &str = "redis://127.0.0.1:6379";

/// A tenant the simulator knows by default (it is also `SimConfig::default()`'s tenant).
pub const TENANT_A: &str = "41463f53-8812-40f4-890f-865bf6e35190";
/// A second tenant.
pub const TENANT_B: &str = "7a0c1f2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b";
/// The app registration's client id (the simulator's default).
pub const CLIENT_ID: &str = "a6099727-6b7b-482c-b509-1df309acc563";

/// The AMQP URL of a RabbitMQ reached at `addr` (`host:port`, the real one or a proxy).
pub fn amqp_url(addr: &str) -> String {
    format!("amqp://guest:guest@{addr}/%2f")
}

/// The Redis URL of a Redis reached at `addr` (`host:port`, the real one or a proxy).
pub fn redis_url(addr: &str) -> String {
    format!("redis://{addr}")
}

/// A listener on a free loopback port.
pub fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind a free port")
}

/// `http://127.0.0.1:{port}` of a listener.
pub fn url_of(l: &TcpListener) -> String {
    let port = l
        .local_addr()
        .expect("a bound listener has an address")
        .port();
    format!("http://127.0.0.1:{port}")
}

/// A loopback port free right now (for a child process that binds it itself).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
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

/// Polls `f` every 50 ms until it is true (`true`) or `wait` passes (`false`).
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

/// A connection to the local RabbitMQ; panics with a hint when it is not running.
pub async fn amqp_connection() -> lapin::Connection {
    lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default())
        .await
        .expect("RabbitMQ is running on 127.0.0.1:5672")
}

/// A raw connection to the local Redis, for checks the relay's API does not expose.
pub async fn redis_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS)
        .expect("a valid Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is running on 127.0.0.1:6379")
}
