//! o365-relay: collects the Office 365 unified audit log through the Management Activity API
//! and relays every record into a RabbitMQ topic exchange.
//!
//! The data path reads top to bottom: [`webhook`] (source; blobs checked by [`notification`])
//! → [`work_queue`] → [`worker`] (admitted by [`scheduling`], fetch through [`management`] with
//! [`tokens`], split by [`records`]) → [`sink`] (the topic exchange). [`reconciler`] is a second source into the same
//! queue; [`broker`] owns the RabbitMQ connection and confirms; [`tenants`], [`subscriptions`],
//! [`onboarding`] and [`store`] are services they use; [`supervise`] keeps the background loops
//! alive; [`health`] parks tenants whose failures are their own. The components — [`webhook::Webhook`], [`worker::Worker`],
//! [`reconciler::Reconciler`], [`subscriptions::Keeper`], [`admin::AdminApi`],
//! [`consent::Consent`] — each name what they need and are built in one place, [`app`], which
//! no other module imports; `main.rs` and its `cli/` are the command line.

pub mod admin;
pub mod admin_origin;
pub mod app;
pub mod backpressure;
pub mod broker;
pub mod certs;
pub mod client_address;
pub mod config;
pub mod consent;
pub mod dead_letters;
#[cfg(feature = "demo")]
pub mod demo;
pub mod domain;
pub mod health;
pub mod html;
pub mod management;
pub mod metrics;
pub mod notification;
pub mod onboarding;
pub mod reconciler;
pub mod records;
pub mod replay;
pub mod scheduling;
pub mod secret;
pub mod sink;
pub mod status;
pub mod store;
pub mod subscriptions;
pub mod supervise;
pub mod telemetry;
pub mod tenants;
pub mod terminal;
pub mod text;
pub mod tokens;
pub mod trace_context;
pub mod webhook;
pub mod work_queue;
pub mod worker;
