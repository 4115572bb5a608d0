//! Tenant onboarding, end to end against the real Redis, the real RabbitMQ and the in-process
//! simulator: admin consent (over HTTP and in a real browser, in each consent mode), the tenant
//! registry and its admin API, the subscription lifecycle and keeper, and the operator CLI.

mod admin;
mod browser;
mod cli;
mod consent;
mod helpers;
mod modes;
mod subscriptions;
mod webdriver;
