//! Everything around a relay under test but the relay itself: names unique to the test, a
//! simulator whose tenants are already subscribed to the relay's webhook, the relay's
//! environment (client secret, those tenants served, background loops off), its two listeners,
//! a sink queue bound `#` to its exchange before anything is published, and the guard that
//! removes it all. The caller builds the relay from [`Pipeline::env`] and
//! [`Pipeline::listeners`] (this crate does not depend on the relay) and adds the queues only the
//! relay knows to [`Pipeline::guard`].

use crate::guard::ResourceGuard;
use crate::names::Names;
use crate::services::{bind, init_tracing, url_of, AMQP};
use crate::sim::SimBuilder;
use crate::sink::{Sink, SinkQueue};
use crate::RelayEnv;
use o365_sim::{PresetWebhook, Simulator};
use std::net::TcpListener;
use std::time::Duration;

/// The client secret the pipeline's simulator accepts and its relay presents.
pub const PIPELINE_SECRET: &str = "pipeline-client-secret-value";

pub struct Pipeline {
    pub names: Names,
    pub sim: Simulator,
    /// The relay's environment: pass `env.vars()` to its settings, or to `o365-relay` commands.
    pub env: RelayEnv,
    /// Bound `#` to the relay's exchange: every record is routable, and the test can read what
    /// was published.
    pub sink: Sink,
    pub guard: ResourceGuard,
    listeners: Option<(TcpListener, TcpListener)>,
}

impl Pipeline {
    /// Starts the simulator with `tenants` (each subscribed to every content type with the
    /// relay's webhook, so a publication notifies it) and binds the sink. `kind` prefixes the
    /// names (see [`Names::new`]).
    pub async fn start(kind: &str, tenants: &[&str]) -> Pipeline {
        init_tracing();
        let names = Names::new(kind);
        let (public, admin) = (bind(), bind());
        let public_url = url_of(&public);
        let sim = SimBuilder::new()
            .client_secret(PIPELINE_SECRET)
            .tenants(tenants)
            .notification_retry_delays(vec![Duration::from_millis(200), Duration::from_millis(400)])
            .configure(|c| {
                c.subscribed_webhook = Some(PresetWebhook {
                    address: format!("{public_url}/webhook"),
                    auth_id: names.auth_id.clone(),
                })
            })
            .start()
            .await;
        let env = RelayEnv::new(&names, &sim.url())
            .public_url(&public_url)
            .tenants(tenants)
            .client_secret(PIPELINE_SECRET)
            .retries("100ms", "500ms")
            .without_background_loops();
        let guard = ResourceGuard::for_relay(&names, Vec::<String>::new());
        let sink = Sink::bind(AMQP, &names.exchange, &names.sink, SinkQueue::Plain)
            .await
            .expect("RabbitMQ is running on 127.0.0.1:5672");
        Pipeline {
            names,
            sim,
            env,
            sink,
            guard,
            listeners: Some((public, admin)),
        }
    }

    /// The relay's public and admin listeners (once).
    pub fn listeners(&mut self) -> (TcpListener, TcpListener) {
        self.listeners
            .take()
            .expect("the relay's listeners are taken once")
    }

    /// Stops the simulator, closes the sink and removes every queue, the exchange and every
    /// Redis key (stop the relay first).
    pub async fn cleanup(mut self) {
        self.sim.stop().await;
        self.sink.close().await;
        self.guard.release().await;
    }
}
