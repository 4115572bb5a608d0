//! Who may onboard through the consent flow, and its settings: `O365_CONSENT_MODE` and its
//! allowlist, how often one client may start a consent, and the key that signs the consent
//! `state` (`src/http/consent/state.rs`).

use super::parse::{Bounds, Parser};
use crate::domain::secret::Secret;
use crate::domain::TenantId;
use serde::Deserialize;

/// The shortest consent state key accepted, in bytes (`O365_CONSENT_STATE_KEY`, or the one
/// the replicas share through Redis).
pub const MIN_CONSENT_KEY_LEN: usize = 32;
use MIN_CONSENT_KEY_LEN as MIN_KEY_LEN;

#[derive(Debug, Default, Deserialize)]
struct Raw {
    consent_mode: Option<String>,
    consent_allowed_tenants: Option<String>,
    consent_starts_per_minute: Option<String>,
    consent_state_key: Option<String>,
}

/// `O365_CONSENT_MODE`: which tenants a completed consent registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsentMode {
    /// Any tenant whose admin consents is served at once.
    Open,
    /// Only tenants on the allowlist (`O365_CONSENT_ALLOWED_TENANTS`, the admin API, and
    /// `O365_TENANTS`) are registered; others see a page saying this relay does not serve them.
    Allowlist,
    /// A consenting tenant is registered `pending` and served nothing until an operator
    /// approves it.
    Approval,
}

impl ConsentMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentMode::Open => "open",
            ConsentMode::Allowlist => "allowlist",
            ConsentMode::Approval => "approval",
        }
    }
}

/// `O365_CONSENT_STARTS_PER_MINUTE`, per client and replica: 1 to 600.
const STARTS_PER_MINUTE: Bounds<u32> = Bounds::new(1, 600);

pub(super) struct Consent {
    pub mode: ConsentMode,
    pub allowed_tenants: Vec<TenantId>,
    pub starts_per_minute: u32,
    pub state_key: Option<Secret<String>>,
}

pub(super) fn read(vars: &[(String, String)], p: &mut Parser) -> Consent {
    let raw: Raw = p.raw(vars);
    let mode = p.choice(
        "CONSENT_MODE",
        raw.consent_mode,
        &[
            ("open", ConsentMode::Open),
            ("allowlist", ConsentMode::Allowlist),
            ("approval", ConsentMode::Approval),
        ],
        "a consent mode",
    );
    let allowed_tenants =
        super::microsoft::tenant_list(p, "CONSENT_ALLOWED_TENANTS", raw.consent_allowed_tenants);
    // An allowlist that is not in force is a mistake worth stopping for: the operator believes
    // onboarding is restricted while any tenant can onboard.
    if !allowed_tenants.is_empty() && mode != ConsentMode::Allowlist && !p.failed("CONSENT_MODE") {
        p.fail(
            "CONSENT_ALLOWED_TENANTS",
            format!(
                "is set but O365_CONSENT_MODE is {}, so it would not restrict anything; set O365_CONSENT_MODE=allowlist or remove it",
                mode.as_str()
            ),
        );
    }
    Consent {
        mode,
        allowed_tenants,
        starts_per_minute: p.number(
            "CONSENT_STARTS_PER_MINUTE",
            raw.consent_starts_per_minute,
            10,
            STARTS_PER_MINUTE,
        ),
        state_key: state_key(p, raw.consent_state_key),
    }
}

/// `O365_CONSENT_STATE_KEY`: the HMAC key of consent states, its bytes as given (surrounding
/// whitespace, e.g. a file's newline, dropped); unset = one shared through Redis.
fn state_key(p: &mut Parser, v: Option<String>) -> Option<Secret<String>> {
    let key = v
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .map(Secret::new)?;
    if key.expose().len() < MIN_KEY_LEN {
        p.fail(
            "CONSENT_STATE_KEY",
            format!("is shorter than {MIN_KEY_LEN} bytes; use a long random value, e.g. `openssl rand -base64 48`"),
        );
    }
    Some(key)
}
