//! Admin consent: the authorize page, the decision redirect and the code exchange.

use crate::support::*;
use serde_json::Value;
use std::collections::HashMap;

/// Checks that `r` is a redirect (302) and returns where to, with its query parameters.
fn redirected(r: reqwest::Response) -> (url::Url, HashMap<String, String>) {
    assert_eq!(r.status().as_u16(), 302);
    let loc = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let q = loc.query_pairs().into_owned().collect();
    (loc, q)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_consent_redirects_with_access_denied_or_a_code_that_works_once() {
    let sim = sim_with(config(None)).await;
    let redirect = "https://relay.example.com/consent/callback";
    let authorize = format!(
        "{}/common/oauth2/authorize?response_type=code&resource={}&client_id={CLIENT_ID}&redirect_uri={}&state=xyz",
        sim.url(),
        urlencode(&sim.url()),
        urlencode(redirect)
    );
    let page = http().get(&authorize).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Permissions requested"));
    assert!(html.contains(r#"<button id="accept" name="decision" value="accept">Accept</button>"#));
    assert!(html.contains(r#"<button id="cancel" name="decision" value="cancel">Cancel</button>"#));
    // Bad client id -> 400 error page.
    let bad = authorize.replace(CLIENT_ID, "11111111-1111-1111-1111-111111111111");
    assert_eq!(
        http().get(&bad).send().await.unwrap().status().as_u16(),
        400
    );

    let decide = |decision: &'static str| {
        let sim_url = sim.url();
        async move {
            http()
                .post(format!("{sim_url}/common/oauth2/authorize/decision"))
                .form(&[
                    ("response_type", "code"),
                    ("client_id", CLIENT_ID),
                    ("resource", &sim_url),
                    ("redirect_uri", redirect),
                    ("state", "xyz"),
                    ("decision", decision),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    let (_, q) = redirected(decide("cancel").await);
    assert_eq!(q["error"], "access_denied");
    assert!(q["error_description"].starts_with("AADSTS65004"));
    assert_eq!(q["state"], "xyz");

    let (loc, q) = redirected(decide("accept").await);
    assert!(loc.as_str().starts_with(redirect));
    assert_eq!(q["state"], "xyz");
    let code = q["code"].clone();

    let exchange = || {
        let sim_url = sim.url();
        let code = code.clone();
        async move {
            let r = http()
                .post(format!("{sim_url}/common/oauth2/token"))
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("client_id", CLIENT_ID),
                    ("redirect_uri", redirect),
                    ("resource", &sim_url),
                    ("client_secret", SECRET),
                ])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = exchange().await;
    assert_eq!(status, 200, "{body}");
    assert!(body["refresh_token"].is_string() && body["id_token"].is_string());
    let claims = jwt_claims(body["access_token"].as_str().unwrap());
    assert_eq!(claims["tid"], TENANT_A);
    assert_eq!(claims["upn"], "admin@contoso.onmicrosoft.com");
    // Single use.
    let (status, body) = exchange().await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consenting_admin_can_sign_in_to_any_known_tenant_and_the_token_names_it() {
    let sim = sim_with(config(None)).await;
    let redirect = "https://relay.example.com/consent/callback";
    let authorize = format!(
        "{}/common/oauth2/authorize?response_type=code&resource={}&client_id={CLIENT_ID}&redirect_uri={}&state=xyz",
        sim.url(),
        urlencode(&sim.url()),
        urlencode(redirect)
    );
    let html = http()
        .get(&authorize)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains(&format!(r#"<option value="{TENANT_A}" selected>"#)),
        "the default tenant is preselected: {html}"
    );
    assert!(html.contains(&format!(r#"<option value="{TENANT_B}">"#)));
    // Only the permissions the relay uses are requested and granted.
    assert!(html.contains("ActivityFeed.Read") && !html.contains("ServiceHealth"));

    let decide = |tenant: &'static str| {
        let sim_url = sim.url();
        async move {
            http()
                .post(format!("{sim_url}/common/oauth2/authorize/decision"))
                .form(&[
                    ("response_type", "code"),
                    ("client_id", CLIENT_ID),
                    ("resource", &sim_url),
                    ("redirect_uri", redirect),
                    ("state", "xyz"),
                    ("decision", "accept"),
                    ("tenant", tenant),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    let unknown = decide("0b6a3c1d-2e4f-4a5b-9c8d-7e6f5a4b3c2d").await;
    assert_eq!(
        unknown.status().as_u16(),
        400,
        "an unknown tenant is refused"
    );
    let (_, q) = redirected(decide(TENANT_B).await);
    let r = http()
        .post(format!("{}/common/oauth2/token", sim.url()))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &q["code"]),
            ("client_id", CLIENT_ID),
            ("redirect_uri", redirect),
            ("resource", &sim.url()),
            ("client_secret", SECRET),
        ])
        .send()
        .await
        .unwrap();
    let body = r.json::<Value>().await.unwrap();
    let claims = jwt_claims(body["access_token"].as_str().unwrap());
    assert_eq!(claims["tid"], TENANT_B);
    assert_eq!(
        claims["roles"],
        serde_json::json!(["ActivityFeed.Read", "ActivityFeed.ReadDlp"])
    );
    sim.stop().await;
}
