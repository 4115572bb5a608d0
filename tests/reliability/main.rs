//! Fault tests with figures (issue 3): real `o365-relay serve` processes against the real
//! RabbitMQ and Redis and the simulator; each test counts the records the simulator put into
//! blobs against the distinct `message_id`s a sink queue bound `#` to the exchange received,
//! asserts none lost, and prints its row of RELIABILITY.md (`RELIABILITY-ROW | ...`).
//!
//! `cargo test --release --test reliability -- --nocapture --test-threads 2`

mod backpressure;
mod faults;
mod harness;
mod infrastructure;
mod process;
mod reconcile;
