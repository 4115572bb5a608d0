//! The Management Activity API: authentication, subscriptions, content listing and paging.

use crate::support::*;
use o365_sim::SimConfig;
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_management_request_that_is_wrong_in_any_way_gets_microsofts_error_code() {
    let (sim, token_a) = sim_with_token().await;
    let blob = publish_one(&sim, "Audit.Exchange", Some(3)).await;
    // Without PublisherIdentifier -> AF20012 and logged.
    let r = http()
        .get(&blob.content_uri)
        .bearer_auth(&token_a)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(af_code(&r.text().await.unwrap()), "AF20012");
    assert!(sim
        .rejected_requests()
        .iter()
        .any(|l| l.contains("AF20012")));
    // With it -> 200, the exact body.
    let body = mgmt_ok(&blob.content_uri, &token_a).await;
    let arr: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(arr.len(), 3);
    // Token of tenant A used on tenant B -> AF20010.
    assert_af(
        &feed(&sim, TENANT_B, "subscriptions/list"),
        &token_a,
        401,
        "AF20010",
    )
    .await;
    // Garbage token -> 401 AF401.
    assert_af(
        &feed(&sim, TENANT_A, "subscriptions/list"),
        "x.y.z",
        401,
        "AF401",
    )
    .await;
    // Bad content type -> AF20020.
    let bad_type = feed(
        &sim,
        TENANT_A,
        "subscriptions/content?contentType=Audit.Nope",
    );
    assert_af(&bad_type, &token_a, 400, "AF20020").await;
    // Unknown / bad content id, blob of another tenant.
    let unknown = feed(&sim, TENANT_A, "audit/123456789012$123456789012$abc$def$04");
    assert_af(&unknown, &token_a, 400, "AF20050").await;
    let bad_id = feed(&sim, TENANT_A, "audit/not-an-id");
    assert_af(&bad_id, &token_a, 400, "AF20052").await;
    let token_b = bearer(&sim, TENANT_B).await;
    let foreign = blob.content_uri.replace(TENANT_A, TENANT_B);
    assert_eq!(mgmt_get(&foreign, &token_b).await.0, 400);
    // Expired content.
    sim.expire(&blob.content_id);
    assert_af(&blob.content_uri, &token_a, 400, "AF20051").await;
    assert_eq!(sim.content_gets_for(&blob.content_id), 4);
    assert!(sim.management_calls(TENANT_A) >= 7);
    assert!(sim.max_calls_per_minute(TENANT_A) >= 7);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_listing_checks_its_time_window_and_pages_through_every_blob_once() {
    let sim = sim_with(SimConfig {
        page_size: 3,
        ..config(None)
    })
    .await;
    let token = bearer(&sim, TENANT_A).await;
    let list = |q: String| {
        feed(
            &sim,
            TENANT_A,
            &format!("subscriptions/content?contentType=Audit.SharePoint{q}"),
        )
    };
    // No subscription yet -> AF20022.
    assert_af(&list(String::new()), &token, 400, "AF20022").await;
    assert_eq!(
        start_sub(&sim, TENANT_A, &token, "Audit.SharePoint", None)
            .await
            .0,
        200
    );
    // Repeat -> AF20024.
    let again = start_sub(&sim, TENANT_A, &token, "Audit.SharePoint", None).await;
    assert_start_refused(&again, 400, "AF20024");
    assert_eq!(sim.start_calls(TENANT_A, "Audit.SharePoint"), 2);

    let fmt = |d: chrono::Duration| {
        (chrono::Utc::now() + d)
            .format("%Y-%m-%dT%H:%M:%S")
            .to_string()
    };
    let h = chrono::Duration::hours;
    // More than 24 h apart, end <= start, only one bound -> AF20030; start > 7 days ago -> AF20055.
    for (q, code) in [
        (
            format!("&startTime={}&endTime={}", fmt(h(-25)), fmt(h(1))),
            "AF20030",
        ),
        (
            format!("&startTime={}&endTime={}", fmt(h(0)), fmt(h(-1))),
            "AF20030",
        ),
        (format!("&startTime={}", fmt(h(-1))), "AF20030"),
        (
            format!(
                "&startTime={}&endTime={}",
                fmt(h(-24 * 8)),
                fmt(h(-24 * 8 + 1))
            ),
            "AF20055",
        ),
    ] {
        assert_af(&list(q), &token, 400, code).await;
    }
    let blobs = sim.publish(TENANT_A, "Audit.SharePoint", 10, Some(2)).await;
    sim.publish(TENANT_A, "Audit.Exchange", 2, Some(2)).await;
    let want: HashSet<String> = blobs.iter().map(|b| b.content_id.clone()).collect();
    // Date-only and minute formats are accepted.
    let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let tomorrow = (chrono::Utc::now() + h(24)).format("%Y-%m-%d").to_string();
    mgmt_ok(
        &list(format!("&startTime={day}&endTime={tomorrow}")),
        &token,
    )
    .await;
    // Page through the window: every blob exactly once.
    let mut url = list(format!("&startTime={}&endTime={}", fmt(h(-1)), fmt(h(1))));
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (status, headers, body) = mgmt_get(&url, &token).await;
        assert_eq!(status, 200, "{body}");
        let items: Vec<Value> = serde_json::from_str(&body).unwrap();
        assert!(items.len() <= 3);
        for it in &items {
            assert_eq!(it["contentType"], "Audit.SharePoint");
            seen.push(it["contentId"].as_str().unwrap().to_string());
        }
        pages += 1;
        match headers.get("NextPageUri") {
            Some(next) => url = next.to_str().unwrap().to_string(),
            None => break,
        }
    }
    assert_eq!(pages, 4);
    assert_eq!(seen.len(), 10);
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), want);
    // Bad nextPage -> AF20031.
    let bad_page = format!("{}&nextPage=garbage", list(String::new()));
    assert_af(&bad_page, &token, 400, "AF20031").await;
    assert!(sim.list_calls() >= 9);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_expires_after_the_configured_lifetime() {
    let sim = sim_with(SimConfig {
        content_lifetime: Duration::from_secs(2),
        ..config(None)
    })
    .await;
    let token = bearer(&sim, TENANT_A).await;
    let blob = publish_one(&sim, "Audit.General", Some(2)).await;
    let created = chrono::DateTime::parse_from_rfc3339(&blob.content_created).unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(&blob.content_expiration).unwrap();
    assert_eq!(expires - created, chrono::Duration::seconds(2));
    mgmt_ok(&blob.content_uri, &token).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_af(&blob.content_uri, &token, 400, "AF20051").await;
    sim.stop().await;
}
