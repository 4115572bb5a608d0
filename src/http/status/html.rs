//! The status page (`GET /admin/`): server-rendered HTML with its CSS inline — no script, no
//! external asset (the admin listener is cluster-internal and the page must work from a phone
//! through a port-forward) — that refreshes itself every 30 seconds. On a narrow screen each
//! tenant's row becomes a card. A maud template: every value from outside (reasons, tenant
//! ids, names, Microsoft's status strings) is escaped by construction.

use super::{ContentTypeStatus, Status, TenantStatus, Verdict};
use crate::http::html::{document, html, Markup};
use chrono::{DateTime, Utc};

/// Seconds between the page's own refreshes.
pub const REFRESH_SECONDS: u32 = 30;

const STYLE: &str = r#"
:root{--ok:#107c10;--warn:#9a6700;--down:#c50f1f;--muted:#57606a;--line:#d8dee4}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f6f8;color:#1b1f23;font-size:15px}
header{background:#1b1f23;color:#fff;padding:.8rem 1.2rem;display:flex;flex-wrap:wrap;gap:.4rem 1.2rem;align-items:baseline}
header h1{font-size:1.15rem;margin:0} header small{color:#c9d1d9}
header form{margin-left:auto} header button{background:none;color:#c9d1d9;border:1px solid #57606a;border-radius:6px;padding:.2rem .6rem;cursor:pointer}
main{padding:1rem 1.2rem;max-width:90rem;margin:auto}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(11rem,1fr));gap:.8rem;margin-bottom:1rem}
.card{background:#fff;border-radius:10px;padding:.8rem 1rem;box-shadow:0 1px 4px rgba(0,0,0,.08)}
.card b{display:block;font-size:1.5rem} .card span{color:var(--muted);font-size:.85rem}
table{width:100%;border-collapse:collapse;background:#fff;border-radius:10px;overflow:hidden;box-shadow:0 1px 4px rgba(0,0,0,.08)}
th,td{text-align:left;padding:.55rem .6rem;border-bottom:1px solid var(--line);vertical-align:top}
th{background:#eef1f4;font-size:.8rem;text-transform:uppercase;letter-spacing:.03em;color:var(--muted)}
.badge{display:inline-block;border-radius:99px;padding:.1rem .55rem;font-size:.8rem;font-weight:600;color:#fff}
.v-ok{background:var(--ok)} .v-attention{background:var(--warn)} .v-down{background:var(--down)}
.why{color:var(--down);font-size:.85rem;margin-top:.25rem} .v-attention-why{color:var(--warn)}
.ct{display:inline-block;margin:.1rem .2rem .1rem 0;padding:.05rem .4rem;border-radius:6px;font-size:.78rem;border:1px solid var(--line)}
.ct.bad{border-color:var(--down);color:var(--down)} .ct.good{border-color:var(--ok);color:var(--ok)}
.muted{color:var(--muted);font-size:.82rem} code{font-size:.85rem}
ul.problems{background:#fff4e5;border-radius:10px;padding:.8rem 2rem}
@media (max-width:48rem){
 table,thead,tbody,tr,td{display:block;width:100%} thead{display:none}
 tr{margin-bottom:.8rem;border-radius:10px;background:#fff;box-shadow:0 1px 4px rgba(0,0,0,.08)}
 td{border:0;padding:.35rem .8rem} td::before{content:attr(data-label);display:block;color:var(--muted);font-size:.72rem;text-transform:uppercase}
}
"#;

/// "3 min ago", "in 52 min", "2 h ago", "4 d ago".
pub fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - at).num_seconds();
    let (n, future) = (secs.unsigned_abs(), secs < 0);
    let amount = match n {
        0..=59 => format!("{n} s"),
        60..=3599 => format!("{} min", n / 60),
        3600..=172_799 => format!("{} h", n / 3600),
        _ => format!("{} d", n / 86_400),
    };
    if future {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

fn when(raw: Option<&str>, now: DateTime<Utc>) -> String {
    match raw.and_then(|r| DateTime::parse_from_rfc3339(r).ok()) {
        Some(t) => relative(t.with_timezone(&Utc), now),
        None => "never".into(),
    }
}

fn content_type_chip(c: &ContentTypeStatus, now: DateTime<Utc>) -> Markup {
    let sub = c.subscription.as_deref().unwrap_or("?");
    let hook = c.webhook.as_deref().unwrap_or("?");
    let class = if c.subscription.is_none() {
        "ct"
    } else if sub == "enabled" && (hook == "enabled" || c.webhook.is_none()) {
        "ct good"
    } else {
        "ct bad"
    };
    let relayed = when(c.last_relayed.as_deref(), now);
    let title = format!(
        "subscription {sub}, webhook {hook}; last notification {}; last relayed {relayed}",
        when(c.last_notification.as_deref(), now),
    );
    html! { span class=(class) title=(title) { (c.content_type.as_str()) " · " (relayed) } }
}

fn consented(t: &TenantStatus) -> String {
    match &t.consented_by {
        Some(by) => format!("{} by {by}", t.added_at),
        None if t.added_at.is_empty() => "configured (O365_TENANTS)".into(),
        None => format!("{} ({:?})", t.added_at, t.added_by).to_lowercase(),
    }
}

fn tenant_row(t: &TenantStatus, quota_per_minute: u32, now: DateTime<Utc>) -> Markup {
    let verdict = t.verdict.as_str();
    let token = t
        .token_expires_at
        .map(|at| relative(at, now))
        .unwrap_or_else(|| "none cached".into());
    html! {
        tr.tenant data-tenant=(t.tenant_id.as_str()) data-verdict=(verdict) {
            td data-label="Tenant" {
                span class={ "badge v-" (verdict) } { (verdict) } " "
                code { (t.tenant_id.as_str()) } " "
                span.muted { (t.state.name()) }
                @if !t.why.is_empty() {
                    div class={ "why" @if t.verdict == Verdict::Attention { " v-attention-why" } } { (t.why) }
                }
                div.muted { (consented(t)) }
            }
            td data-label="Content types (last relayed)" {
                @for c in &t.content_types { (content_type_chip(c, now)) }
            }
            td data-label="Records 1 h / 24 h" { (t.last_hour.records) " / " (t.last_day.records) }
            td data-label="Recovered 24 h" { (t.last_day.recovered) }
            td data-label="Dead letters 24 h" {
                (t.last_day.dead)
                @if let Some(d) = &t.last_dead {
                    div.muted {
                        "last " (when(d.at.as_deref(), now)) " " (d.code.as_deref().unwrap_or(""))
                        ": " (d.reason.as_deref().unwrap_or(""))
                    }
                }
            }
            td data-label="Token expires" { (token) }
            td data-label="Quota used / min" { (t.quota_used) " / " (quota_per_minute) }
        }
    }
}

/// The whole page; with a "Sign out" button when the page sits behind a sign-in.
pub fn render(s: &Status, sign_out: bool) -> Markup {
    let now = s.generated_at;
    let d = &s.deployment;
    let count = |v: Verdict| s.tenants.iter().filter(|t| t.verdict == v).count();
    let depth = |n: Option<u32>| n.map_or("?".to_string(), |n| n.to_string());
    let certificate = d
        .certificate_expires_at
        .map(|at| relative(at, now))
        .unwrap_or_else(|| "client secret".into());
    let replicas: Vec<&str> = d.replicas.iter().map(|r| r.host.as_str()).collect();
    let holder = |h: &Option<String>| -> String {
        h.as_deref()
            .map(|h| h.rsplit_once('-').map_or(h, |(host, _)| host).to_string())
            .unwrap_or_else(|| "nobody".into())
    };
    let refresh = html! { meta http-equiv="refresh" content=(REFRESH_SECONDS); };
    let body = html! {
        header {
            h1 { "o365-relay" }
            small #generated {
                (now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                " · refreshes every " (REFRESH_SECONDS) " s"
            }
            @if sign_out {
                form method="post" action="/admin/logout" { button #logout type="submit" { "Sign out" } }
            }
        }
        main {
            @if !d.problems.is_empty() {
                ul.problems #problems { @for p in &d.problems { li { (p) } } }
            }
            @if let Some(paused) = &d.downstream {
                p.problems #downstream-paused { (paused.line(now)) }
            }
            section.cards {
                div.card #tenants-ok { b { (count(Verdict::Ok)) } span { "tenants ok" } }
                div.card #tenants-attention { b { (count(Verdict::Attention)) } span { "need attention" } }
                div.card #tenants-down { b { (count(Verdict::Down)) } span { "down (parked, pending)" } }
                div.card #queues {
                    b { (depth(d.queues.work)) " · " (depth(d.queues.retry)) " · " (depth(d.queues.dead)) }
                    span { "work · retry · dead queue" }
                }
                div.card #replicas { b { (d.replicas.len()) } span { "replicas alive: " (replicas.join(", ")) } }
                div.card #leases {
                    b { (holder(&d.reconciler_lease)) }
                    span { "holds the reconciler lease · keeper: " (holder(&d.keeper_lease)) }
                }
                div.card #certificate { b { (certificate) } span { "certificate expires" } }
            }
            table #tenants {
                thead { tr {
                    th { "Tenant" } th { "Content types (last relayed)" } th { "Records 1 h / 24 h" }
                    th { "Recovered 24 h" } th { "Dead letters 24 h" } th { "Token expires" }
                    th { "Quota / min" }
                } }
                tbody {
                    @if s.tenants.is_empty() {
                        tr { td colspan="7" {
                            "No tenant yet: share the consent link (" code { "o365-relay consent-url" } ")."
                        } }
                    }
                    @for t in &s.tenants { (tenant_row(t, d.quota_per_minute, now)) }
                }
            }
            @if !s.offboarded.is_empty() {
                p.muted #offboarded {
                    "Offboarded: "
                    @for (i, o) in s.offboarded.iter().enumerate() {
                        @if i > 0 { ", " }
                        code { (o.tenant_id.as_str()) } " "
                        (o.since.map(|t| relative(t, now)).unwrap_or_default())
                    }
                }
            }
            p.muted {
                "JSON: " code { "/admin/status" } " · terminal: " code { "o365-relay status" }
                " · dead letters: " code { "o365-relay dead-letters list" }
            }
        }
    };
    document("o365-relay status", STYLE, refresh, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ContentType;

    /// Microsoft's `subscriptions/list` strings reached a `title="…"` attribute
    /// unescaped, and a hostile one made the signed-in browser follow an injected refresh.
    #[test]
    fn microsofts_subscription_strings_cannot_become_markup_in_a_chip() {
        let hostile =
            r#"enabled"><meta http-equiv="refresh" content="0;url=https://evil.example/"><b x=""#;
        let chip = content_type_chip(
            &ContentTypeStatus {
                content_type: ContentType::Exchange,
                subscription: Some(hostile.into()),
                webhook: Some(format!("{hostile}'</span></title><script>")),
                checked_at: None,
                last_notification: None,
                last_relayed: None,
            },
            Utc::now(),
        )
        .into_string();
        assert!(!chip.contains("<meta"), "{chip}");
        assert!(!chip.contains("<script"), "{chip}");
        assert!(!chip.contains("\"><"), "{chip}");
        assert!(chip.contains("&lt;meta"), "{chip}");
        assert_eq!(chip.matches("<span").count(), 1, "{chip}");
    }

    #[test]
    fn relative_times_read_naturally() {
        let now = Utc::now();
        assert_eq!(relative(now - chrono::Duration::seconds(5), now), "5 s ago");
        assert_eq!(
            relative(now - chrono::Duration::minutes(3), now),
            "3 min ago"
        );
        assert_eq!(
            relative(now + chrono::Duration::minutes(52), now),
            "in 52 min"
        );
        assert_eq!(relative(now - chrono::Duration::hours(5), now), "5 h ago");
        assert_eq!(relative(now + chrono::Duration::days(40), now), "in 40 d");
    }
}
