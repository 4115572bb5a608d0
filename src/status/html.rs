//! The status page (`GET /admin/`): server-rendered HTML with its CSS inline — no script, no
//! external asset (the admin listener is cluster-internal and the page must work from a phone
//! through a port-forward) — that refreshes itself every 30 seconds. On a narrow screen each
//! tenant's row becomes a card. Every value from outside (reasons, tenant ids, names) is
//! escaped.

use super::{ContentTypeStatus, Status, TenantStatus, Verdict};
use crate::html::esc;
use chrono::{DateTime, Utc};
use std::fmt::Write;

/// Seconds between the page's own refreshes.
pub const REFRESH_SECONDS: u32 = 30;

const STYLE: &str = r#"
:root{--ok:#107c10;--warn:#9a6700;--down:#c50f1f;--muted:#57606a;--line:#d8dee4}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f6f8;color:#1b1f23;font-size:15px}
header{background:#1b1f23;color:#fff;padding:.8rem 1.2rem;display:flex;flex-wrap:wrap;gap:.4rem 1.2rem;align-items:baseline}
header h1{font-size:1.15rem;margin:0} header small{color:#c9d1d9}
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

fn content_type_chip(c: &ContentTypeStatus, now: DateTime<Utc>) -> String {
    let sub = c.subscription.as_deref().unwrap_or("?");
    let hook = c.webhook.as_deref().unwrap_or("?");
    let class = if c.subscription.is_none() {
        ""
    } else if sub == "enabled" && (hook == "enabled" || c.webhook.is_none()) {
        "good"
    } else {
        "bad"
    };
    format!(
        r#"<span class="ct {class}" title="subscription {}, webhook {}; last notification {}; last relayed {}">{} · {}</span>"#,
        esc(sub),
        esc(hook),
        esc(&when(c.last_notification.as_deref(), now)),
        esc(&when(c.last_relayed.as_deref(), now)),
        esc(c.content_type.as_str()),
        esc(&when(c.last_relayed.as_deref(), now)),
    )
}

fn tenant_row(t: &TenantStatus, quota_per_minute: u32, now: DateTime<Utc>) -> String {
    let verdict = t.verdict.as_str();
    let why = if t.why.is_empty() {
        String::new()
    } else {
        format!(
            r#"<div class="why {}">{}</div>"#,
            if t.verdict == Verdict::Attention {
                "v-attention-why"
            } else {
                ""
            },
            esc(&t.why)
        )
    };
    let consented = match &t.consented_by {
        Some(by) => format!("{} by {}", esc(&t.added_at), esc(by)),
        None if t.added_at.is_empty() => "configured (O365_TENANTS)".into(),
        None => format!("{} ({:?})", esc(&t.added_at), t.added_by).to_lowercase(),
    };
    let chips: String = t
        .content_types
        .iter()
        .map(|c| content_type_chip(c, now))
        .collect();
    let dead = match &t.last_dead {
        Some(d) => format!(
            r#"{}<div class="muted">last {} {}: {}</div>"#,
            t.last_day.dead,
            esc(&when(d.at.as_deref(), now)),
            esc(d.code.as_deref().unwrap_or("")),
            esc(d.reason.as_deref().unwrap_or(""))
        ),
        None => t.last_day.dead.to_string(),
    };
    let token = t
        .token_expires_at
        .map(|at| relative(at, now))
        .unwrap_or_else(|| "none cached".into());
    format!(
        r#"<tr class="tenant" data-tenant="{id}" data-verdict="{verdict}">
<td data-label="Tenant"><span class="badge v-{verdict}">{verdict}</span> <code>{id}</code> <span class="muted">{state}</span>{why}<div class="muted">{consented}</div></td>
<td data-label="Content types (last relayed)">{chips}</td>
<td data-label="Records 1 h / 24 h">{rh} / {rd}</td>
<td data-label="Recovered 24 h">{rec}</td>
<td data-label="Dead letters 24 h">{dead}</td>
<td data-label="Token expires">{token}</td>
<td data-label="Quota used / min">{quota} / {quota_per_minute}</td>
</tr>"#,
        id = esc(t.tenant_id.as_str()),
        state = esc(t.state.name()),
        rh = t.last_hour.records,
        rd = t.last_day.records,
        rec = t.last_day.recovered,
        quota = t.quota_used,
    )
}

/// The whole page.
pub fn render(s: &Status) -> String {
    let now = s.generated_at;
    let d = &s.deployment;
    let count = |v: Verdict| s.tenants.iter().filter(|t| t.verdict == v).count();
    let depth = |n: Option<u32>| n.map_or("?".to_string(), |n| n.to_string());
    let mut out = String::with_capacity(8192 + s.tenants.len() * 1500);
    let _ = write!(
        out,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<title>o365-relay status</title><style>{STYLE}</style></head><body>
<header><h1>o365-relay</h1><small id="generated">{generated} · refreshes every {REFRESH_SECONDS} s</small></header><main>"#,
        generated = esc(&now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    );
    if !d.problems.is_empty() {
        out.push_str(r#"<ul class="problems" id="problems">"#);
        for p in &d.problems {
            let _ = write!(out, "<li>{}</li>", esc(p));
        }
        out.push_str("</ul>");
    }
    if let Some(paused) = &d.downstream {
        let _ = write!(
            out,
            r#"<p class="problems" id="downstream-paused">{}</p>"#,
            esc(&paused.line(now))
        );
    }
    let certificate = d
        .certificate_expires_at
        .map(|at| relative(at, now))
        .unwrap_or_else(|| "client secret".into());
    let replicas: Vec<String> = d.replicas.iter().map(|r| esc(&r.host)).collect();
    let holder = |h: &Option<String>| {
        h.as_deref()
            .map(|h| esc(h.rsplit_once('-').map_or(h, |(host, _)| host)))
            .unwrap_or_else(|| "nobody".into())
    };
    let _ = write!(
        out,
        r#"<section class="cards">
<div class="card" id="tenants-ok"><b>{ok}</b><span>tenants ok</span></div>
<div class="card" id="tenants-attention"><b>{attention}</b><span>need attention</span></div>
<div class="card" id="tenants-down"><b>{down}</b><span>down (parked, pending)</span></div>
<div class="card" id="queues"><b>{work} · {retry} · {dead}</b><span>work · retry · dead queue</span></div>
<div class="card" id="replicas"><b>{alive}</b><span>replicas alive: {replicas}</span></div>
<div class="card" id="leases"><b>{rec}</b><span>holds the reconciler lease · keeper: {keeper}</span></div>
<div class="card" id="certificate"><b>{certificate}</b><span>certificate expires</span></div>
</section>"#,
        ok = count(Verdict::Ok),
        attention = count(Verdict::Attention),
        down = count(Verdict::Down),
        work = depth(d.queues.work),
        retry = depth(d.queues.retry),
        dead = depth(d.queues.dead),
        alive = d.replicas.len(),
        replicas = replicas.join(", "),
        rec = holder(&d.reconciler_lease),
        keeper = holder(&d.keeper_lease),
    );
    out.push_str(
        r#"<table id="tenants"><thead><tr><th>Tenant</th><th>Content types (last relayed)</th><th>Records 1 h / 24 h</th><th>Recovered 24 h</th><th>Dead letters 24 h</th><th>Token expires</th><th>Quota / min</th></tr></thead><tbody>"#,
    );
    if s.tenants.is_empty() {
        out.push_str(r#"<tr><td colspan="7">No tenant yet: share the consent link (<code>o365-relay consent-url</code>).</td></tr>"#);
    }
    for t in &s.tenants {
        out.push_str(&tenant_row(t, d.quota_per_minute, now));
    }
    out.push_str("</tbody></table>");
    if !s.offboarded.is_empty() {
        out.push_str(r#"<p class="muted" id="offboarded">Offboarded: "#);
        let list: Vec<String> = s
            .offboarded
            .iter()
            .map(|o| {
                format!(
                    "<code>{}</code> {}",
                    esc(o.tenant_id.as_str()),
                    o.since.map(|t| relative(t, now)).unwrap_or_default()
                )
            })
            .collect();
        out.push_str(&list.join(", "));
        out.push_str("</p>");
    }
    out.push_str(r#"<p class="muted">JSON: <code>/admin/status</code> · terminal: <code>o365-relay status</code> · dead letters: <code>o365-relay dead-letters list</code></p></main></body></html>"#);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ContentType;

    /// Issue 20: Microsoft's `subscriptions/list` strings reached a `title="…"` attribute
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
        );
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
