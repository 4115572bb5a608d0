//! The relay's environment for a test relay: the one place that knows which `O365_*`
//! variables a test sets (the names are the relay's configuration, described in its README).
//! Tests start from [`RelayEnv::new`] and override what they exercise.

use crate::names::Names;
use crate::services::{AMQP, CLIENT_ID, REDIS};

/// An ordered list of `(name, value)` pairs, each name at most once; setting a name again
/// replaces its value.
#[derive(Clone, Debug, Default)]
pub struct RelayEnv {
    vars: Vec<(String, String)>,
}

impl RelayEnv {
    /// What every test relay needs: the simulator's app registration and URLs, the local
    /// Redis and RabbitMQ under `names`, both listeners on free ports (`127.0.0.1:0`), short
    /// shutdown and HTTP timeouts. No tenants, no credential and no public URL yet.
    pub fn new(names: &Names, sim_url: &str) -> RelayEnv {
        RelayEnv::default()
            .set("O365_CLIENT_ID", CLIENT_ID)
            .set("O365_WEBHOOK_AUTH_ID", &names.auth_id)
            .set("O365_LOGIN_URL", sim_url)
            .set("O365_MANAGE_URL", sim_url)
            .set("O365_LISTEN", "127.0.0.1:0")
            .set("O365_ADMIN_LISTEN", "127.0.0.1:0")
            .set("O365_REDIS_URL", REDIS)
            .set("O365_REDIS_PREFIX", &names.prefix)
            .set("O365_AMQP_URL", AMQP)
            .set("O365_AMQP_EXCHANGE", &names.exchange)
            .set("O365_AMQP_WORK_QUEUE", &names.work_queue)
            .set("O365_SHUTDOWN_TIMEOUT", "5s")
            .set("O365_HTTP_TIMEOUT", "5s")
    }

    /// Sets `name` (replacing an earlier value).
    pub fn set(mut self, name: impl Into<String>, value: impl Into<String>) -> RelayEnv {
        self.insert(name, value);
        self
    }

    /// Sets `name` in place (replacing an earlier value).
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        self.vars.retain(|(k, _)| *k != name);
        self.vars.push((name, value.into()));
    }

    /// Leaves `name` out.
    pub fn remove(mut self, name: &str) -> RelayEnv {
        self.vars.retain(|(k, _)| k != name);
        self
    }

    /// Sets every pair of `overrides`, in order.
    pub fn overrides<K, V>(mut self, overrides: impl IntoIterator<Item = (K, V)>) -> RelayEnv
    where
        K: Into<String>,
        V: Into<String>,
    {
        for (k, v) in overrides {
            self.insert(k, v);
        }
        self
    }

    /// Overrides from the host variable `var`, written `NAME=value;NAME=value` (e.g.
    /// `RELIABILITY_EXTRA_ENV="O365_ENABLE_RECONCILER=false"`): the way to check by hand that
    /// a test fails when a mechanism is switched off. Nothing when `var` is unset.
    pub fn overrides_from_host(self, var: &str) -> RelayEnv {
        let Ok(extra) = std::env::var(var) else {
            return self;
        };
        let pairs: Vec<(String, String)> = extra
            .split(';')
            .filter(|p| !p.trim().is_empty())
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.to_string()))
            .collect();
        self.overrides(pairs)
    }

    /// `O365_TENANTS`: the tenants served without consent.
    pub fn tenants<S: AsRef<str>>(self, tenants: &[S]) -> RelayEnv {
        let list: Vec<&str> = tenants.iter().map(AsRef::as_ref).collect();
        self.set("O365_TENANTS", list.join(","))
    }

    /// `O365_PUBLIC_URL`: where Microsoft (the simulator) reaches the webhook.
    pub fn public_url(self, url: impl Into<String>) -> RelayEnv {
        self.set("O365_PUBLIC_URL", url)
    }

    /// Both listeners on fixed ports (a child process binds them itself).
    pub fn listen_on(self, public_port: u16, admin_port: u16) -> RelayEnv {
        self.set("O365_LISTEN", format!("127.0.0.1:{public_port}"))
            .set("O365_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"))
    }

    /// The client secret as the only credential.
    pub fn client_secret(self, secret: impl Into<String>) -> RelayEnv {
        self.remove("O365_CLIENT_CERT_PATH")
            .remove("O365_CLIENT_KEY_PATH")
            .set("O365_CLIENT_SECRET", secret)
    }

    /// The certificate and its key (files) as the only credential.
    pub fn client_certificate(
        self,
        cert_path: impl Into<String>,
        key_path: impl Into<String>,
    ) -> RelayEnv {
        self.remove("O365_CLIENT_SECRET")
            .set("O365_CLIENT_CERT_PATH", cert_path)
            .set("O365_CLIENT_KEY_PATH", key_path)
    }

    /// `O365_REDIS_URL`.
    pub fn redis_url(self, url: impl Into<String>) -> RelayEnv {
        self.set("O365_REDIS_URL", url)
    }

    /// `O365_AMQP_URL`.
    pub fn amqp_url(self, url: impl Into<String>) -> RelayEnv {
        self.set("O365_AMQP_URL", url)
    }

    /// Short retry back-off: `O365_RETRY_BASE`, `O365_RETRY_MAX`.
    pub fn retries(self, base: &str, max: &str) -> RelayEnv {
        self.set("O365_RETRY_BASE", base).set("O365_RETRY_MAX", max)
    }

    /// No reconciler and no subscription keeper: the test drives both itself.
    pub fn without_background_loops(self) -> RelayEnv {
        self.set("O365_ENABLE_RECONCILER", "false")
            .set("O365_ENABLE_KEEPER", "false")
    }

    /// `O365_ENABLE_WORKERS`.
    pub fn workers(self, on: bool) -> RelayEnv {
        self.set("O365_ENABLE_WORKERS", on.to_string())
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The pairs, in the order they were set.
    pub fn vars(&self) -> &[(String, String)] {
        &self.vars
    }

    /// The pairs, in the order they were set.
    pub fn into_vars(self) -> Vec<(String, String)> {
        self.vars
    }
}

impl From<RelayEnv> for Vec<(String, String)> {
    fn from(env: RelayEnv) -> Self {
        env.vars
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_a_name_again_replaces_its_value() {
        let names = Names::new("test");
        let env = RelayEnv::new(&names, "http://127.0.0.1:1")
            .set("O365_HTTP_TIMEOUT", "10s")
            .overrides([("O365_HTTP_TIMEOUT", "1s")]);
        assert_eq!(env.get("O365_HTTP_TIMEOUT"), Some("1s"));
        assert_eq!(
            env.vars()
                .iter()
                .filter(|(k, _)| k == "O365_HTTP_TIMEOUT")
                .count(),
            1
        );
        assert_eq!(env.get("O365_REDIS_PREFIX"), Some(names.prefix.as_str()));
    }

    #[test]
    fn one_credential_replaces_the_other() {
        let env = RelayEnv::new(&Names::new("test"), "http://127.0.0.1:1")
            .client_certificate("c.crt", "c.key")
            .client_secret("s");
        assert_eq!(env.get("O365_CLIENT_SECRET"), Some("s"));
        assert_eq!(env.get("O365_CLIENT_CERT_PATH"), None);
        assert_eq!(env.get("O365_CLIENT_KEY_PATH"), None);
        let env = env.client_certificate("c.crt", "c.key");
        assert_eq!(env.get("O365_CLIENT_SECRET"), None);
        assert_eq!(env.get("O365_CLIENT_KEY_PATH"), Some("c.key"));
    }
}
