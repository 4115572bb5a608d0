//! Running the relay: Prometheus series ([`metrics`]), logs and traces ([`telemetry`],
//! [`trace_context`], [`terminal`]), the background loops kept alive ([`supervise`]), and the
//! operator's status ([`status`]).

pub mod metrics;
pub mod supervise;
pub mod telemetry;
pub mod terminal;
pub mod trace_context;
