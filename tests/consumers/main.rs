//! What consumers receive: the relay's messages against docs/asyncapi.yaml, and the example
//! consumers (examples/) against the relay. The relay runs in process against the simulator,
//! the local RabbitMQ and Redis, with names unique to each test.

mod asyncapi;
mod helpers;
mod python;
