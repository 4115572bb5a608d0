//! This binary's defaults for the one in-process environment (`tests/common/relay_env.rs`):
//! two static tenants, workers on, a sink bound to the exchange, short retries.

#![allow(dead_code)]

#[path = "../common/relay_env.rs"]
mod relay_env;
pub use relay_env::*;

impl Default for Options {
    fn default() -> Self {
        Options {
            sink: true,
            base_env: vec![
                ("O365_RETRY_BASE".into(), "100ms".into()),
                ("O365_RETRY_MAX".into(), "500ms".into()),
                ("O365_MAX_ATTEMPTS".into(), "4".into()),
            ],
            ..Options::base()
        }
    }
}
