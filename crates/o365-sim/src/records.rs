//! Realistic audit records, Microsoft-shaped content ids and blob publication.
//!
//! Records follow the common schema (Office 365 Management Activity API schema, "Common
//! schema") plus workload-specific fields, and carry on purpose the odd shapes collectors trip
//! over, spread over the records of every blob:
//! `ClientIP` null / with a port / bracketed IPv6 with a port, numbers as strings, nested arrays
//! and objects, raw and `\u`-escaped unicode (including surrogate pairs), integers beyond 2^53,
//! exponent floats, empty strings, non-alphabetical key order. Roughly 1 record in 20 of a blob
//! is repeated byte-identically in the next blob of the same tenant and content type (Microsoft
//! does this by design; de-duplication on `Id` is the collector's job).

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound as _, Utc};
use rand::seq::IndexedRandom;
use rand::Rng;

use super::{ms_time, Inner, SimBlob, StoredBlob};

/// Workload suffix inside a content id, per content type.
fn id_suffix(content_type: &str) -> &'static str {
    match content_type {
        "Audit.AzureActiveDirectory" => "aad2015043022",
        "Audit.Exchange" => "exo2015043022",
        "Audit.SharePoint" => "spo2015043022",
        "DLP.All" => "dlp2015043022",
        _ => "gen2015043022",
    }
}

fn hex32() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// `{12 digits}${12 digits}${32 hex}{workload suffix}${32 hex}$04`
pub(crate) fn content_id(content_type: &str) -> String {
    let n: u64 = rand::rng().random_range(100_000_000_000..1_000_000_000_000);
    format!(
        "{n:012}${n:012}${}{}${}$04",
        hex32(),
        id_suffix(content_type),
        hex32()
    )
}

/// A JSON string literal for `s` (escaped by serde_json: raw unicode stays raw).
pub(crate) fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// An ordered list of (key, raw JSON value) rendered as one object. Values stay raw JSON text
/// so that odd shapes (numbers as strings, escapes) survive byte for byte.
pub(crate) struct Rec(Vec<(Cow<'static, str>, String)>);

impl Rec {
    fn put(&mut self, k: &'static str, v: impl Into<String>) {
        self.0.push((Cow::Borrowed(k), v.into()));
    }
    fn s(&mut self, k: &'static str, v: &str) {
        self.put(k, js(v));
    }
    /// Replace the raw JSON value of `k` in place (keeping the key order), or append it.
    pub(crate) fn set(&mut self, k: &str, raw: impl Into<String>) {
        let raw = raw.into();
        match self.0.iter_mut().find(|(key, _)| key == k) {
            Some((_, v)) => *v = raw,
            None => self.0.push((Cow::Owned(k.to_string()), raw)),
        }
    }
    pub(crate) fn render(&self) -> String {
        // Keys are escaped because hostile builders may use caller-chosen field names.
        let fields: Vec<String> = self
            .0
            .iter()
            .map(|(k, v)| format!("{}:{v}", js(k)))
            .collect();
        format!("{{{}}}", fields.join(","))
    }
}

const USERS: [&str; 4] = [
    "admin@contoso.onmicrosoft.com",
    "alex.wilber@contoso.onmicrosoft.com",
    "megan.bowen@contoso.onmicrosoft.com",
    "renée.dupont@contoso.onmicrosoft.com",
];

/// Build one record: (rendered text, Id).
fn record(tenant: &str, content_type: &str, i: usize, created: &DateTime<Utc>) -> (String, String) {
    let (r, id) = build_record(tenant, content_type, i, created);
    (r.render(), id)
}

/// Build one record as editable fields, plus its Id. `i` is the index in the blob: it decides
/// which odd shapes it carries, so any blob of 12+ records carries all of them.
pub(crate) fn build_record(
    tenant: &str,
    content_type: &str,
    i: usize,
    created: &DateTime<Utc>,
) -> (Rec, String) {
    let mut rng = rand::rng();
    let id = uuid::Uuid::new_v4().to_string();
    let user = USERS[i % USERS.len()];
    let when = (*created - chrono::Duration::seconds(rng.random_range(1..600)))
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    // Unicode: raw, escaped (incl. a surrogate pair), or plain ASCII.
    let display = match i % 3 {
        0 => js("Réunion 日本 — plan 🎉.docx"),
        1 => "\"R\\u00e9union \\u65e5\\u672c \\ud83d\\ude00.docx\"".to_string(),
        _ => js("Quarterly report.xlsx"),
    };
    let client_ip = match i % 4 {
        0 => js(&format!(
            "40.126.{}.{}",
            rng.random_range(0..255),
            rng.random_range(1..255)
        )),
        1 => "null".into(),
        2 => js("1.2.3.4:12345"),
        _ => js("[fdfd::555]:12346"),
    };
    let user_type = if i % 5 == 2 {
        js("0")
    } else {
        (if i % 7 == 3 { "2" } else { "0" }).to_string()
    };

    let (record_type, operation, workload) = kind(content_type, i);
    let mut r = Rec(Vec::new());
    r.s("CreationTime", &when);
    r.s("Id", &id);
    r.s("Operation", operation);
    r.s("OrganizationId", tenant);
    // Numbers as strings now and then.
    r.put(
        "RecordType",
        if i % 11 == 6 {
            js(&record_type.to_string())
        } else {
            record_type.to_string()
        },
    );
    r.s("ResultStatus", if i % 6 == 4 { "" } else { "Succeeded" });
    r.s(
        "UserKey",
        &format!(
            "{}@contoso.onmicrosoft.com",
            1_153_977_025_279_851_686u64 + i as u64
        ),
    );
    r.put("UserType", user_type);
    r.s("Workload", workload);
    r.put("ClientIP", client_ip);
    r.put("ObjectId", display.clone());
    r.s("UserId", user);
    specific(&mut r, content_type, record_type, i, &display);
    // Big integers and exponent floats.
    match i % 4 {
        1 => r.put("EventSequence", "9223372036854775807"),
        3 => r.put("CorrelationCounter", "18446744073709551615"),
        _ => {}
    }
    if i % 5 == 1 {
        r.put("RiskScore", "1.0e-7");
    }
    if i % 6 == 4 {
        r.s("UserAgent", "");
    }
    (r, id)
}

/// (RecordType, Operation, Workload) per content type.
fn kind(content_type: &str, i: usize) -> (u32, &'static str, &'static str) {
    match content_type {
        "Audit.AzureActiveDirectory" => match i % 3 {
            0 => (15, "UserLoggedIn", "AzureActiveDirectory"),
            1 => (
                9,
                "PasswordLogonInitialAuthUsingPassword",
                "AzureActiveDirectory",
            ),
            _ => (15, "UserLoginFailed", "AzureActiveDirectory"),
        },
        "Audit.Exchange" => match i % 3 {
            0 => (2, "Send", "Exchange"),
            1 => (50, "MailItemsAccessed", "Exchange"),
            _ => (2, "Update", "Exchange"),
        },
        "Audit.SharePoint" => match i % 4 {
            0 => (6, "FileAccessed", "SharePoint"),
            1 => (14, "SharingSet", "SharePoint"),
            2 => (6, "FileModified", "OneDrive"),
            _ => (4, "SiteCollectionAdminAdded", "SharePoint"),
        },
        "DLP.All" => match i % 3 {
            0 => (11, "DLPRuleMatch", "SharePoint"),
            1 => (13, "DLPRuleMatch", "Exchange"),
            _ => (33, "DLPRuleMatch", "SharePoint"),
        },
        _ => match i % 4 {
            0 => (25, "MessageSent", "MicrosoftTeams"),
            1 => (20, "ViewReport", "PowerBI"),
            2 => (261, "CopilotInteraction", "Copilot"),
            _ => (64, "AirInvestigationData", "AirInvestigation"),
        },
    }
}

/// Workload-specific fields (nested arrays/objects of several shapes).
fn specific(r: &mut Rec, content_type: &str, record_type: u32, i: usize, display: &str) {
    let g = || uuid::Uuid::new_v4().to_string();
    match content_type {
        "Audit.AzureActiveDirectory" => {
            r.put(
                "AzureActiveDirectoryEventType",
                if i % 2 == 0 { "1" } else { "0" },
            );
            r.put(
                "ExtendedProperties",
                format!(
                    "[{{\"Name\":\"UserAgent\",\"Value\":\"Mozilla/5.0 (Windows NT 10.0; Win64; x64)\"}},{{\"Name\":\"RequestType\",\"Value\":\"OAuth2:Token\"}},{{\"Name\":\"LoginError\",\"Value\":\"-2147217390;PP_E_BAD_PASSWORD;The entered and stored passwords do not match.\"}},{{\"Name\":\"DisplayName\",\"Value\":{display}}}]"
                ),
            );
            r.put(
                "ModifiedProperties",
                "[{\"Name\":\"StrongAuthenticationMethod\",\"NewValue\":\"[{\\\"MethodType\\\":6,\\\"Default\\\":true}]\",\"OldValue\":\"[]\"},{\"Name\":\"Included Updated Properties\",\"NewValue\":\"\",\"OldValue\":\"\"}]",
            );
            r.put(
                "Actor",
                format!("[{{\"ID\":\"{}\",\"Type\":0}},{{\"ID\":\"admin@contoso.onmicrosoft.com\",\"Type\":5}}]", g()),
            );
            r.s("ActorContextId", &g());
            r.s("ApplicationId", "00000002-0000-0ff1-ce00-000000000000");
            r.s("InterSystemsId", &g());
            r.s("IntraSystemId", &g());
            r.put("Target", format!("[{{\"ID\":\"{}\",\"Type\":0}}]", g()));
            if record_type == 9 {
                r.s("Client", "Exchange");
                r.put("LoginStatus", "-2147217390");
                r.s("UserDomain", "contoso.onmicrosoft.com");
            } else {
                r.s("ErrorNumber", "0");
                r.put("DeviceProperties", "[{\"Name\":\"OS\",\"Value\":\"Windows 10\"},{\"Name\":\"BrowserType\",\"Value\":\"Edge\"},{\"Name\":\"IsCompliant\",\"Value\":\"True\"}]");
            }
        }
        "Audit.Exchange" => {
            r.s("AppId", "00000002-0000-0ff1-ce00-000000000000");
            r.s("ClientInfoString", "Client=OWA;Action=ViaProxy");
            r.s("ExternalAccess", "false");
            r.put("InternalLogonType", "0");
            r.put(
                "LogonType",
                if i % 2 == 0 { "0" } else { "\"0\"" }.to_string(),
            );
            r.s(
                "LogonUserSid",
                "S-1-5-21-1234567890-1234567890-1234567890-1001",
            );
            r.s("MailboxGuid", &g());
            r.s("MailboxOwnerUPN", USERS[i % USERS.len()]);
            if record_type == 50 {
                r.put("OperationCount", "3");
                r.put(
                    "Folders",
                    format!(
                        "[{{\"FolderItems\":[{{\"InternetMessageId\":\"<{}@contoso.com>\",\"SizeInBytes\":12345}},{{\"InternetMessageId\":\"<{}@contoso.com>\",\"SizeInBytes\":9007199254740993}}],\"Id\":\"LgAAAAD\",\"Path\":\"\\\\Inbox\"}}]",
                        hex32(),
                        hex32()
                    ),
                );
                r.put("OperationProperties", "[{\"Name\":\"MailAccessType\",\"Value\":\"Bind\"},{\"Name\":\"IsThrottled\",\"Value\":\"False\"}]");
            } else {
                r.put(
                    "Item",
                    format!(
                        "{{\"Id\":\"RgAAAAD{}\",\"Subject\":{display},\"ParentFolder\":{{\"Id\":\"LgAAAAD\",\"Path\":\"\\\\Sent Items\"}},\"Attachments\":\"report.pdf (12345b); 日本.txt (10b)\",\"InternetMessageId\":\"<{}@contoso.com>\",\"SizeInBytes\":4321}}",
                        hex32(),
                        hex32()
                    ),
                );
                r.put("Parameters", "[{\"Name\":\"Identity\",\"Value\":\"contoso\\\\admin\"},{\"Name\":\"ForwardingSmtpAddress\",\"Value\":\"\"}]");
            }
        }
        "Audit.SharePoint" => {
            let site = if record_type == 6 && i % 4 == 2 {
                "https://contoso-my.sharepoint.com/personal/alex_contoso_onmicrosoft_com/"
            } else {
                "https://contoso.sharepoint.com/sites/finance/"
            };
            r.s("Site", &g());
            r.s("ItemType", "File");
            r.s("EventSource", "SharePoint");
            r.s(
                "UserAgent",
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36",
            );
            r.s("WebId", &g());
            r.s("ListId", &g());
            r.s("ListItemUniqueId", &g());
            r.s("SiteUrl", site);
            r.s("SourceRelativeUrl", "Shared Documents/Q4");
            r.put("SourceFileName", display.to_string());
            r.s("SourceFileExtension", "docx");
            r.put("ApplicationDisplayName", "null");
            r.put("DoNotDistributeEvent", "true");
            r.put("HighPriorityMediaProcessing", "false");
            if record_type == 14 {
                r.s("TargetUserOrGroupType", "Member");
                r.s(
                    "TargetUserOrGroupName",
                    "megan.bowen@contoso.onmicrosoft.com",
                );
                r.put(
                    "EventData",
                    "\"<PermissionsGranted>Contribute</PermissionsGranted>\"",
                );
            }
            if record_type == 4 {
                r.put("ModifiedProperties", "[{\"Name\":\"SiteAdmin\",\"NewValue\":\"[\\\"i:0#.f|membership|alex@contoso.com\\\"]\",\"OldValue\":\"[]\"}]");
            }
        }
        "DLP.All" => {
            r.s("IncidentId", &g());
            r.put("SensitiveInfoDetectionIsIncluded", "true");
            r.put(
                "PolicyDetails",
                format!(
                    "[{{\"PolicyId\":\"{}\",\"PolicyName\":\"U.S. Financial Data\",\"Rules\":[{{\"RuleId\":\"{}\",\"RuleName\":\"Low volume\",\"Severity\":\"Low\",\"Actions\":[\"NotifyUser\",\"GenerateIncidentReport\"],\"ConditionsMatched\":{{\"ConditionMatchedInNewScheme\":true,\"SensitiveInformation\":[{{\"Count\":2,\"Confidence\":85,\"SensitiveType\":\"50842eb7-edc8-4019-85dd-5a5c1f2bb085\",\"SensitiveInformationDetections\":{{\"DetectedValues\":[{{\"Name\":\"Credit Card Number\",\"Value\":\"4111 1111 1111 1111\"}},{{\"Name\":\"Credit Card Number\",\"Value\":\"5500 0000 0000 0004\"}}],\"ResultsTruncated\":false}},\"Location\":[]}}]}},\"ManagementRuleId\":\"{}\"}}]}}]",
                    g(),
                    g(),
                    g()
                ),
            );
            if record_type == 13 {
                r.put(
                    "ExchangeMetaData",
                    format!(
                        "{{\"MessageID\":\"<{}@contoso.com>\",\"From\":\"alex.wilber@contoso.onmicrosoft.com\",\"To\":[\"external@example.com\"],\"CC\":[],\"BCC\":[],\"Subject\":{display},\"Sent\":\"2026-11-26T04:10:00\",\"RecipientCount\":1}}",
                        hex32()
                    ),
                );
            } else {
                r.put(
                    "SharePointMetaData",
                    format!(
                        "{{\"From\":\"alex.wilber@contoso.onmicrosoft.com\",\"itemCreationTime\":\"2026-11-26T04:00:00\",\"SiteCollectionGuid\":\"{}\",\"SiteCollectionUrl\":\"https://contoso.sharepoint.com/sites/finance\",\"FileName\":{display},\"FilePathUrl\":\"https://contoso.sharepoint.com/sites/finance/Shared Documents/card.docx\",\"UniqueId\":\"{}\",\"ExceptionInfo\":{{}},\"SensitivityLabelIds\":[]}}",
                        g(),
                        g()
                    ),
                );
            }
        }
        _ => match record_type {
            25 => {
                r.s("TeamName", "Finance — 財務");
                r.s("TeamGuid", &format!("19:{}@thread.skype", hex32()));
                r.s("ChannelName", "General");
                r.put("Members", "[{\"DisplayName\":\"Alex Wilber\",\"Role\":1,\"UPN\":\"alex.wilber@contoso.onmicrosoft.com\"},{\"DisplayName\":\"Renée\",\"Role\":\"2\",\"UPN\":\"renee@contoso.onmicrosoft.com\"}]");
                r.s("CommunicationType", "Team");
                r.put("MessageId", "1732594320123");
            }
            20 => {
                r.s("Activity", "ViewReport");
                r.s("ItemName", "Sales 2026");
                r.s("WorkSpaceName", "My Workspace");
                r.s("DatasetName", "Sales");
                r.s("ReportName", "Sales 2026");
                r.s("WorkspaceId", &g());
                r.s("ObjectType", "Report");
                r.put("IsSuccess", "true");
                r.s("RequestId", &g());
                r.put("DataConnectivityMode", "null");
            }
            261 => {
                r.put(
                    "CopilotEventData",
                    format!(
                        "{{\"AppHost\":\"Teams\",\"Contexts\":[{{\"Id\":\"https://contoso.sharepoint.com/sites/finance\",\"Type\":\"SharePointSite\"}}],\"AccessedResources\":[{{\"Id\":\"{}\",\"Name\":{display},\"Type\":\"docx\",\"SensitivityLabelId\":null}}],\"Messages\":[{{\"Id\":\"1732594320123\",\"isPrompt\":true}},{{\"Id\":\"1732594321456\",\"isPrompt\":false}}],\"ThreadId\":\"19:{}@thread.v2\"}}",
                        g(),
                        hex32()
                    ),
                );
            }
            _ => {
                r.s(
                    "InvestigationId",
                    &format!("urn:InvestigationRun:{}", hex32()),
                );
                r.s(
                    "InvestigationName",
                    "Email reported by user as malware or phish",
                );
                r.s("InvestigationType", "PhishingEmailUrlClickAlert");
                r.s("Status", "Running");
                r.put("Actions", "[{\"ActionType\":\"SoftDelete\",\"ActionStatus\":\"Pending\",\"Entities\":[{\"Type\":\"MailMessage\",\"Urls\":[\"https://phish.example.com/a?b=c&d=e\"]}]}]");
                r.put(
                    "Data",
                    "\"{\\\"Version\\\":3.0,\\\"Vendor\\\":\\\"Microsoft\\\"}\"",
                );
            }
        },
    }
}

/// Render a blob body: `[` + records joined by `,` + `]`, some blobs with newlines/indentation.
fn render_body(records: &[String], pretty: bool) -> bytes::Bytes {
    let body = if pretty {
        format!("[\n  {}\n]", records.join(",\n  "))
    } else {
        format!("[{}]", records.join(","))
    };
    bytes::Bytes::from(body)
}

/// What a new blob is made of. `content_id`/`body` of `None` mean "make a Microsoft-shaped id"
/// and "render the records as the body".
struct NewBlob {
    content_id: Option<String>,
    records: Vec<String>,
    ids: Vec<String>,
    body: Option<bytes::Bytes>,
}

/// Bytes that may stand verbatim in a URL path segment (RFC 3986 `pchar` minus `%`).
fn path_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b)
}

/// `contentUri` of a content id. Caller-chosen ids may hold anything, so whatever would break
/// the URL is percent-encoded (Microsoft-shaped ids are left as they are).
pub(crate) fn content_uri(inner: &Inner, tenant: &str, content_id: &str) -> String {
    let mut seg = String::with_capacity(content_id.len());
    for &b in content_id.as_bytes() {
        if path_safe(b) {
            seg.push(char::from(b));
        } else {
            seg.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{}/api/v1.0/{tenant}/activity/feed/audit/{seg}", inner.url)
}

/// Store one blob and update the counters; returns the public view. Re-using a content id
/// makes its GET serve the newest blob while the older listing entry stays: a hostile test may
/// want exactly that, so it is allowed rather than refused.
fn store(inner: &Inner, tenant: &str, content_type: &str, new: NewBlob) -> SimBlob {
    let created = Utc::now().trunc_subsecs(3);
    let content_id = new.content_id.unwrap_or_else(|| content_id(content_type));
    let blob = SimBlob {
        tenant_id: tenant.to_string(),
        content_type: content_type.to_string(),
        content_uri: content_uri(inner, tenant, &content_id),
        content_id: content_id.clone(),
        content_created: ms_time(&created),
        content_expiration: ms_time(
            &(created
                + chrono::Duration::from_std(inner.config.content_lifetime)
                    .unwrap_or(chrono::Duration::days(7))),
        ),
        records: new.records,
        record_ids: new.ids,
    };
    let mut st = inner.state();
    let seq = st.next_seq;
    st.next_seq += 1;
    let body = new
        .body
        .unwrap_or_else(|| render_body(&blob.records, seq % 2 == 1));
    st.records_published += blob.records.len() as u64;
    for id in blob.record_ids.iter().filter(|id| !id.is_empty()) {
        st.unique_ids.insert(id.clone());
    }
    let idx = st.blobs.len();
    st.blob_index.insert(content_id, idx);
    st.feeds
        .entry((blob.tenant_id.clone(), blob.content_type.clone()))
        .or_default()
        .push(idx);
    st.blobs.push(StoredBlob {
        blob: blob.clone(),
        created,
        seq,
        body,
        expired: false,
    });
    blob
}

/// [`super::Simulator::publish`].
pub(crate) fn publish(
    inner: &Arc<Inner>,
    tenant: &str,
    content_type: &str,
    blobs: usize,
    records: Option<usize>,
) -> Vec<SimBlob> {
    let tenant = tenant.to_ascii_lowercase();
    let n = records.unwrap_or(inner.config.records_per_blob);
    let key = (tenant.clone(), content_type.to_string());
    let mut out = Vec::with_capacity(blobs);
    for _ in 0..blobs {
        let created = Utc::now();
        let carried = inner.state().carry.remove(&key).unwrap_or_default();
        let carried: Vec<_> = if n >= 2 {
            carried.into_iter().take(n - 1).collect()
        } else {
            Vec::new()
        };
        let fresh: Vec<(String, String)> = (0..n - carried.len())
            .map(|i| record(&tenant, content_type, i, &created))
            .collect();
        // About 1 record in 20 goes again into the next blob of this tenant and content type.
        let dup_count = (n + 10) / 20;
        let mut rng = rand::rng();
        let next_carry: Vec<(String, String)> = fresh
            .choose_multiple(&mut rng, dup_count.min(fresh.len()))
            .cloned()
            .collect();
        if !next_carry.is_empty() {
            inner.state().carry.insert(key.clone(), next_carry);
        }
        // Spread the carried duplicates among the fresh records.
        let mut all = fresh;
        for rec in carried {
            let pos = rng.random_range(0..=all.len());
            all.insert(pos, rec);
        }
        let (records, ids): (Vec<String>, Vec<String>) = all.into_iter().unzip();
        out.push(store(
            inner,
            &tenant,
            content_type,
            NewBlob {
                content_id: None,
                records,
                ids,
                body: None,
            },
        ));
    }
    super::webhook_delivery::notify(inner, &tenant, content_type, out.clone(), true);
    out
}

/// The record's `Id` when it is a JSON object with a string `Id`, else "".
fn id_of(record: &str) -> String {
    serde_json::from_str::<serde_json::Value>(record)
        .ok()
        .and_then(|v| v.get("Id").and_then(|i| i.as_str()).map(str::to_string))
        .unwrap_or_default()
}

/// [`super::Simulator::publish_raw`] and [`super::Simulator::publish_raw_with_id`].
pub(crate) fn publish_raw(
    inner: &Arc<Inner>,
    tenant: &str,
    content_type: &str,
    content_id: Option<String>,
    records: Vec<String>,
) -> SimBlob {
    let ids = records.iter().map(|r| id_of(r)).collect();
    publish_one(
        inner,
        tenant,
        content_type,
        NewBlob {
            content_id,
            records,
            ids,
            body: None,
        },
    )
}

/// [`super::Simulator::publish_body`]: the body is served as given. Records and Ids are read
/// from it only as far as it is a JSON array (decoded lossily when it is not UTF-8), because
/// tests use them to check what a relay should have kept; an unparsable body has none.
pub(crate) fn publish_body(
    inner: &Arc<Inner>,
    tenant: &str,
    content_type: &str,
    body: Vec<u8>,
    content_id: Option<String>,
) -> SimBlob {
    let (records, ids) = {
        let text = String::from_utf8_lossy(&body);
        match serde_json::from_str::<Vec<&serde_json::value::RawValue>>(&text) {
            Ok(items) => items
                .iter()
                .map(|r| (r.get().to_string(), id_of(r.get())))
                .unzip(),
            Err(_) => (Vec::new(), Vec::new()),
        }
    };
    publish_one(
        inner,
        tenant,
        content_type,
        NewBlob {
            content_id,
            records,
            ids,
            body: Some(bytes::Bytes::from(body)),
        },
    )
}

/// Store one blob and notify the webhook about it.
fn publish_one(inner: &Arc<Inner>, tenant: &str, content_type: &str, new: NewBlob) -> SimBlob {
    let tenant = tenant.to_ascii_lowercase();
    let blob = store(inner, &tenant, content_type, new);
    super::webhook_delivery::notify(inner, &tenant, content_type, vec![blob.clone()], true);
    blob
}
