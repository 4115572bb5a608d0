//! o365-relay: collects the Office 365 unified audit log through the Management Activity API
//! and relays every record into a RabbitMQ topic exchange. One room per concern; README.md,
//! "How it works", draws how they connect.

/// Wiring: builds the components from the settings; only the entry points import it.
pub mod app;
/// RabbitMQ: the connection, confirms, topology and every AMQP call.
pub mod broker;
/// `O365_*` settings, read and checked once.
pub mod config;
/// `o365-relay demo`: the simulator and the relay in one process.
#[cfg(feature = "demo")]
pub mod demo;
/// Validated values every room shares: tenants, content, work items, secrets, bounded text.
pub mod domain;
/// The admin listener: probes, metrics, the admin API and status page, and who may use them.
pub mod http;
/// Microsoft's side: Entra tokens and certificates, the Management API client and its error
/// vocabulary, the parser for the blobs Microsoft announces.
pub mod microsoft;
/// Running it: metrics, logs and traces, supervision of the loops, the status report.
pub mod ops;
/// The data path: webhook → work queue → worker → record sink, the reconciler beside the
/// webhook, fairness between tenants, backpressure, replay and dead letters.
pub mod pipeline;
/// Redis: every key and script.
pub mod store;
/// The tenants served: the registry, onboarding and consent, subscriptions, parking.
pub mod tenancy;
