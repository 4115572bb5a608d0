//! Issue 20: the admin and consent surfaces tried as an attacker would. Each module replays one
//! family of attacks against a relay built in process (`Application`, real Redis and RabbitMQ,
//! names unique to the test) and asserts the door stays shut.
//!
//! `cargo test --test security`

#[path = "../onboarding/helpers.rs"]
mod helpers;
#[path = "../onboarding/webdriver.rs"]
mod webdriver;

mod admin_origin;
