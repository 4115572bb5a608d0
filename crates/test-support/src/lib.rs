//! The one harness of o365-relay's integration tests, benchmark and demo.
//!
//! - [`services`]: the local RabbitMQ and Redis, the simulator's app registration, free ports,
//!   polling;
//! - [`names`]: a Redis prefix, exchange, work queue and sink queue unique to one test;
//! - [`env`]: the relay's environment (`O365_*`) for a test relay, the one place that knows it;
//! - [`sim`]: a simulator with the test app registration;
//! - [`cert`]: a fresh client certificate written to disk, and a private PKI for TLS tests;
//! - [`sink`]: a queue bound `#` to the relay's exchange, read back as deliveries or messages,
//!   or counted;
//! - [`pipeline`]: everything around a relay under test but the relay: a simulator subscribed
//!   to its webhook, its environment and listeners, a sink, the clean-up;
//! - [`consumer`]: the example consumers as child processes, and the scenarios they must pass;
//! - [`markup`]: a page's outline of tags, to show hostile text did not become markup;
//! - [`guard`]: deletes a test's queues, exchange and Redis keys on drop or on request;
//! - [`process`]: the relay as a child process (readiness, SIGTERM, SIGKILL, logs);
//! - [`proxy`]: a TCP proxy a test can cut, in front of RabbitMQ or Redis;
//! - [`redis_topology`]: a Redis Cluster or a Sentinel-watched master of a test's own, on free
//!   ports, with master kills and failovers.
//! - [`rabbit_cluster`]: a RabbitMQ cluster of three nodes of its own, beside the machine's
//!   broker: its URL list, SIGKILL and restart of a node, the node a named connection is on.
//!
//! It does not depend on `o365-relay` (the relay's `demo` feature may depend on it): what only
//! the relay knows, such as the queues derived from its work queue, the tests pass in.

pub mod cert;
pub mod consumer;
pub mod env;
pub mod guard;
pub mod markup;
pub mod names;
pub mod pipeline;
pub mod process;
pub mod proxy;
pub mod rabbit_cluster;
pub mod redis_topology;
pub mod services;
pub mod sim;
pub mod sink;

pub use cert::{write_cert, Pki};
pub use consumer::{ConsumerArgs, ConsumerProcess};
pub use env::RelayEnv;
pub use guard::ResourceGuard;
pub use names::{unique, Names};
pub use pipeline::Pipeline;
pub use process::{RelayCommand, RelayProcess};
pub use proxy::Proxy;
pub use redis_topology::{RedisCluster, RedisSentinel};
pub use services::*;
pub use sim::SimBuilder;
pub use sink::{header, Counter, Received, Sink, SinkMessage, SinkQueue};
