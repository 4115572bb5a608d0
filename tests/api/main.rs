//! Integration tests: the relay against the real Redis, the real RabbitMQ and the in-process
//! simulator. One binary, one module per area.

mod helpers;
mod hostile;
mod observability;
mod retrieval;
mod returns;
mod scale;
mod tokens;
mod webhook;
mod work_queue;
