//! The relay on the topologies deployments grow into (issue 18), each started by the test on
//! ports of its own beside the machine's Redis and RabbitMQ, never touching them:
//!
//! - [`redis`]: Redis Cluster (three masters with a replica each) and Sentinel;
//! - [`rabbit`]: a RabbitMQ cluster of three nodes.
//!
//! Each fault test prints its row of RELIABILITY.md (`RELIABILITY-ROW | ...`).
//! `cargo test --test cluster -- --nocapture`

mod rabbit;
mod redis;
