//! Why an admin request failed: the status a client gets and a message written for that client.
//! What Redis, RabbitMQ or Microsoft said stays in the error's `source`, which is logged, never
//! sent: the body names the failing dependency and, for Microsoft, its error code.

use crate::domain::TenantId;
use crate::http::consent::policy::AllowlistError;
use crate::microsoft::management::{ApiError, Disposition};
use crate::store::StoreError;
use crate::tenancy::tenants::TenantError;
use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

/// Why an admin API request failed. The `Display` text is what the client reads.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// The client sent too many wrong tokens: its token was not compared.
    #[error("too many failed sign-ins from this client; retry in {retry_after} s")]
    Throttled { retry_after: u64 },
    #[error("{0}")]
    BadRequest(String),
    #[error("tenant {0} is not registered")]
    NotRegistered(TenantId),
    #[error("tenant {0} is not on the consent allowlist")]
    NotAllowed(TenantId),
    #[error("tenant {0} is configured in O365_TENANTS; remove it there")]
    Static(TenantId),
    /// The request contradicts the tenant's state (e.g. approving a tenant that is not pending).
    #[error("{0}")]
    Conflict(String),
    #[error("RabbitMQ is unavailable; retry later")]
    Broker(#[source] crate::broker::BrokerError),
    #[error("the tenant registry (Redis) is unavailable; retry later")]
    Store(#[source] StoreError),
    #[error("{}", management_message(.0))]
    Management(#[source] ApiError),
}

fn management_message(e: &ApiError) -> String {
    match e {
        ApiError::Api { code, .. } => format!("the Management API refused the request ({code})"),
        ApiError::Token(_) => {
            "no token for this tenant: check its consent and the relay's credential".into()
        }
        ApiError::Transport { .. } | ApiError::Body(_) => {
            "the Management API could not be reached; retry later".into()
        }
        ApiError::ForeignUrl(_) => "the Management API answered with a foreign address".into(),
    }
}

impl AdminError {
    fn code(&self) -> Option<&str> {
        match self {
            AdminError::Management(e) => Some(e.code()),
            _ => None,
        }
    }
}

impl ResponseError for AdminError {
    fn status_code(&self) -> StatusCode {
        match self {
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::NotRegistered(_) | AdminError::NotAllowed(_) => StatusCode::NOT_FOUND,
            AdminError::Static(_) | AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::Store(_) | AdminError::Broker(_) => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::Management(e) => management_status(e),
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = serde_json::json!({ "error": self.to_string() });
        if let Some(code) = self.code() {
            body["code"] = code.into();
        }
        let mut response = HttpResponse::build(self.status_code());
        if let AdminError::Throttled { retry_after } = self {
            response.insert_header((header::RETRY_AFTER, *retry_after));
        }
        response.json(body)
    }
}

/// A Management API failure as the admin client should see it: a refusal that will not change
/// by retrying is Microsoft's verdict on the request (422 for a tenant or subscription problem,
/// 502 for anything else Microsoft did wrong); throttling and outages are 503, so a client
/// retries; no token is 424 (the request depends on a consent or credential that failed).
fn management_status(e: &ApiError) -> StatusCode {
    match e {
        ApiError::Token(_) => StatusCode::FAILED_DEPENDENCY,
        ApiError::Transport { .. } => StatusCode::SERVICE_UNAVAILABLE,
        ApiError::Api { .. } => match e.disposition() {
            Disposition::Retry(_) => StatusCode::SERVICE_UNAVAILABLE,
            Disposition::StartSubscription | Disposition::GiveUp => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
        },
        ApiError::Body(_) | ApiError::ForeignUrl(_) => StatusCode::BAD_GATEWAY,
    }
}

impl From<TenantError> for AdminError {
    fn from(e: TenantError) -> Self {
        match e {
            TenantError::Static(t) => AdminError::Static(t),
            e @ TenantError::NotPending(..) => AdminError::Conflict(e.to_string()),
            TenantError::Store(e) => AdminError::Store(e),
        }
    }
}

impl From<AllowlistError> for AdminError {
    fn from(e: AllowlistError) -> Self {
        match e {
            e @ AllowlistError::Configured(_) => AdminError::Conflict(e.to_string()),
            AllowlistError::Store(e) => AdminError::Store(e),
        }
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        AdminError::Store(e)
    }
}

impl From<ApiError> for AdminError {
    fn from(e: ApiError) -> Self {
        AdminError::Management(e)
    }
}

/// Logs what the client is not told.
pub(super) fn logged(e: AdminError) -> AdminError {
    if let Some(source) = std::error::Error::source(&e) {
        tracing::warn!(error = %e, cause = %source, "Admin API request failed.");
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> ApiError {
        ApiError::Api {
            status,
            code: code.into(),
            message: "internal detail from Microsoft".into(),
            retry_after: None,
        }
    }

    #[test]
    fn management_errors_keep_their_code_and_hide_microsofts_text() {
        for (e, status) in [
            (api(429, "AF429"), StatusCode::SERVICE_UNAVAILABLE),
            (api(500, "AF50000"), StatusCode::SERVICE_UNAVAILABLE),
            (api(400, "AF20022"), StatusCode::UNPROCESSABLE_ENTITY),
            (api(403, "AF10001"), StatusCode::UNPROCESSABLE_ENTITY),
            (
                ApiError::Transport {
                    during: "sending the request",
                    source: "connection refused by 10.0.0.7".into(),
                },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                ApiError::Body("unreadable at byte 7".into()),
                StatusCode::BAD_GATEWAY,
            ),
        ] {
            let code = e.code().to_string();
            let err = AdminError::from(e);
            assert_eq!(err.status_code(), status, "{err:?}");
            let text = err.to_string();
            assert!(!text.contains("internal detail"), "{text}");
            assert!(!text.contains("10.0.0.7"), "{text}");
            assert_eq!(err.code(), Some(code.as_str()));
            // The cause is kept for the log.
            assert!(std::error::Error::source(&err).is_some());
        }
    }

    #[test]
    fn store_errors_name_the_dependency_not_its_message() {
        let err = AdminError::from(StoreError::Unavailable("10.1.2.3:6379 refused".into()));
        assert_eq!(err.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!err.to_string().contains("10.1.2.3"));
        assert!(err.to_string().contains("Redis"));
    }
}
