//! `o365-relay check`: configuration, Redis, RabbitMQ and the token endpoint, one `ok` / `failed`
//! line each (the table is the output, so this command prints its own failures).

use super::{Failure, Outcome};
use o365_relay::app::Parts;
use o365_relay::config::{redact_url, Credential, Settings};
use o365_relay::ops::terminal::Shown;

pub async fn run() -> Outcome {
    let settings = match Settings::from_env() {
        Ok(s) => {
            println!("ok      configuration");
            s
        }
        Err(errors) => {
            println!("failed  configuration");
            for line in &errors.0 {
                println!("          {line}");
            }
            return Err(Failure::Usage(Vec::new()));
        }
    };
    let redis_urls: Vec<String> = settings
        .redis
        .urls
        .iter()
        .map(|u| redact_url(u.expose()))
        .collect();
    let redis = redis_urls.join(" ");
    let amqp = settings
        .amqp_endpoints
        .iter()
        .map(|e| redact_url(e.url.expose()))
        .collect::<Vec<_>>()
        .join(", ");
    let parts = match Parts::new(settings) {
        Ok(p) => p,
        Err(e) => {
            println!("failed  setup: {e:#}");
            return Err(Failure::Reported);
        }
    };
    // With TLS, what the certificate is checked against (never a password or a key).
    let redis = match parts.store.tls() {
        Some(trust) => format!("{redis}, TLS, {trust}"),
        None => redis,
    };
    let amqp = match parts.broker.tls() {
        Some(trust) => format!("{amqp}, TLS, {trust}"),
        None => amqp,
    };
    let mut ok = true;
    // The topology as found: a cluster's masters and replicas, Sentinel's master.
    match parts.store.ping().await.and(Ok(parts.store.report().await)) {
        Ok(Ok(found)) => println!("ok      redis ({redis}): {found}"),
        Ok(Err(e)) => println!(
            "ok      redis ({redis}): topology not readable: {}",
            Shown(e)
        ),
        Err(e) => {
            ok = false;
            println!("failed  redis ({redis}): {}", Shown(e));
        }
    }
    match parts.broker.connect().await {
        Ok(c) => {
            println!("ok      rabbitmq ({amqp}): connected to {}", c.endpoint);
            c.close("check").await;
        }
        Err(e) => {
            ok = false;
            println!("failed  rabbitmq ({amqp}): {}", Shown(e));
        }
    }
    // A token for a served tenant proves the credential; without one, reaching the endpoint
    // and having it judge our credential is the best check available.
    let tenant = parts.tenants.served_ids().await.into_iter().next();
    let login = &parts.settings.login_url;
    match tenant {
        Some(t) => match parts.tokens.entra().app_token(&t).await {
            Ok(_) => println!("ok      token endpoint ({login}, tenant {t})"),
            Err(e) => {
                ok = false;
                println!("failed  token endpoint ({login}, tenant {t}): {}", Shown(e));
            }
        },
        None => println!("skipped token endpoint ({login}): no tenant is served yet"),
    }
    if let Credential::Certificate(c) = &parts.settings.credential {
        let days = c.seconds_left() / 86_400;
        if days < 30 {
            println!(
                "warning certificate expires in {days} days ({})",
                c.not_after
            );
        } else {
            println!(
                "ok      certificate (x5t {}, expires {})",
                c.x5t, c.not_after
            );
        }
    }
    if ok {
        Ok(())
    } else {
        Err(Failure::Reported)
    }
}
