//! `o365-relay consent-url`: the link that starts the admin consent for this deployment,
//! `{O365_PUBLIC_URL}/consent/start`. Opened by the tenant admin, it creates the single-use
//! `state` in *their* browser and sends them on to Microsoft; a state minted here could not be
//! bound to that browser, so the callback would refuse it (src/http/consent/).

use super::{settings, Failure, Outcome};

pub async fn run() -> Outcome {
    let settings = settings()?;
    let public = settings
        .public_url
        .as_ref()
        .ok_or_else(|| Failure::usage("O365_PUBLIC_URL: is required to build the consent URL"))?;
    println!("{public}/consent/start");
    eprintln!(
        "Send this link to the tenant's admin: it opens Microsoft's consent prompt. {public}/consent first explains what is requested."
    );
    Ok(())
}
