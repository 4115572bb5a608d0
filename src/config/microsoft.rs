//! Who the relay is to Microsoft and which Microsoft it talks to: the app registration (client
//! id and credential), the webhook `authId`, the cloud and its two base URLs, the tenants served
//! without consent, the `PublisherIdentifier` and the content types.

use super::parse::Parser;
use super::BaseUrl;
use crate::domain::certs::ClientCertificate;
use crate::domain::secret::Secret;
use crate::domain::{ContentType, TenantId};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
struct Raw {
    client_id: Option<String>,
    client_cert_path: Option<String>,
    client_key_path: Option<String>,
    client_secret: Option<String>,
    webhook_auth_id: Option<String>,
    tenants: Option<String>,
    publisher_id: Option<String>,
    content_types: Option<String>,
    cloud: Option<String>,
    login_url: Option<String>,
    manage_url: Option<String>,
}

/// The client credential used with Entra ID.
#[derive(Clone, Debug)]
pub enum Credential {
    Certificate(ClientCertificate),
    Secret(Secret<String>),
}

pub(super) struct Microsoft {
    pub client_id: String,
    /// `None` only when a problem with the credential was recorded.
    pub credential: Option<Credential>,
    pub webhook_auth_id: Secret<String>,
    pub tenants: Vec<TenantId>,
    pub publisher_id: Option<TenantId>,
    pub content_types: Vec<ContentType>,
    pub login_url: BaseUrl,
    pub manage_url: BaseUrl,
}

pub(super) fn read(vars: &[(String, String)], p: &mut Parser) -> Microsoft {
    let raw: Raw = p.raw(vars);
    let client_id = client_id(p, raw.client_id);
    let credential = credential(
        p,
        raw.client_cert_path,
        raw.client_key_path,
        raw.client_secret,
    );
    let webhook_auth_id = webhook_auth_id(p, raw.webhook_auth_id);
    let tenants = tenant_list(p, "TENANTS", raw.tenants);
    let publisher_id = raw
        .publisher_id
        .filter(|s| !s.trim().is_empty())
        .and_then(|s| {
            TenantId::parse(&s)
                .map_err(|e| p.fail("PUBLISHER_ID", e))
                .ok()
        });
    let content_types = content_types(p, raw.content_types);
    let (login_url, manage_url) = endpoints(p, raw.cloud, raw.login_url, raw.manage_url);
    Microsoft {
        client_id,
        credential,
        webhook_auth_id,
        tenants,
        publisher_id,
        content_types,
        login_url,
        manage_url,
    }
}

/// The app registration's Application (client) ID, lower-case.
fn client_id(p: &mut Parser, v: Option<String>) -> String {
    let client_id = p.text("CLIENT_ID", v, "");
    if !client_id.is_empty() && uuid::Uuid::parse_str(&client_id).is_err() {
        p.fail(
            "CLIENT_ID",
            format!("'{client_id}' is not a GUID (the app registration's Application (client) ID)"),
        );
    }
    client_id.to_ascii_lowercase()
}

/// A certificate and key, or else a client secret. With both, the certificate is used and
/// `O365_CLIENT_SECRET` is ignored.
fn credential(
    p: &mut Parser,
    cert_path: Option<String>,
    key_path: Option<String>,
    secret: Option<String>,
) -> Option<Credential> {
    let cert = match (
        cert_path.filter(|s| !s.is_empty()),
        key_path.filter(|s| !s.is_empty()),
    ) {
        (Some(c), Some(k)) => ClientCertificate::load(&c, &k)
            .map_err(|e| p.fail_line(e))
            .ok(),
        (Some(_), None) => {
            p.fail(
                "CLIENT_KEY_PATH",
                "is required when O365_CLIENT_CERT_PATH is set",
            );
            None
        }
        (None, Some(_)) => {
            p.fail(
                "CLIENT_CERT_PATH",
                "is required when O365_CLIENT_KEY_PATH is set",
            );
            None
        }
        (None, None) => None,
    };
    let secret = secret.filter(|s| !s.is_empty()).map(Secret::new);
    match (cert, secret) {
        (Some(c), _) => Some(Credential::Certificate(c)),
        (None, Some(s)) => Some(Credential::Secret(s)),
        (None, None) => {
            if !p.failed("CLIENT_CERT_PATH") && !p.failed("CLIENT_KEY_PATH") {
                p.fail(
                    "CLIENT_CERT_PATH",
                    "no client credential: set O365_CLIENT_CERT_PATH and O365_CLIENT_KEY_PATH, or O365_CLIENT_SECRET",
                );
            }
            None
        }
    }
}

/// The `authId` registered with every webhook subscription (Office 365 Management Activity API
/// reference, "Start a subscription": `webhook.authId`).
fn webhook_auth_id(p: &mut Parser, v: Option<String>) -> Secret<String> {
    let auth_id = p.text("WEBHOOK_AUTH_ID", v, "");
    if !auth_id.is_empty() && auth_id.chars().count() < 16 {
        p.fail(
            "WEBHOOK_AUTH_ID",
            "is shorter than 16 characters; use a long random value",
        );
    }
    Secret::new(auth_id)
}

/// Comma-separated tenant GUIDs in `O365_{var}`, duplicates dropped.
pub(super) fn tenant_list(p: &mut Parser, var: &str, v: Option<String>) -> Vec<TenantId> {
    let mut tenants = Vec::new();
    for t in v
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        match TenantId::parse(t) {
            Ok(t) if !tenants.contains(&t) => tenants.push(t),
            Ok(_) => {}
            Err(e) => p.fail(var, e),
        }
    }
    tenants
}

/// Comma-separated content types, duplicates dropped; all five when unset.
fn content_types(p: &mut Parser, v: Option<String>) -> Vec<ContentType> {
    let Some(list) = v.filter(|s| !s.trim().is_empty()) else {
        return ContentType::ALL.to_vec();
    };
    let mut content_types = Vec::new();
    for c in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match c.parse::<ContentType>() {
            Ok(ct) if !content_types.contains(&ct) => content_types.push(ct),
            Ok(_) => {}
            Err(e) => p.fail("CONTENT_TYPES", e),
        }
    }
    if content_types.is_empty() {
        p.fail("CONTENT_TYPES", "lists no content type");
    }
    content_types
}

/// The two base URLs of each Microsoft cloud: (login, manage). Manage URLs per plan: Office 365
/// Management Activity API reference, "Activity API operations"; login URLs: Microsoft identity
/// platform, "National clouds" ("Microsoft Entra authentication endpoints"). The first is the
/// default.
const CLOUDS: [(&str, (&str, &str)); 4] = [
    (
        "enterprise",
        (
            "https://login.microsoftonline.com",
            "https://manage.office.com",
        ),
    ),
    (
        "gcc",
        (
            "https://login.microsoftonline.com",
            "https://manage-gcc.office.com",
        ),
    ),
    (
        "gcc-high",
        (
            "https://login.microsoftonline.us",
            "https://manage.office365.us",
        ),
    ),
    (
        "dod",
        (
            "https://login.microsoftonline.us",
            "https://manage.protection.apps.mil",
        ),
    ),
];

/// `O365_LOGIN_URL` and `O365_MANAGE_URL`, each defaulting to the `O365_CLOUD` preset. The
/// manage URL is an origin: it is also the token `resource` and the only origin a `contentUri`
/// may have.
fn endpoints(
    p: &mut Parser,
    cloud: Option<String>,
    login: Option<String>,
    manage: Option<String>,
) -> (BaseUrl, BaseUrl) {
    let (login_preset, manage_preset) = p.choice("CLOUD", cloud, &CLOUDS, "a cloud");
    let preset = |s: &str| BaseUrl::parse(s).expect("the cloud presets are base URLs");
    let login = p.text("LOGIN_URL", login, login_preset);
    let login_url = p
        .base_url("LOGIN_URL", &login, "")
        .unwrap_or_else(|| preset(login_preset));
    let manage = p.text("MANAGE_URL", manage, manage_preset);
    let manage_url = match p.base_url("MANAGE_URL", &manage, "") {
        Some(u) if u.has_path() => {
            p.fail(
                "MANAGE_URL",
                "must be an origin without a path (e.g. https://manage.office.com)",
            );
            u
        }
        Some(u) => u,
        None => preset(manage_preset),
    };
    (login_url, manage_url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cloud_preset_is_a_base_url_and_the_manage_one_an_origin() {
        for (cloud, (login, manage)) in CLOUDS {
            assert!(BaseUrl::parse(login).is_ok(), "{cloud}");
            assert!(!BaseUrl::parse(manage).unwrap().has_path(), "{cloud}");
        }
    }
}
