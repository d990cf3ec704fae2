//! The reader's pages in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by `make deps`), driven over the WebDriver protocol, at a
//! desktop width and at 390 px. Screenshots go to `target/tmp/screenshots/` for review.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::harness::{TestServer, fresh_database, wait_until};
use crate::resilience::{Mode, Proxy};

const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver, a child of this process (and killed with it).
struct Driver {
    child: Child,
    base: String,
    http: reqwest::Client,
    _profile: TempDir,
    profile_path: String,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn find(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/lib/chromium"] {
        let p = format!("{dir}/{name}");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    panic!("{name} not found: install chromium and chromium-driver (make deps)");
}

impl Driver {
    async fn start() -> Driver {
        let binary = find("chromedriver");
        assert!(
            std::path::Path::new(CHROMIUM).exists(),
            "{CHROMIUM} not found: install chromium (make deps)"
        );
        let profile = std::env::temp_dir().join(format!(
            "article-server-it-{}-chromium-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&profile).expect("profile dir");
        let profile_path = profile.display().to_string();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let mut cmd = Command::new(&binary);
            cmd.arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: prctl is async-signal-safe; the driver dies with the test process.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = cmd.spawn().expect("start chromedriver");
            let driver = Driver {
                child,
                base: format!("http://127.0.0.1:{port}"),
                http: http.clone(),
                _profile: TempDir(profile.clone()),
                profile_path: profile_path.clone(),
            };
            let ready = wait_until(Duration::from_secs(15), || async {
                match driver
                    .http
                    .get(format!("{}/status", driver.base))
                    .send()
                    .await
                {
                    Ok(r) => r
                        .json::<Value>()
                        .await
                        .is_ok_and(|v| v["value"]["ready"] == true),
                    Err(_) => false,
                }
            })
            .await;
            if ready {
                return driver;
            }
            last = format!("chromedriver on port {port} did not become ready");
        }
        panic!("{last}");
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("webdriver request");
        let status = res.status();
        let v: Value = res.json().await.expect("webdriver json");
        assert!(status.is_success(), "webdriver {path}: {status} {v}");
        v["value"].clone()
    }

    async fn session(&self) -> Session<'_> {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            &format!("--user-data-dir={}", self.profile_path),
        ];
        let v = self
            .call(
                reqwest::Method::POST,
                "/session",
                Some(json!({ "capabilities": { "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": { "binary": CHROMIUM, "args": args }
                }}})),
            )
            .await;
        let id = v["sessionId"].as_str().expect("session id").to_owned();
        Session { driver: self, id }
    }
}

struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl Session<'_> {
    async fn post(&self, path: &str, body: Value) -> Value {
        self.driver
            .call(
                reqwest::Method::POST,
                &format!("/session/{}{path}", self.id),
                Some(body),
            )
            .await
    }

    /// Emulates a viewport of `width` CSS pixels (a window cannot be made that narrow).
    async fn viewport(&self, width: u32, mobile: bool) {
        self.post(
            "/goog/cdp/execute",
            json!({ "cmd": "Emulation.setDeviceMetricsOverride", "params": {
                "width": width, "height": 900, "deviceScaleFactor": 1, "mobile": mobile
            }}),
        )
        .await;
    }

    async fn open(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    async fn eval(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": [] }))
            .await
    }

    async fn screenshot(&self, name: &str) {
        let png = self
            .driver
            .call(
                reqwest::Method::GET,
                &format!("/session/{}/screenshot", self.id),
                None,
            )
            .await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64"))
            .expect("png");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(dir.join(format!("{name}.png")), bytes).expect("write screenshot");
    }

    async fn close(self) {
        self.driver
            .call(
                reqwest::Method::DELETE,
                &format!("/session/{}", self.id),
                None,
            )
            .await;
    }
}

/// Everything the checks need from the page, read in the browser.
const INSPECT: &str = r##"
const voids = new Set(['IMG','BR','HR','INPUT','META','LINK','SOURCE','WBR','TD','TH']);
const empty = [...document.body.querySelectorAll('*')]
  .filter(e => !voids.has(e.tagName) && e.children.length === 0 && e.textContent.trim() === '')
  .map(e => e.outerHTML.slice(0, 100));
const attr = (sel, name) => { const e = document.querySelector(sel); return e ? e.getAttribute(name) : null; };
const broken = [...document.querySelectorAll('a[href^="#"]')]
  .map(a => a.getAttribute('href').slice(1))
  .filter(id => !document.getElementById(id));
const style = (sel, prop) => { const e = document.querySelector(sel); return e ? getComputedStyle(e)[prop] : null; };
return {
  h1: document.querySelectorAll('h1').length,
  title: document.title,
  description: attr('meta[name=description]', 'content'),
  canonical: attr('link[rel=canonical]', 'href'),
  ogTitle: attr('meta[property="og:title"]', 'content'),
  ogUrl: attr('meta[property="og:url"]', 'content'),
  atom: attr('link[rel=alternate][type="application/atom+xml"]', 'href'),
  overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth,
  empty,
  brokenAnchors: broken,
  search: document.querySelector('input[name=q]') ? document.querySelector('input[name=q]').value : null,
  text: document.body.innerText,
  headerDisplay: style('header.site', 'display'),
  thRight: style('th.align-right', 'textAlign'),
  tdCenter: style('td.align-center', 'textAlign'),
  thBorder: style('th', 'borderTopStyle'),
  quoteBorder: style('blockquote', 'borderLeftStyle'),
  footnotes: document.querySelectorAll('.footnote').length,
  h2InBody: document.querySelectorAll('.body h2').length,
};
"##;

const BODY: &str = "# A heading in the body\n\nA paragraph with a footnote[^1] and a second one[^two].\n\n\
> A quotation, set apart.\n\n\
| Left | Centre | Right |\n|:-----|:------:|------:|\n| a | b | 1.00 |\n| longer text | c | 100.00 |\n\n\
Pneumonoultramicroscopicsilicovolcanoconiosispneumonoultramicroscopicsilicovolcanoconiosispneumonoultramicroscopicsilicovolcanoconiosis\n\n\
https://example.com/a/very/long/path/without/any/break/at/all/that/keeps/going/and/going/and/going\n\n\
```\nfn main() { println!(\"a long line of code that must scroll inside its own box and not the page\"); }\n```\n\n\
[^1]: The first note.\n[^two]: The second note.\n";

struct Checked {
    v: Value,
}

impl Checked {
    fn text(&self) -> &str {
        self.v["text"].as_str().unwrap_or("")
    }
}

async fn check(s: &Session<'_>, url: &str, name: &str, width: u32) -> Checked {
    s.open(url).await;
    let v = s.eval(INSPECT).await;
    s.screenshot(&format!("{name}-{width}")).await;
    let at = format!("{name} at {width}px");
    assert_eq!(v["h1"], 1, "{at}: exactly one h1");
    assert!(
        v["description"].as_str().is_some_and(|d| !d.is_empty()),
        "{at}: {v}"
    );
    assert!(
        v["canonical"]
            .as_str()
            .is_some_and(|c| c.starts_with("http://test.example/")),
        "{at}: {v}"
    );
    assert_eq!(v["canonical"], v["ogUrl"], "{at}");
    assert!(v["ogTitle"].as_str().is_some_and(|t| !t.is_empty()), "{at}");
    assert_eq!(v["atom"], "/feed.xml", "{at}");
    assert!(
        v["overflow"].as_i64().is_some_and(|o| o <= 0),
        "{at}: horizontal overflow {}",
        v["overflow"]
    );
    assert_eq!(v["empty"], json!([]), "{at}: empty elements");
    assert_eq!(
        v["brokenAnchors"],
        json!([]),
        "{at}: anchors without a target"
    );
    // The inline style sheet ran: the CSP hash matches it.
    assert_eq!(
        v["headerDisplay"], "flex",
        "{at}: the style sheet was blocked"
    );
    Checked { v }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_in_a_real_browser_at_desktop_and_phone_width() {
    let db = fresh_database().await;
    let (proxy, via_proxy) = Proxy::in_front_of(&db).await;
    let srv = TestServer::start(
        &via_proxy,
        &[
            ("ARTICLES_SITE_TITLE", "The Test Gazette"),
            ("ARTICLES_DATABASE_TIMEOUT_MS", "500"),
            ("ARTICLES_CACHE_TTL_SECONDS", "3600"),
        ],
    )
    .await;
    srv.wait_coherent().await;
    srv.create_published("rich", "A rich article", BODY, &["news", "long-reads"])
        .await;
    srv.create_published("plain", "A plain one", "Just a line.", &[])
        .await;

    let driver = Driver::start().await;
    let s = driver.session().await;
    for (width, mobile) in [(1280, false), (390, true)] {
        s.viewport(width, mobile).await;

        let index = check(&s, &srv.url("/"), "index", width).await;
        assert!(index.text().contains("The Test Gazette"), "{}", index.v);
        assert!(index.text().contains("A rich article"));
        assert_eq!(index.v["title"], "The Test Gazette");

        let article = check(&s, &srv.url("/articles/rich"), "article", width).await;
        let v = &article.v;
        assert_eq!(v["title"], "A rich article · The Test Gazette");
        assert_eq!(v["h2InBody"], 1, "the body's # heading is an h2");
        assert_eq!(v["thRight"], "right", "{v}");
        assert_eq!(v["tdCenter"], "center", "{v}");
        assert_eq!(v["thBorder"], "solid", "tables are styled");
        assert_eq!(v["quoteBorder"], "solid", "blockquotes are styled");
        assert_eq!(v["footnotes"], 2);
        assert!(article.text().contains("The second note."));

        let none = check(&s, &srv.url("/?q=zebra%20unicorn"), "search-none", width).await;
        assert!(
            none.text().contains("No articles match “zebra unicorn”"),
            "{}",
            none.v
        );
        assert_eq!(
            none.v["search"], "zebra unicorn",
            "the query stays in the box"
        );

        let found = check(&s, &srv.url("/?q=quotation"), "search-found", width).await;
        assert!(found.text().contains("A rich article"));
        assert_eq!(found.v["search"], "quotation");

        let missing = check(&s, &srv.url("/articles/no-such"), "404", width).await;
        assert!(missing.text().contains("Page not found"), "{}", missing.v);

        let tagged = check(&s, &srv.url("/?tag=news"), "tag", width).await;
        assert!(tagged.text().contains("Tagged news"));
    }

    // The database goes away: a page read before is still shown (stale), one never read
    // gets the readable 503 page.
    s.viewport(1280, false).await;
    proxy.set(Mode::Down);
    let stale = wait_until(Duration::from_secs(10), || async {
        srv.get("/articles/rich").await.headers()["x-cache"] == "stale"
    })
    .await;
    assert!(stale, "no stale copy while the database is away");
    let rich = check(&s, &srv.url("/articles/rich"), "article-stale", 1280).await;
    assert!(rich.text().contains("A quotation, set apart."));
    let down = check(&s, &srv.url("/articles/never-read"), "503", 1280).await;
    assert!(down.text().contains("Briefly unavailable"), "{}", down.v);
    proxy.set(Mode::Forward);
    srv.wait_ready().await;

    s.close().await;
    srv.stop().await;
}
