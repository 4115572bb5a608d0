//! Integration tests: the relay against the real Redis, the real RabbitMQ and the in-process
//! simulator. One binary, one module per area.

#[path = "../common/mod.rs"]
mod common;
mod helpers;
mod observability;
mod retrieval;
mod tokens;
mod webhook;
