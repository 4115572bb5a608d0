//! Tests of the Office 365 / Entra ID simulator itself, through its public API and HTTP only:
//! one module per area.

mod consent;
mod control;
mod faults;
mod hostile;
mod management;
mod records;
mod support;
mod tokens;
mod webhooks;
