//! A minimal W3C WebDriver client for the console's browser tests: Debian's
//! chromedriver driving headless Debian Chromium. Just what the tests need:
//! navigate, find, type, click, read text, run a script.

use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Browser {
    base: String,
    session: String,
    http: reqwest::Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    /// None when chromedriver or chromium is not installed (gw.sh test installs both).
    pub async fn start() -> Option<Browser> {
        let driver_bin = ["/usr/bin/chromedriver"].into_iter().find(|p| std::path::Path::new(p).exists())?;
        let chrome = ["/usr/bin/chromium"].into_iter().find(|p| std::path::Path::new(p).exists())?;
        let port = super::free_port();
        let driver = Command::new(driver_bin).arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().ok()?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        // As root and offline: no sandbox, no background traffic to Google.
        let args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=390,844".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {"binary": chrome, "args": args}}}});
        let r: Value = http.post(format!("{base}/session")).json(&caps).send().await.unwrap().json().await.unwrap();
        let session = r["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {r}")).to_string();
        Some(Browser { base, session, http, driver, _profile: profile })
    }

    async fn try_cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        req = req.json(&body.unwrap_or(json!({})));
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        if v["value"].get("error").is_some() {
            return Err(v["value"].clone());
        }
        Ok(v["value"].clone())
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        match self.try_cmd(method, path, body).await {
            Ok(v) => v,
            Err(e) => panic!("WebDriver {path}: {e}"),
        }
    }

    /// Find `css` and act on it; if the page re-rendered between the two
    /// (a stale element), find it again.
    async fn on_element(&self, css: &str, action: &str, body: Option<Value>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let el = self.find(css).await;
            match self.try_cmd(reqwest::Method::POST, &format!("/element/{el}/{action}"), body.clone()).await {
                Ok(_) => return,
                Err(e) if e["error"] == "stale element reference" && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("WebDriver {action} on {css:?}: {e}"),
            }
        }
    }

    pub async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    /// The first element matching `css`, waiting up to 10 s for it to appear.
    pub async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let url = format!("{}/session/{}/element", self.base, self.session);
            let v: Value = self.http.post(url).json(&json!({"using": "css selector", "value": css})).send().await.unwrap().json().await.unwrap();
            if let Some(id) = v["value"][ELEMENT].as_str() {
                return id.to_string();
            }
            if Instant::now() > deadline {
                let html = self.script("return location.href + '\\n' + document.documentElement.outerHTML").await;
                panic!("no element {css:?} (last answer {v}) on the page; it shows:\n{}", html.as_str().unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, "value", Some(json!({ "text": text }))).await;
    }

    pub async fn click(&self, css: &str) {
        self.on_element(css, "click", None).await;
    }

    /// The text of the first match, or "" (read in one script call, so a
    /// page re-rendering meanwhile cannot leave a stale element).
    pub async fn text(&self, css: &str) -> String {
        let sel = serde_json::to_string(css).unwrap();
        let v = self.script(&format!("const e = document.querySelector({sel}); return e ? e.innerText : ''")).await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// Wait until the text of `css` contains `want`; returns it.
    pub async fn wait_text(&self, css: &str, want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let t = self.text(css).await;
            if t.contains(want) {
                return t;
            }
            assert!(Instant::now() < deadline, "{css:?} never showed {want:?}; it shows:\n{t}\npage:\n{}", self.text("body").await);
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    pub async fn script(&self, js: &str) -> Value {
        self.cmd(reqwest::Method::POST, "/execute/sync", Some(json!({ "script": js, "args": [] }))).await
    }

    pub async fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine as _;
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default()).unwrap_or_default();
        let _ = std::fs::write(path, png);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End the session first so chromedriver closes Chromium (a plain
        // HTTP DELETE: Drop cannot await).
        use std::io::Write as _;
        if let Some(addr) = self.base.strip_prefix("http://") {
            if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = write!(s, "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", self.session);
                let _ = std::io::Read::read(&mut s, &mut [0u8; 512]);
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
