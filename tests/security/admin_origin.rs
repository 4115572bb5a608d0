//! Cross-site requests and DNS rebinding against the admin listener, with no `O365_ADMIN_TOKEN`
//! (allowed on a loopback listener) — the case where nothing but the browser's own headers
//! tells the attack apart. The requests carry exactly what Chromium sends for a page on another
//! site: a `fetch()` or auto-submitted form (`Origin: http://evil.example`,
//! `Sec-Fetch-Site: cross-site`), a sandboxed frame (`Origin: null`), and a page whose name was
//! re-pointed at 127.0.0.1 (`Host: evil.example:{port}`, same-origin from the browser's view).

use crate::helpers::*;
use crate::webdriver::{Browser, Driver};
use reqwest::Method;

/// The admin listener's `host:port` as a browser on this machine would name it.
fn local_host(env: &TestEnv) -> String {
    env.admin_url
        .trim_start_matches("http://")
        .replace("127.0.0.1", "localhost")
}

async fn send(
    env: &TestEnv,
    method: Method,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> u16 {
    let mut req = env
        .http
        .request(method, format!("{}{path}", env.admin_url))
        .header("Host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send()
        .await
        .expect("admin listener answers")
        .status()
        .as_u16()
}

async fn tenant_registered(env: &TestEnv, tenant: &str) -> bool {
    env.tenant_ids().await.iter().any(|t| t == tenant)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_page_on_another_site_cannot_change_anything_through_the_admin_listener() {
    let env = TestEnv::start(Options::default()).await;
    let host = local_host(&env);
    let attacks: [&[(&str, &str)]; 4] = [
        // fetch() or a form from another site.
        &[
            ("Origin", "http://evil.example"),
            ("Sec-Fetch-Site", "cross-site"),
            ("Sec-Fetch-Mode", "no-cors"),
        ],
        // Another port of the same machine is another origin (same site).
        &[
            ("Origin", "http://localhost:1"),
            ("Sec-Fetch-Site", "same-site"),
        ],
        // A sandboxed frame or a cross-origin redirect.
        &[("Origin", "null")],
        // An older browser: Origin only.
        &[("Origin", "http://evil.example")],
    ];
    for headers in attacks {
        let endpoints = [
            (
                Method::POST,
                format!("/admin/tenants/{TENANT_B}?start=false"),
            ),
            (Method::DELETE, format!("/admin/tenants/{TENANT_STATIC}")),
            (Method::POST, format!("/admin/tenants/{TENANT_B}/approve")),
            (Method::PUT, format!("/admin/consent/allowed/{TENANT_B}")),
            (Method::POST, "/admin/dead-letters/purge?confirm=yes".into()),
            (Method::POST, "/admin/dead-letters/requeue".into()),
            (
                Method::POST,
                format!("/admin/tenants/{TENANT_STATIC}/subscriptions/start"),
            ),
        ];
        for (method, path) in endpoints {
            let status = send(&env, method.clone(), &path, &host, headers).await;
            assert_eq!(status, 403, "{method} {path} with {headers:?}");
        }
    }
    assert!(
        !tenant_registered(&env, TENANT_B).await,
        "a cross-site request registered a tenant"
    );
    assert!(
        tenant_registered(&env, TENANT_STATIC).await,
        "a cross-site request removed a tenant"
    );
    // The same requests from the listener's own pages, or from the CLI and curl (no browser
    // headers), still work.
    let own = format!("http://{host}");
    let status = send(
        &env,
        Method::POST,
        &format!("/admin/tenants/{TENANT_B}?start=false"),
        &host,
        &[("Origin", &own), ("Sec-Fetch-Site", "same-origin")],
    )
    .await;
    assert!((200..300).contains(&status), "same-origin add: {status}");
    let status = send(
        &env,
        Method::DELETE,
        &format!("/admin/tenants/{TENANT_B}"),
        &host,
        &[],
    )
    .await;
    assert!((200..300).contains(&status), "CLI-style remove: {status}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebound_host_name_is_refused_on_every_admin_path() {
    let env = TestEnv::start(Options::default()).await;
    let port = env.admin_url.rsplit(':').next().unwrap().to_string();
    let evil = format!("evil.example:{port}");
    for (method, path) in [
        (Method::GET, "/admin/status"),
        (Method::GET, "/admin/"),
        (Method::GET, "/admin/tenants"),
        (Method::GET, "/admin/dead-letters"),
        (Method::GET, "/metrics"),
        (Method::POST, "/admin/dead-letters/purge?confirm=yes"),
    ] {
        // From the rebound page's point of view the request is same-origin.
        let same = format!("http://{evil}");
        let status = send(
            &env,
            method.clone(),
            path,
            &evil,
            &[("Origin", &same), ("Sec-Fetch-Site", "same-origin")],
        )
        .await;
        assert_eq!(status, 421, "{method} {path}");
    }
    // The probes and Prometheus reach pods by address; an operator's port-forward by localhost.
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        assert_eq!(
            send(&env, Method::GET, "/admin/status", &host, &[]).await,
            200,
            "{host}"
        );
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn names_in_o365_admin_hosts_are_accepted() {
    let env = TestEnv::start(Options {
        extra_env: vec![(
            "O365_ADMIN_HOSTS".into(),
            "relay-admin.ops.svc, Status.Example.com".into(),
        )],
        ..Options::default()
    })
    .await;
    let port = env.admin_url.rsplit(':').next().unwrap().to_string();
    for (host, want) in [
        (format!("relay-admin.ops.svc:{port}"), 200),
        ("status.example.com".to_string(), 200),
        (format!("other.ops.svc:{port}"), 421),
    ] {
        assert_eq!(
            send(&env, Method::GET, "/admin/status", &host, &[]).await,
            want,
            "{host}"
        );
    }
    env.cleanup().await;
}

/// Serves `html` at `/` on 127.0.0.1 (another site than the relay's `localhost`): the
/// attacker's page.
fn attacker_page(html: String) -> (String, actix_web::dev::ServerHandle) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://127.0.0.1:{}/",
        listener.local_addr().unwrap().port()
    );
    let server = actix_web::HttpServer::new(move || {
        let html = html.clone();
        actix_web::App::new().route(
            "/",
            actix_web::web::get().to(move || {
                let html = html.clone();
                async move {
                    actix_web::HttpResponse::Ok()
                        .content_type("text/html; charset=utf-8")
                        .body(html)
                }
            }),
        )
    })
    .listen(listener)
    .unwrap()
    .workers(1)
    .disable_signals()
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (url, handle)
}

/// The victim is the operator's Chromium: a page on another site fires a `fetch()` and
/// submits a form at the admin listener (no token on loopback, as allowed). Neither registers
/// the tenant; the same `fetch()` from the listener's own page does (so the browser could).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chromium_on_another_site_cannot_register_a_tenant_through_the_admin_listener() {
    let env = TestEnv::start(Options::default()).await;
    let admin = env.admin_url.replace("127.0.0.1", "localhost");
    let target = format!("{admin}/admin/tenants/{TENANT_B}?start=false");
    let (page, server) = attacker_page(format!(
        r#"<!doctype html><html><head><title>cat pictures</title></head><body>
<form id="f" method="post" action="{target}" target="sink"></form>
<iframe name="sink"></iframe>
<script>
fetch("{target}", {{method: "POST", mode: "no-cors", credentials: "include"}})
  .catch(() => null)
  .finally(() => {{ document.getElementById("f").submit(); document.title = "sent"; }});
</script></body></html>"#
    ));
    let driver = Driver::start().await;
    let browser = Browser::open(&driver).await;
    browser.goto(&page).await;
    for _ in 0..50 {
        if browser.title().await == "sent" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(browser.title().await, "sent", "the attack page ran");
    // Both requests (the fetch and the form) reached the listener and were refused.
    let refused = eventually(std::time::Duration::from_secs(20), || async {
        env.metric(r#"o365_admin_refused_total{reason="cross_site"}"#)
            .await
            >= 2.0
    })
    .await;
    assert!(refused, "the fetch and the form were refused as cross-site");
    assert!(
        !tenant_registered(&env, TENANT_B).await,
        "a page on another site registered a tenant through the operator's browser"
    );
    // From a page of the listener's own origin the same request goes through (`/metrics`: the
    // status page's Content-Security-Policy forbids fetch() altogether).
    browser.goto(&format!("{admin}/metrics")).await;
    browser
        .eval(&format!(
            r#"fetch("{target}", {{method: "POST"}}).then(r => {{ document.title = "own " + r.status; }});"#
        ))
        .await;
    let mut title = String::new();
    for _ in 0..50 {
        title = browser.title().await;
        if title.starts_with("own ") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(title.starts_with("own 20"), "same-origin fetch: {title}");
    assert!(tenant_registered(&env, TENANT_B).await);
    browser.close().await;
    server.stop(false).await;
    env.cleanup().await;
}
