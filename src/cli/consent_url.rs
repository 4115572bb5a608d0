//! `o365-relay consent-url`: the authorize URL with a state the callback accepts (without one,
//! the callback would refuse the admin's return): single use, valid 10 minutes, so it needs
//! Redis.

use super::{parts, Failure, Outcome};
use o365_relay::consent::ConsentError;

pub async fn run() -> Outcome {
    let parts = parts()?;
    let url = parts.consent().link().await.map_err(|e| match e {
        ConsentError::NoPublicUrl => {
            Failure::usage("O365_PUBLIC_URL: is required to build the consent URL")
        }
        other => Failure::Failed(anyhow::Error::new(other).context("cannot issue a consent link")),
    })?;
    println!("{url}");
    if let Some(public) = &parts.settings.public_url {
        eprintln!(
            "This link works once and for 10 minutes. For a link that does not expire, send the tenant admin {}/consent",
            public.as_str().trim_end_matches('/')
        );
    }
    Ok(())
}
