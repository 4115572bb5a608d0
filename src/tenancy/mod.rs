//! The tenants the relay serves: the registry and its states ([`tenants`]), how a tenant
//! arrives and leaves ([`consent`], [`onboarding`]), its subscriptions kept enabled
//! ([`subscriptions`]), and parking a tenant whose failures are its own ([`parking`];
//! docs/OPERATIONS.md, "Parked tenants").

pub mod onboarding;
pub mod parking;
pub mod subscriptions;
pub mod tenants;
