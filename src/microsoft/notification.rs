//! The one parser for content blobs announced from outside: webhook notifications (Microsoft's
//! "Get started" guide, "Receiving notifications") and `subscriptions/content` listing entries
//! (Management Activity API reference, "List available content"). Both name a blob with the same
//! fields, and both end up as a [`WorkItem`] — so both pass the same checks here, and nothing from
//! outside reaches the work queue unchecked:
//!
//! Why it is built so: docs/DESIGN.md, "microsoft/notification".

use crate::domain::{normalise_ms_time, ContentId, ContentType, Source, TenantId, WorkItem};
use serde::Deserialize;

/// A notification or listing entry as it arrives: text until checked.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawContent {
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub content_id: Option<String>,
    #[serde(default)]
    pub content_uri: Option<String>,
    #[serde(default)]
    pub content_created: Option<String>,
    #[serde(default)]
    pub content_expiration: Option<String>,
}

/// Why a blob was refused. `reason` is a fixed vocabulary (metric label); `detail` is for the
/// sender and the log, and never holds more than a bounded piece of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRejection {
    pub reason: &'static str,
    pub detail: String,
}

fn reject(reason: &'static str, detail: impl Into<String>) -> BlobRejection {
    BlobRejection {
        reason,
        detail: detail.into(),
    }
}

/// What a blob announced from outside must satisfy for this deployment.
#[derive(Clone, Debug)]
pub struct ContentRules {
    manage_origin: url::Origin,
    /// The origin as text (`https://manage.office.com`), for canonical content URIs.
    manage_base: String,
    client_id: String,
    content_types: Vec<ContentType>,
}

impl ContentRules {
    /// `manage_url`: the Management API base (`O365_MANAGE_URL`, validated by the
    /// configuration); `client_id`: ours; `content_types`: the configured ones.
    pub fn new(
        manage_url: &str,
        client_id: &str,
        content_types: &[ContentType],
    ) -> Result<ContentRules, url::ParseError> {
        let manage_origin = url::Url::parse(manage_url)?.origin();
        Ok(ContentRules {
            manage_base: manage_origin.ascii_serialization(),
            manage_origin,
            client_id: client_id.to_ascii_lowercase(),
            content_types: content_types.to_vec(),
        })
    }

    /// Whether `url` has exactly the Management API's origin (scheme, host and port).
    pub fn is_management_url(&self, url: &url::Url) -> bool {
        url.origin() == self.manage_origin
    }

    /// A webhook notification entry → a work item, or precisely why not.
    pub fn notification(&self, raw: RawContent) -> Result<WorkItem, BlobRejection> {
        let client_id = required(raw.client_id.as_deref(), "clientId")?;
        if !client_id.eq_ignore_ascii_case(&self.client_id) {
            return Err(reject("client_id", "clientId is not this application's"));
        }
        let tenant = TenantId::parse(required(raw.tenant_id.as_deref(), "tenantId")?)
            .map_err(|_| reject("tenant", "tenantId is not a tenant GUID"))?;
        let content_type: ContentType = required(raw.content_type.as_deref(), "contentType")?
            .parse()
            .map_err(|_| reject("content_type", "contentType is not a content type"))?;
        if !self.content_types.contains(&content_type) {
            return Err(reject(
                "content_type",
                format!("content type {content_type} is not configured"),
            ));
        }
        self.blob(tenant, content_type, raw, Source::Webhook)
    }

    /// A `subscriptions/content` entry listed for `tenant` and `content_type` → a work item.
    pub fn listing_entry(
        &self,
        tenant: &TenantId,
        content_type: ContentType,
        raw: RawContent,
    ) -> Result<WorkItem, BlobRejection> {
        if let Some(ct) = raw.content_type.as_deref() {
            if ct.parse::<ContentType>().ok() != Some(content_type) {
                return Err(reject(
                    "content_type",
                    format!("listed under {content_type} with another contentType"),
                ));
            }
        }
        self.blob(tenant.clone(), content_type, raw, Source::Reconcile)
    }

    fn blob(
        &self,
        tenant: TenantId,
        content_type: ContentType,
        raw: RawContent,
        source: Source,
    ) -> Result<WorkItem, BlobRejection> {
        let content_id = ContentId::parse(required(raw.content_id.as_deref(), "contentId")?)
            .map_err(|e| reject("content_id", e))?;
        let uri = required(raw.content_uri.as_deref(), "contentUri")?;
        self.check_uri(uri, &tenant, &content_id)
            .map_err(|e| reject("content_uri", e))?;
        // The work item carries the URI rebuilt from what was checked, never the sender's
        // spelling of it (case, `%24`, dot segments).
        let content_uri = format!(
            "{}/api/v1.0/{tenant}/activity/feed/audit/{content_id}",
            self.manage_base
        );
        Ok(WorkItem {
            tenant_id: tenant,
            content_type,
            content_id,
            content_uri,
            content_created: normalise_ms_time(raw.content_created.as_deref()),
            content_expiration: normalise_ms_time(raw.content_expiration.as_deref()),
            source,
        })
    }

    /// The `contentUri` must be exactly the Management API's URL of this tenant's content id:
    /// same origin, no credentials, query or fragment.
    pub fn check_uri(
        &self,
        uri: &str,
        tenant: &TenantId,
        content_id: &ContentId,
    ) -> Result<(), String> {
        if self.is_canonical(uri, tenant, content_id) {
            return Ok(());
        }
        let url = url::Url::parse(uri).map_err(|_| "contentUri is not a URL".to_string())?;
        if !self.is_management_url(&url) {
            return Err("contentUri does not point at the Management API".into());
        }
        if !url.username().is_empty()
            || url.password().is_some()
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err("contentUri has credentials, a query or a fragment".into());
        }
        let segments: Vec<&str> = url.path().split('/').collect();
        let ok = matches!(
            segments.as_slice(),
            ["", "api", "v1.0", t, "activity", "feed", "audit", c]
                if TenantId::parse(t).is_ok_and(|t| &t == tenant)
                    && decode_dollar(c) == content_id.as_str()
        );
        if ok {
            Ok(())
        } else {
            Err("contentUri path is not /api/v1.0/{tenantId}/activity/feed/audit/{contentId} for this blob".into())
        }
    }

    /// True when `uri` is spelled exactly as the URI a work item carries
    /// (`{manage origin}/api/v1.0/{tenant}/activity/feed/audit/{contentId}`): such a URI passes
    /// every check of [`ContentRules::check_uri`] (a content id holds only `[A-Za-z0-9$_.-]`: no
    /// query, fragment or credentials; only `.` and `..` would be dot segments), so the URL
    /// parser — most of a notification's checking, and of a queued blob's recheck — is spared.
    fn is_canonical(&self, uri: &str, tenant: &TenantId, content_id: &ContentId) -> bool {
        !matches!(content_id.as_str(), "." | "..")
            && uri
                .strip_prefix(self.manage_base.as_str())
                .and_then(|r| r.strip_prefix("/api/v1.0/"))
                .and_then(|r| r.strip_prefix(tenant.as_str()))
                .and_then(|r| r.strip_prefix("/activity/feed/audit/"))
                == Some(content_id.as_str())
    }

    /// Checks a work item read back from the queue (it may have been written by an older
    /// version, or by hand): the same rules as when it entered.
    pub fn recheck(&self, item: &WorkItem) -> Result<(), String> {
        self.check_uri(&item.content_uri, &item.tenant_id, &item.content_id)
    }
}

fn required<'a>(v: Option<&'a str>, name: &str) -> Result<&'a str, BlobRejection> {
    v.filter(|s| !s.is_empty())
        .ok_or_else(|| reject("malformed", format!("{name} is missing")))
}

/// Content ids hold `$`, which a sender may percent-encode.
fn decode_dollar(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('%') {
        std::borrow::Cow::Owned(s.replace("%24", "$"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Parses a notification body: a JSON array of entries. Entries are checked by
/// [`ContentRules::notification`]; this only refuses what is not an array of objects.
pub fn parse_notification_body(body: &[u8]) -> Result<Vec<RawContent>, String> {
    serde_json::from_slice(body)
        .map_err(|e| format!("expected an array of content notifications ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "41463f53-8812-40f4-890f-865bf6e35190";
    const C: &str = "a6099727-6b7b-482c-b509-1df309acc563";

    fn rules() -> ContentRules {
        ContentRules::new("https://manage.office.com", C, &ContentType::ALL).unwrap()
    }

    fn raw(content_id: &str, uri: &str) -> RawContent {
        RawContent {
            tenant_id: Some(T.into()),
            client_id: Some(C.into()),
            content_type: Some("Audit.SharePoint".into()),
            content_id: Some(content_id.into()),
            content_uri: Some(uri.into()),
            content_created: Some("2015-05-23T17:35:00.000Z".into()),
            content_expiration: Some("not a time".into()),
        }
    }

    fn uri(id: &str) -> String {
        format!("https://manage.office.com/api/v1.0/{T}/activity/feed/audit/{id}")
    }

    #[test]
    fn a_well_formed_notification_becomes_a_work_item() {
        let item = rules().notification(raw("a$b", &uri("a$b"))).unwrap();
        assert_eq!(item.content_id.as_str(), "a$b");
        assert_eq!(
            item.content_created.as_deref(),
            Some("2015-05-23T17:35:00.000Z")
        );
        assert_eq!(item.content_expiration, None);
        assert_eq!(item.source, Source::Webhook);
    }

    #[test]
    fn over_long_content_ids_are_refused_by_name() {
        let id = "a".repeat(300);
        let e = rules().notification(raw(&id, &uri(&id))).unwrap_err();
        assert_eq!(e.reason, "content_id");
        assert!(e.detail.contains("300 bytes"), "{}", e.detail);
        let t = TenantId::parse(T).unwrap();
        let e = rules()
            .listing_entry(&t, ContentType::SharePoint, raw(&id, &uri(&id)))
            .unwrap_err();
        assert_eq!(e.reason, "content_id");
    }

    #[test]
    fn listing_entries_get_the_exact_uri_check_too() {
        let t = TenantId::parse(T).unwrap();
        let other = "https://manage.office.com/api/v1.0/7a0c1f2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b/activity/feed/audit/a";
        let e = rules()
            .listing_entry(&t, ContentType::SharePoint, raw("a", other))
            .unwrap_err();
        assert_eq!(e.reason, "content_uri");
        let ok = rules()
            .listing_entry(&t, ContentType::SharePoint, raw("a", &uri("a")))
            .unwrap();
        assert_eq!(ok.source, Source::Reconcile);
    }

    #[test]
    fn a_uri_spelled_as_the_rebuilt_one_is_accepted_and_dot_segment_ids_are_still_refused() {
        // The canonical spelling takes the fast path: same item as through the URL parser.
        let item = rules().notification(raw("a$b", &uri("a$b"))).unwrap();
        assert_eq!(item.content_uri, uri("a$b"));
        assert!(rules()
            .check_uri(&uri("a$b"), &item.tenant_id, &item.content_id)
            .is_ok());
        // `.` and `..` are valid content ids but dot segments in a URI: never accepted.
        for id in [".", ".."] {
            let e = rules().notification(raw(id, &uri(id))).unwrap_err();
            assert_eq!(e.reason, "content_uri", "{id}");
        }
        // Anything else not spelled canonically still goes through the parser's checks.
        let e = rules()
            .notification(raw("a$b", &format!("{}?x=1", uri("a$b"))))
            .unwrap_err();
        assert_eq!(e.reason, "content_uri");
        assert!(rules()
            .notification(raw("a$b", &uri("a%24b")))
            .is_ok_and(|i| i.content_uri == uri("a$b")));
    }
}
