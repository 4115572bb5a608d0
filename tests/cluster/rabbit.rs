//! A RabbitMQ cluster of three nodes: the relay connects through a list of endpoints, and
//! loses nothing when the node it is connected to dies.
