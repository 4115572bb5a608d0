//! The relay on the topologies deployments grow into (issue 18), each started by the test on
//! ports of its own beside the machine's Redis and RabbitMQ, never touching them:
//!
//! - [`redis`]: Redis Cluster (three masters with a replica each) and Sentinel;
//! - [`rabbit`]: a RabbitMQ cluster of three nodes.
//!
//! Each fault test prints its row of RELIABILITY.md (`RELIABILITY-ROW | ...`).
//! `cargo test --test cluster -- --nocapture`

// The fault-test harness of tests/reliability (simulator, relay processes, the sink and its
// figures), shared rather than copied.
#[path = "../reliability/harness.rs"]
mod harness;
mod rabbit;
mod redis;
