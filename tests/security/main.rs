//! Issue 20: the admin and consent surfaces tried as an attacker would. Each module replays one
//! family of attacks against the real Redis and RabbitMQ — a relay built in process
//! (`Application`), the relay binary where the attack goes through it, a real Chromium where a
//! browser is the victim — with names unique to the test, and asserts the door stays shut. The
//! harness is the onboarding tests' (`tests/onboarding/helpers.rs`, `webdriver.rs`).
//!
//! `cargo test --test security`

#[path = "../onboarding/helpers.rs"]
mod helpers;
#[path = "../onboarding/webdriver.rs"]
mod webdriver;

/// Cross-site requests and DNS rebinding against the admin listener, token or not.
mod admin_origin;
/// Approval mode: a consenting tenant is never served before an operator approves it, and
/// approving one that is not pending is refused.
mod approval;
/// The consent `state`: a flood of starts costs nothing and fails no admin; planted nonces,
/// forged, expired, replayed and cross-browser states are refused before the code is redeemed.
mod consent_state;
/// Outside text on the pages the relay serves (status, sign-in, consent) stays text.
mod pages;
/// Signing in: failed sign-ins throttled per client, sessions that live in Redis, end at
/// logout and with a new admin token, and carry nothing of the token.
mod sign_in;
/// Outside text (Microsoft's errors, headers, names) shown on a terminal or in a human log
/// cannot drive the terminal; a wrong-auth flood does not flood the log.
mod terminal;
