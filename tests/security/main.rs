//! Issue 20, the admin and consent surfaces tried as an attacker would: each test replays one
//! attack against the real Redis and RabbitMQ (and the relay binary where the attack goes
//! through it). The harness is the onboarding tests' (`tests/onboarding/helpers.rs`).

/// Approval mode: a consenting tenant is never served before an operator approves it, and
/// approving one that is not pending is refused.
mod approval;
#[path = "../onboarding/helpers.rs"]
mod helpers;
/// Outside text (Microsoft's errors, headers, names) shown on a terminal or in a human log
/// cannot drive the terminal; a wrong-auth flood does not flood the log.
mod terminal;
