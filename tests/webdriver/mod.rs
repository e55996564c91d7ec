//! A small W3C WebDriver client (over ureq, already a dependency) driving
//! headless Chromium through Debian's `chromedriver`, for the web UI's
//! end-to-end tests. `Browser::start` returns `None`, after printing why,
//! when chromium or chromedriver is not installed (`.ci/run` installs
//! them, so CI always runs the tests).
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The key naming an element in WebDriver's JSON (for script arguments).
pub const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
const ELEMENT: &str = ELEMENT_KEY;

/// A chromedriver process and one headless Chromium session.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
}

/// An element of the page.
#[derive(Clone)]
pub struct El(String);

impl El {
    /// Its WebDriver id.
    pub fn id(&self) -> &str {
        &self.0
    }
}

fn which(name: &str) -> Option<String> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| format!("{d}/{name}"))
        .find(|p| std::path::Path::new(p).is_file())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a window of
    /// `width` x `height` CSS pixels at `scale` device pixels each (2.0
    /// lays pages out as a browser zoomed to 200% would).
    pub fn start_sized(width: u32, height: u32, scale: f64) -> Option<Browser> {
        let driver = which("chromedriver");
        let chrome = ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .find_map(|n| which(n));
        let (Some(driver), Some(chrome)) = (driver, chrome) else {
            eprintln!(
                "SKIPPED: the web UI browser tests need chromium and chromedriver \
                 (Debian: apt-get install -y chromium chromium-driver; .ci/run installs them)"
            );
            return None;
        };
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().unwrap().port()
        };
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = agent
                .get(&format!("{base}/status"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut b = Browser {
            driver: child,
            base,
            session: String::new(),
            agent,
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": chrome,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    format!("--window-size={width},{height}"),
                    format!("--force-device-scale-factor={scale}"),
                    "--no-first-run", "--disable-extensions",
                ],
            },
        }}});
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_owned();
        Some(b)
    }

    /// A 1280 x 1000 window.
    pub fn start() -> Option<Browser> {
        Self::start_sized(1280, 1000, 1.0)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let resp = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or(json!({})).to_string().as_str()),
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let text = resp
            .body_mut()
            .with_config()
            .limit(1 << 28)
            .read_to_string()
            .unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        v["value"].clone()
    }

    fn s(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let v = self.call(method, &self.s(path), body);
        if let Some(e) = v.get("error") {
            panic!("WebDriver {path}: {e}: {}", v["message"]);
        }
        v
    }

    /// Opens a URL.
    pub fn go(&self, url: &str) {
        self.ok("POST", "/url", Some(json!({"url": url})));
    }

    /// Runs JavaScript (a function body; `arguments` are `args`) and
    /// returns its result.
    pub fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.ok(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// The element a script returns.
    pub fn js_element(&self, script: &str) -> El {
        let v = self.js(script, vec![]);
        El(v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("the script returned no element: {v}"))
            .to_owned())
    }

    /// The elements matching a CSS selector now.
    pub fn all(&self, css: &str) -> Vec<El> {
        let v = self.call(
            "POST",
            &self.s("/elements"),
            Some(json!({"using": "css selector", "value": css})),
        );
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(|s| El(s.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits (up to 20 s) for an element matching a CSS selector.
    pub fn find(&self, css: &str) -> El {
        self.wait_for(&format!("element '{css}'"), || {
            self.all(css).into_iter().next()
        })
    }

    /// Waits (up to 20 s) for the first element matching `css` whose text
    /// contains `text`.
    pub fn find_text(&self, css: &str, text: &str) -> El {
        self.wait_for(&format!("'{css}' with text '{text}'"), || {
            self.all(css)
                .into_iter()
                .find(|e| self.text(e).contains(text))
        })
    }

    /// Polls `f` until it gives a value (up to 20 s).
    pub fn wait_for<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        self.wait_for_within(what, Duration::from_secs(20), &mut f)
    }

    /// Polls `f` until it gives a value (up to `limit`).
    pub fn wait_for_within<T>(
        &self,
        what: &str,
        limit: Duration,
        f: &mut dyn FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > deadline {
                let page = self.js("return document.body.innerText", vec![]);
                panic!("timed out waiting for {what}; the page shows:\n{page}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Clicks an element.
    pub fn click(&self, e: &El) {
        self.ok("POST", &format!("/element/{}/click", e.0), None);
    }

    /// Clicks the first element matching a CSS selector.
    pub fn click_css(&self, css: &str) {
        let e = self.find(css);
        self.click(&e);
    }

    /// Types into an element (after clearing it).
    pub fn fill(&self, e: &El, text: &str) {
        self.ok("POST", &format!("/element/{}/clear", e.0), None);
        self.ok(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(json!({"text": text})),
        );
    }

    /// Types into the first element matching a CSS selector.
    pub fn fill_css(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.fill(&e, text);
    }

    /// Types into an element without clearing it (file inputs take a path).
    pub fn type_into(&self, e: &El, text: &str) {
        self.ok(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(json!({"text": text})),
        );
    }

    /// Chooses an option of a select by its value.
    pub fn choose(&self, css: &str, value: &str) {
        let ok = self.js(
            "const s = document.querySelector(arguments[0]); if (!s) return false; s.value = arguments[1]; \
             s.dispatchEvent(new Event('change', {bubbles: true})); return s.value === arguments[1];",
            vec![json!(css), json!(value)],
        );
        assert_eq!(ok, json!(true), "select {css} has no option {value}");
    }

    /// An element's visible text.
    pub fn text(&self, e: &El) -> String {
        self.call("GET", &self.s(&format!("/element/{}/text", e.0)), None)
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// An element's attribute.
    pub fn attr(&self, e: &El, name: &str) -> Option<String> {
        self.call(
            "GET",
            &self.s(&format!("/element/{}/attribute/{name}", e.0)),
            None,
        )
        .as_str()
        .map(str::to_owned)
    }

    /// Presses keys (WebDriver key codes, e.g. "\u{E004}" for Tab) on
    /// whatever has the focus, as a person at the keyboard does.
    pub fn keys(&self, keys: &str) {
        let mut actions = Vec::new();
        for k in keys.chars() {
            actions.push(json!({"type": "keyDown", "value": k.to_string()}));
            actions.push(json!({"type": "keyUp", "value": k.to_string()}));
        }
        self.ok(
            "POST",
            "/actions",
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})),
        );
    }

    /// What has the focus: "tag#id[name]".
    pub fn focused(&self) -> String {
        self.js(
            "const e = document.activeElement; return e.tagName.toLowerCase() + '#' + e.id + '[' + (e.name || '') + ']' + (e.textContent || '').trim().slice(0, 40);",
            vec![],
        )
        .as_str()
        .unwrap_or("")
        .to_owned()
    }

    /// Lets the page download files, into `dir` (Chromium's DevTools
    /// protocol through chromedriver).
    pub fn allow_downloads(&self, dir: &std::path::Path) {
        self.ok(
            "POST",
            "/goog/cdp/execute",
            Some(json!({"cmd": "Browser.setDownloadBehavior", "params": {
                "behavior": "allow", "downloadPath": dir.to_str().unwrap(), "eventsEnabled": true}})),
        );
    }

    /// Fails if the page logged a script error or a Content-Security-Policy
    /// violation since the last call (refused API calls, which the browser
    /// logs as failed loads, are expected and left out).
    pub fn assert_no_script_errors(&self) {
        let v = self.ok("POST", "/se/log", Some(json!({"type": "browser"})));
        let errors: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or("").to_owned())
            .filter(|m| !m.contains("Failed to load resource"))
            .collect();
        assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
    }

    /// Saves a PNG screenshot of the window as target/ui-screenshots/<name>.png.
    pub fn screenshot(&self, name: &str) -> std::path::PathBuf {
        use base64::Engine;
        let v = self.ok("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or(""))
            .expect("screenshot is base64");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
        std::fs::create_dir_all(&dir).expect("create target/ui-screenshots");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// WebDriver's key codes.
pub mod key {
    /// Tab.
    pub const TAB: &str = "\u{E004}";
    /// Enter.
    pub const ENTER: &str = "\u{E007}";
}
