//! A simulator of Entra ID and the Management Activity API for one test, with the test app
//! registration ([`crate::CLIENT_ID`]).

use crate::services::CLIENT_ID;
use o365_sim::{SimConfig, Simulator};
use std::time::Duration;

/// Builds a [`SimConfig`] and starts the simulator on a free loopback port.
#[derive(Clone, Debug)]
pub struct SimBuilder {
    config: SimConfig,
}

impl Default for SimBuilder {
    fn default() -> Self {
        SimBuilder::new()
    }
}

impl SimBuilder {
    /// The simulator's defaults with the test client id.
    pub fn new() -> SimBuilder {
        SimBuilder {
            config: SimConfig {
                client_id: CLIENT_ID.into(),
                ..SimConfig::default()
            },
        }
    }

    /// The tenants that exist.
    pub fn tenants<S: AsRef<str>>(mut self, tenants: &[S]) -> SimBuilder {
        self.config.tenants = tenants.iter().map(|t| t.as_ref().to_string()).collect();
        self
    }

    /// The accepted client secret.
    pub fn client_secret(mut self, secret: impl Into<String>) -> SimBuilder {
        self.config.client_secret = Some(secret.into());
        self
    }

    /// The registered client certificates (PEM).
    pub fn client_certs(mut self, certs: Vec<Vec<u8>>) -> SimBuilder {
        self.config.client_certs_pem = certs;
        self
    }

    /// Lifetime of the access tokens it issues.
    pub fn token_lifetime(mut self, lifetime: Duration) -> SimBuilder {
        self.config.token_lifetime = lifetime;
        self
    }

    /// Delays between re-deliveries of a failed notification (then the webhook is disabled).
    pub fn notification_retry_delays(mut self, delays: Vec<Duration>) -> SimBuilder {
        self.config.notification_retry_delays = delays;
        self
    }

    /// How long published content can be retrieved (its `contentExpiration`).
    pub fn content_lifetime(mut self, lifetime: Duration) -> SimBuilder {
        self.config.content_lifetime = lifetime;
        self
    }

    /// The admin who "signs in" on the consent page.
    pub fn consent_upn(mut self, upn: impl Into<String>) -> SimBuilder {
        self.config.consent_upn = upn.into();
        self
    }

    /// Anything else of the configuration.
    pub fn configure(mut self, f: impl FnOnce(&mut SimConfig)) -> SimBuilder {
        f(&mut self.config);
        self
    }

    /// The configuration built so far.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Starts the simulator on a free loopback port (a test's way: it cannot fail there).
    pub async fn start(self) -> Simulator {
        self.try_start().await.expect("simulator starts")
    }

    /// Starts the simulator on a free loopback port, or says why it could not.
    pub async fn try_start(self) -> anyhow::Result<Simulator> {
        Simulator::start(self.config, "127.0.0.1:0").await
    }
}
