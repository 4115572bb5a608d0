//! Entra ID's token endpoint: client credentials with a signed assertion or a secret.

use crate::support::*;
use o365_sim::Simulator;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correctly_signed_assertion_gets_a_v1_token_for_its_tenant() {
    let cert = make_cert();
    let sim = sim_with(config(Some(&cert))).await;
    let a = assertion(&cert.key_pem, &cert.x5t, &good_claims(&sim, TENANT_A));
    let (status, body) = token_with_assertion(&sim, TENANT_A, &a).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], "3600");
    assert!(body["expires_on"].is_string());
    assert!(body["not_before"].is_string());
    assert_eq!(body["resource"], sim.url());
    // The access token carries tid/roles/appid.
    let claims = jwt_claims(body["access_token"].as_str().unwrap());
    assert_eq!(claims["tid"], TENANT_A);
    assert_eq!(claims["appid"], CLIENT_ID);
    assert_eq!(claims["aud"], sim.url());
    assert!(claims["roles"]
        .as_array()
        .unwrap()
        .contains(&json!("ActivityFeed.Read")));
    assert_eq!(sim.token_requests(TENANT_A), 1);
    assert_eq!(sim.token_requests(TENANT_B), 0);
    sim.stop().await;
}

/// Asks for a token with the assertion `make` builds (from the registered certificate, another
/// one, and the simulator) and checks that Entra refuses it as a bad client assertion, counts
/// it as a refusal and issues nothing.
async fn assert_assertion_refused(
    what: &str,
    make: impl FnOnce(&TestCert, &TestCert, &Simulator) -> String,
) {
    let cert = make_cert();
    let other = make_cert();
    let sim = sim_with(config(Some(&cert))).await;
    let a = make(&cert, &other, &sim);
    let got = token_with_assertion(&sim, TENANT_A, &a).await;
    assert_token_refused(what, &got, 401, "invalid_client");
    let body = got.1;
    assert!(
        error_description(&body).starts_with("AADSTS700027"),
        "{what}: {body}"
    );
    assert_eq!(sim.token_requests(TENANT_A), 0, "{what}: no token issued");
    assert_eq!(
        sim.refused_token_requests(TENANT_A),
        1,
        "{what}: counted as a refusal"
    );
    assert!(!sim.rejected_requests().is_empty(), "{what}: logged");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_request_signed_with_an_unknown_certificate_is_refused() {
    assert_assertion_refused("wrong x5t", |cert, other, sim| {
        assertion(&cert.key_pem, &other.x5t, &good_claims(sim, TENANT_A))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assertion_signed_by_a_foreign_key_that_names_the_registered_certificate_is_refused() {
    assert_assertion_refused("foreign key", |cert, other, sim| {
        assertion(&other.key_pem, &cert.x5t, &good_claims(sim, TENANT_A))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assertion_addressed_to_another_tenants_endpoint_is_refused() {
    assert_assertion_refused("wrong aud", |cert, _, sim| {
        assertion(&cert.key_pem, &cert.x5t, &good_claims(sim, TENANT_B))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_assertion_is_refused() {
    assert_assertion_refused("expired", |cert, _, sim| {
        let mut c = good_claims(sim, TENANT_A);
        c["nbf"] = json!(now() - 1200);
        c["exp"] = json!(now() - 600);
        assertion(&cert.key_pem, &cert.x5t, &c)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assertion_valid_for_more_than_an_hour_is_refused() {
    assert_assertion_refused("too long", |cert, _, sim| {
        let mut c = good_claims(sim, TENANT_A);
        c["exp"] = json!(now() + 7200);
        assertion(&cert.key_pem, &cert.x5t, &c)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assertion_issued_by_another_client_is_refused() {
    assert_assertion_refused("bad iss", |cert, _, sim| {
        let mut c = good_claims(sim, TENANT_A);
        c["iss"] = json!("someone-else");
        assertion(&cert.key_pem, &cert.x5t, &c)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assertion_used_twice_is_refused_the_second_time() {
    let cert = make_cert();
    let sim = sim_with(config(Some(&cert))).await;
    let a = assertion(&cert.key_pem, &cert.x5t, &good_claims(&sim, TENANT_A));
    assert_eq!(token_with_assertion(&sim, TENANT_A, &a).await.0, 200);
    let (status, body) = token_with_assertion(&sim, TENANT_A, &a).await;
    assert_eq!(status, 401, "replay: {body}");
    assert!(error_description(&body).contains("replay"), "{body}");
    assert_eq!(sim.token_requests(TENANT_A), 1);
    assert_eq!(
        sim.refused_token_requests(TENANT_A),
        1,
        "the replay is counted as a refusal"
    );
    assert!(!sim.rejected_requests().is_empty());
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_an_unknown_tenant_and_a_foreign_resource_are_refused_and_counted() {
    let sim = sim_with(config(None)).await;
    assert_eq!(token_with_secret(&sim, TENANT_A, SECRET).await.0, 200);
    let wrong = token_with_secret(&sim, TENANT_A, "wrong").await;
    assert_token_refused("wrong secret", &wrong, 401, "invalid_client");
    let unknown = "00000000-1111-2222-3333-444444444444";
    let (status, body) = token_with_secret(&sim, unknown, SECRET).await;
    assert_eq!(status, 400);
    assert!(
        error_description(&body).starts_with("AADSTS90002"),
        "{body}"
    );
    let foreign = token_request(
        &sim,
        TENANT_A,
        "https://manage.office.com",
        &[("client_secret", SECRET)],
    )
    .await;
    assert_token_refused("foreign resource", &foreign, 400, "invalid_resource");
    assert_eq!(sim.token_requests(TENANT_A), 1);
    assert_eq!(
        sim.refused_token_requests(TENANT_A),
        2,
        "wrong secret, wrong resource"
    );
    assert_eq!(sim.refused_token_requests(unknown), 1, "unknown tenant");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_that_withdrew_consent_gets_no_token_until_it_consents_again() {
    let sim = sim_with(config(None)).await;
    let before = bearer(&sim, TENANT_A).await;
    sim.withdraw_consent(TENANT_A);
    let got = token_with_secret(&sim, TENANT_A, SECRET).await;
    assert_token_refused("consent withdrawn", &got, 400, "invalid_client");
    assert!(
        error_description(&got.1).starts_with("AADSTS7000229"),
        "{}",
        got.1
    );
    assert_eq!(sim.refused_token_requests(TENANT_A), 1);
    // Only that tenant: the other keeps its tokens.
    bearer(&sim, TENANT_B).await;
    // A token issued before the withdrawal stays valid until it expires, as Entra's do.
    assert_eq!(
        mgmt_get(&feed(&sim, TENANT_A, "subscriptions/list"), &before)
            .await
            .0,
        200
    );
    // Over the control API, as a standalone simulator is driven.
    let r = control_post(
        &sim,
        "consent",
        &json!({"tenant": TENANT_A, "granted": true}),
    )
    .await;
    assert_eq!(r.status().as_u16(), 204);
    bearer(&sim, TENANT_A).await;
    let r = control_post(
        &sim,
        "consent",
        &json!({"tenant": TENANT_A, "granted": false}),
    )
    .await;
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(token_with_secret(&sim, TENANT_A, SECRET).await.0, 400);
    sim.grant_consent(TENANT_A);
    bearer(&sim, TENANT_A).await;
    let r = control_post(
        &sim,
        "consent",
        &json!({"tenant": "00000000-0000-0000-0000-000000000000", "granted": false}),
    )
    .await;
    assert_eq!(r.status().as_u16(), 400);
    sim.stop().await;
}
