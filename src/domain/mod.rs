//! Validated types parsed at the edge: tenants, content types, content ids and the work item
//! that travels through the work queue. Handlers never pass loosely typed JSON around.

pub mod certs;
pub mod secret;
pub mod text;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A tenant GUID, normalised to lower-case hyphenated form (Microsoft's spelling).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(s: &str) -> Result<Self, String> {
        let u = uuid::Uuid::parse_str(s.trim()).map_err(|_| {
            format!(
                "'{s}' is not a tenant GUID (expected e.g. 41463f53-8812-40f4-890f-865bf6e35190)"
            )
        })?;
        if s.trim().len() != 36 {
            return Err(format!("'{s}' is not a hyphenated tenant GUID"));
        }
        Ok(TenantId(u.hyphenated().to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for TenantId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        TenantId::parse(&s)
    }
}

impl From<TenantId> for String {
    fn from(t: TenantId) -> String {
        t.0
    }
}

impl FromStr for TenantId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TenantId::parse(s)
    }
}

/// The five content types of the Management Activity API (Office 365 Management Activity API
/// reference, "Working with the Office 365 Management Activity API").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ContentType {
    AzureActiveDirectory,
    Exchange,
    SharePoint,
    General,
    Dlp,
}

impl ContentType {
    pub const ALL: [ContentType; 5] = [
        ContentType::AzureActiveDirectory,
        ContentType::Exchange,
        ContentType::SharePoint,
        ContentType::General,
        ContentType::Dlp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::AzureActiveDirectory => "Audit.AzureActiveDirectory",
            ContentType::Exchange => "Audit.Exchange",
            ContentType::SharePoint => "Audit.SharePoint",
            ContentType::General => "Audit.General",
            ContentType::Dlp => "DLP.All",
        }
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ContentType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ContentType::ALL
            .into_iter()
            .find(|ct| ct.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!(
                    "'{s}' is not a content type (expected one of Audit.AzureActiveDirectory, Audit.Exchange, Audit.SharePoint, Audit.General, DLP.All)"
                )
            })
    }
}

impl TryFrom<String> for ContentType {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<ContentType> for String {
    fn from(c: ContentType) -> String {
        c.as_str().to_string()
    }
}

/// A content (blob) id. Microsoft's ids are made of digits, letters and `$`
/// (`492638008028$492638008028$f28a…$04`, about 100 bytes); anything outside a conservative
/// alphabet is refused so an id can be used in a URL path and a Redis key without escaping, and
/// anything longer than [`ContentId::MAX_LEN`] is refused because the id is the work item's AMQP
/// `message_id` (a short string: 255 bytes at most).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContentId(String);

impl ContentId {
    pub const MAX_LEN: usize = 255;

    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("contentId is empty".into());
        }
        if s.len() > Self::MAX_LEN {
            return Err(format!(
                "contentId is {} bytes long (at most {} allowed)",
                s.len(),
                Self::MAX_LEN
            ));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'$' | b'_' | b'-' | b'.'))
        {
            return Err("contentId has characters outside [A-Za-z0-9$_.-]".into());
        }
        Ok(ContentId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ContentId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        ContentId::parse(&s)
    }
}

impl From<ContentId> for String {
    fn from(c: ContentId) -> String {
        c.0
    }
}

/// Where a work item came from: a webhook notification or the reconciler's listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Webhook,
    Reconcile,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Webhook => "webhook",
            Source::Reconcile => "reconcile",
        }
    }
}

/// One content blob waiting to be fetched: the message body of the work queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkItem {
    pub tenant_id: TenantId,
    pub content_type: ContentType,
    pub content_id: ContentId,
    pub content_uri: String,
    #[serde(default)]
    pub content_created: Option<String>,
    #[serde(default)]
    pub content_expiration: Option<String>,
    pub source: Source,
}

impl WorkItem {
    /// The headers naming the blob, on its work item and on each of its records.
    pub fn header_pairs(&self) -> [(&'static str, &str); 2] {
        [
            ("o365-tenant-id", self.tenant_id.as_str()),
            ("o365-content-type", self.content_type.as_str()),
        ]
    }

    /// Seconds until the blob expires at Microsoft (7 days after creation), when known.
    pub fn expires_in(&self) -> Option<i64> {
        let exp = self.content_expiration.as_deref()?;
        let exp = parse_ms_time(exp)?;
        Some((exp - chrono::Utc::now()).num_seconds())
    }
}

/// A Microsoft timestamp from outside, checked and normalised to RFC 3339 (UTC, milliseconds);
/// `None` for anything that is not a time (it is then treated as unknown, never trusted).
pub fn normalise_ms_time(s: Option<&str>) -> Option<String> {
    let s = s?;
    if s.len() > 64 {
        return None;
    }
    parse_ms_time(s).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Parses Microsoft's timestamps: RFC 3339 (`2015-05-30T17:35:00.000Z`) or zone-less
/// `2015-06-29T20:03:19` (UTC by the API's convention).
pub fn parse_ms_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&chrono::Utc));
    }
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|n| n.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_normalised_and_checked() {
        let t = TenantId::parse("41463F53-8812-40F4-890F-865BF6E35190").unwrap();
        assert_eq!(t.as_str(), "41463f53-8812-40f4-890f-865bf6e35190");
        assert!(TenantId::parse("contoso.onmicrosoft.com").is_err());
        assert!(TenantId::parse("41463f53881240f4890f865bf6e35190").is_err());
    }

    #[test]
    fn content_types_round_trip() {
        for ct in ContentType::ALL {
            assert_eq!(ct.as_str().parse::<ContentType>().unwrap(), ct);
        }
        assert!("Audit.Everything".parse::<ContentType>().is_err());
    }

    #[test]
    fn content_ids_accept_microsoft_shapes_only() {
        assert!(ContentId::parse("492638008028$492638008028$f28ab78ad40140608012736e373933ebspo2015043022$4a81a7c326fc4aed89c62e6039ab833b$04").is_ok());
        assert!(ContentId::parse("../../etc/passwd").is_err());
        assert!(ContentId::parse("a?b").is_err());
        assert!(ContentId::parse("").is_err());
        assert!(ContentId::parse(&"a$".repeat(127)).is_ok());
        assert!(ContentId::parse(&"a".repeat(256)).is_err());
    }

    #[test]
    fn microsoft_times_parse_with_and_without_zone() {
        assert!(parse_ms_time("2015-05-30T17:35:00.000Z").is_some());
        assert!(parse_ms_time("2015-06-29T20:03:19").is_some());
        assert!(parse_ms_time("yesterday").is_none());
    }
}
