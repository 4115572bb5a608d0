//! What consumers receive: the relay's messages against docs/asyncapi.yaml (a relay in process
//! against the simulator), and the example consumers (examples/) against `o365-relay demo`, the
//! binary. All on the local RabbitMQ and Redis, with names unique to each test.

mod asyncapi;
mod demo;
mod helpers;
mod python;
mod rust;
