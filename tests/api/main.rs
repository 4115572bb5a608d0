//! Integration tests: the relay against the real Redis, the real RabbitMQ and the in-process
//! simulator. One binary, one module per area.

mod dead_letters;
mod fairness;
mod helpers;
mod hostile;
mod observability;
mod parking;
mod replay;
mod retrieval;
mod returns;
mod scale;
mod status;
mod tokens;
mod webhook;
mod work_queue;
