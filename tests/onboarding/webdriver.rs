//! A WebDriver client for Debian's chromium (headless) driven by chromedriver: JSON over HTTP,
//! so reqwest is the whole client. Shared by the onboarding browser tests and the security
//! tests (`#[path]`); `.ci/browser-setup` installs chromium and chromium-driver.

#![allow(dead_code)]

use crate::helpers::*;
use base64::Engine;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver as a child process on a free port; killed on drop.
pub struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    /// Also on a failed assertion: chromedriver's `/shutdown` quits the browsers it started
    /// (killing chromedriver alone would orphan them), then the process is killed.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let addr = self.url.trim_start_matches("http://").to_string();
        if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                s,
                "GET /shutdown HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
            );
            let _ = s.read_to_end(&mut Vec::new());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    pub async fn start() -> Driver {
        assert!(
            std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
            "{CHROMEDRIVER} or {CHROMIUM} is missing: the browser test needs Debian's chromium and \
             chromium-driver. Install them with `bash .ci/browser-setup` (CI runs it)."
        );
        let port = bind().local_addr().unwrap().port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let http = client();
        let ready = eventually(Duration::from_secs(20), || {
            let http = http.clone();
            let url = format!("{}/status", driver.url);
            async move {
                match http.get(url).send().await {
                    Ok(r) => r
                        .json::<Value>()
                        .await
                        .is_ok_and(|v| v["value"]["ready"] == true),
                    Err(_) => false,
                }
            }
        })
        .await;
        assert!(ready, "chromedriver did not become ready on port {port}");
        driver
    }
}

/// One WebDriver session (one headless chromium with a fresh profile).
pub struct Browser {
    http: reqwest::Client,
    base: String,
    profile: std::path::PathBuf,
}

impl Browser {
    pub async fn open(driver: &Driver) -> Browser {
        let profile = std::env::temp_dir().join(format!("o365-chromium-{}", unique()));
        std::fs::create_dir_all(&profile).unwrap();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .build()
            .unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                    "--window-size=1000,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let r = http
            .post(format!("{}/session", driver.url))
            .json(&caps)
            .send()
            .await
            .expect("chromedriver answers");
        let v: Value = r.json().await.unwrap();
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromium session could not start: {v}"))
            .to_string();
        Browser {
            http,
            base: format!("{}/session/{id}", driver.url),
            profile,
        }
    }

    pub async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        let v = self
            .cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
        assert!(v.is_null(), "navigation to {url} failed: {v}");
    }

    pub async fn current_url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits until the page's URL starts with `prefix`: a click that navigates has landed. An
    /// element looked up before then may be the previous page's (the simulator's consent page
    /// has a `#tenant` too), read as it goes stale.
    pub async fn wait_for_url(&self, prefix: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let url = self.current_url().await;
            if url.starts_with(prefix) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("still on {url}, not {prefix}…");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn source(&self) -> String {
        self.cmd(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn title(&self) -> String {
        self.cmd(reqwest::Method::GET, "/title", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Finds `css` once the page shows it (navigations take a moment), or fails with the page.
    pub async fn find(&self, css: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let v = self
                .cmd(
                    reqwest::Method::POST,
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            if let Some(id) = v[ELEMENT].as_str() {
                return id.to_string();
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "no element {css} on {}:\n{}",
                    self.current_url().await,
                    self.source().await
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn click(&self, css: &str) {
        let id = self.find(css).await;
        let v = self
            .cmd(
                reqwest::Method::POST,
                &format!("/element/{id}/click"),
                Some(json!({})),
            )
            .await;
        assert!(v.is_null(), "click on {css} failed: {v}");
    }

    pub async fn text(&self, css: &str) -> String {
        let id = self.find(css).await;
        self.cmd(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Saves a PNG screenshot as `test-artifacts/{name}.png` in the crate root.
    pub async fn screenshot(&self, name: &str) -> std::path::PathBuf {
        let b64 = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("a base64 screenshot"))
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("test-artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Types `text` into the field found by `css`.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        let v = self
            .cmd(
                reqwest::Method::POST,
                &format!("/element/{id}/value"),
                Some(json!({ "text": text })),
            )
            .await;
        assert!(v.is_null(), "typing into {css} failed: {v}");
    }

    /// Resizes the window (CSS pixels), e.g. to a phone's.
    pub async fn resize(&self, width: u32, height: u32) {
        self.cmd(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await;
    }

    /// Runs `script` in the page and returns its value.
    pub async fn eval(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// Picks `value` in the `<select>` found by `css` (the simulator's tenant picker).
    pub async fn select(&self, css: &str, value: &str) {
        self.click(&format!("{css} option[value=\"{value}\"]"))
            .await;
    }

    pub async fn close(self) {
        let _ = self.cmd(reqwest::Method::DELETE, "", None).await;
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
