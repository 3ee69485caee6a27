//! The operator console: 401 everywhere without a key, a login that keeps
//! the key in a strict cookie, and the page driven in headless Chromium
//! while a fleet upgrade with failures runs.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};
use serde_json::json;
use tenantd::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::fleet::{self, fleet_at_v1_with};
use crate::common::metrics::{HttpResponse, request};
use crate::common::{TestServer, admin_key};

const PATHS: [&str; 8] = [
    "/",
    "/panels",
    "/stream",
    "/assets/console.js",
    "/assets/console.css",
    "/nope",
    "/login",
    "/logout",
];

fn console_on() -> impl FnOnce(&mut tenantd::app::AppConfig) {
    |c| c.console_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)))
}

async fn get(addr: SocketAddr, path: &str, cookie: Option<&str>) -> HttpResponse {
    match cookie {
        Some(c) => request(addr, "GET", path, &[("Cookie", c)], "").await,
        None => request(addr, "GET", path, &[], "").await,
    }
}

async fn post_login(addr: SocketAddr, key: &str, origin: Option<&str>) -> HttpResponse {
    let body = format!("key={}", urlencode(key));
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    if let Some(o) = origin {
        headers.push(("Origin", o));
    }
    request(addr, "POST", "/login", &headers, &body).await
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn every_console_url_answers_401_without_a_usable_key() {
    let server = TestServer::start_with(console_on()).await;
    let addr = server.console_addr().expect("the console is on");
    let mut c = server.clients().await;
    let mut db = server.db.connect().await;
    // A real key without the scopes, a user's access token, forgeries.
    let (narrow, _) = tenantd::identity::keys::create(
        &mut db,
        "narrow",
        &[tenantd::domain::identity::Scope::TenantsRead],
    )
    .await
    .unwrap();
    let (user, email) = crate::common::identity::new_user(&mut c, "con").await;
    let _ = user;
    let token = crate::common::identity::log_in(&mut c, &email, "")
        .await
        .access_token;
    let admin = admin_key();
    let forged = format!("{}x", &admin[..admin.len() - 1]);
    let bad_keys = [
        String::new(),
        "tdk_".into(),
        forged.clone(),
        admin.to_uppercase(),
        format!("\"{admin}\""),
        narrow.clone(),
        token.clone(),
        "../../etc/passwd".into(),
        "<script>alert(1)</script>".into(),
    ];
    // Keys load within 5 s: the narrow key must be known (and refused for
    // its scopes, not for being unknown).
    tokio::time::sleep(Duration::from_secs(6)).await;

    for path in PATHS {
        let r = get(addr, path, None).await;
        assert_eq!(r.status, 401, "GET {path} without a cookie");
        assert!(r.body.contains("Service key"), "the login form: {}", r.body);
        assert!(
            !r.body.contains("tenants by status"),
            "nothing of the fleet shows"
        );
        for key in &bad_keys {
            for cookie in [
                format!("tenantd_console={key}"),
                format!("other=1; tenantd_console={key}"),
                format!("Tenantd_Console={admin}"),
                format!("tenantd_console_x={admin}"),
                format!("xtenantd_console={admin}"),
            ] {
                let r = get(addr, path, Some(&cookie)).await;
                assert_eq!(r.status, 401, "GET {path} with {cookie:?}");
            }
        }
        let r = request(addr, "POST", path, &[], "").await;
        assert_eq!(r.status, 401, "POST {path} without a key");
    }
    for key in &bad_keys {
        let r = post_login(addr, key, None).await;
        assert_eq!(r.status, 401, "login with {key:?}");
        assert!(!r.headers.contains_key("set-cookie"), "{key:?}");
        assert!(
            !r.body.contains("<script>alert"),
            "what was posted is not echoed: {}",
            r.body
        );
    }
    // Posted from another site: refused even with the right key.
    let r = post_login(addr, admin, Some("http://evil.example")).await;
    assert_eq!(r.status, 401);
    assert!(!r.headers.contains_key("set-cookie"));

    // The right key: a strict, HttpOnly cookie, and the page behind it.
    let r = post_login(addr, admin, Some(&format!("http://{addr}"))).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let cookie = r.headers.get("set-cookie").expect("a cookie").clone();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    let jar = cookie.split(';').next().unwrap().to_owned();
    let page = get(addr, "/", Some(&jar)).await;
    assert_eq!(page.status, 200);
    let csp = page.headers.get("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(page.body.contains("Upgrade runs"), "{}", page.body);
    for asset in ["/assets/console.js", "/assets/console.css"] {
        assert_eq!(get(addr, asset, Some(&jar)).await.status, 200, "{asset}");
    }
    assert_eq!(get(addr, "/nope", Some(&jar)).await.status, 404);
    // A loopback console answers only to loopback names: a page on another
    // name that resolves here (DNS rebinding) gets nothing, key or not.
    for host in [
        "evil.example",
        "localhost.evil.example:80",
        "127.0.0.1.nip.io",
    ] {
        let r = request(addr, "GET", "/", &[("Host", host), ("Cookie", &jar)], "").await;
        assert_eq!(r.status, 403, "{host}");
        let r = request(
            addr,
            "POST",
            "/login",
            &[
                ("Host", host),
                ("Origin", &format!("http://{host}")),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            &format!("key={}", urlencode(admin)),
        )
        .await;
        assert_eq!(r.status, 403, "{host}");
        assert!(!r.headers.contains_key("set-cookie"));
    }

    // An open page's stream does not hold the server's shutdown up (the
    // test's shutdown timeout is 10 s).
    let mut sse = tokio::net::TcpStream::connect(addr).await.unwrap();
    sse.write_all(
        format!("GET /stream HTTP/1.1\r\nHost: {addr}\r\nCookie: {jar}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(10), sse.read(&mut head))
        .await
        .expect("the stream answers")
        .unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    let mut server = server;
    let began = Instant::now();
    server.stop().await.unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?} for an open console stream",
        began.elapsed()
    );
}

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: tokio::process::Child,
    port: u16,
}

impl Driver {
    async fn start() -> Driver {
        for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                std::path::Path::new(tool).exists(),
                "{tool} is missing: apt-get install chromium chromium-driver (.ci/run does)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // A group of its own: dropping the driver kills the browsers it
            // started too, even when the test failed before closing them.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Driver { child, port }
    }

    async fn browser(&self) -> fantoccini::Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1700",
                         "--no-first-run", "--disable-extensions"],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.start_kill();
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// What the page shows, read in one script: the panels are replaced every
/// second, so an element found in one command may be gone by the next.
async fn read_page(browser: &fantoccini::Client, script: &str) -> serde_json::Value {
    browser.execute(script, vec![]).await.unwrap()
}

/// The text of the element `css` selects, if any (trimmed).
async fn text(browser: &fantoccini::Client, css: &str) -> Option<String> {
    let found = browser
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : null;",
            vec![json!(css)],
        )
        .await
        .unwrap();
    found.as_str().map(str::to_owned)
}

#[tokio::test]
async fn the_console_shows_a_fleet_upgrade_live_in_chromium() {
    const TENANTS: usize = 240;
    const FAILING: usize = 12;
    // Each tenant's upgrade takes a little while, so the run lasts long
    // enough to be watched.
    let slow_and_strict =
        "SELECT pg_sleep(0.04);\nALTER TABLE locations ALTER COLUMN email SET NOT NULL;\n";
    let (server, _dir, tenants) =
        fleet_at_v1_with(TENANTS, &[("email_required", slow_and_strict)], |c| {
            console_on()(c);
            c.usage.sample_interval = Duration::from_millis(500);
        })
        .await;
    let addr = server.console_addr().expect("the console is on");
    let bad: Vec<&pb::Tenant> = tenants[..FAILING].iter().collect();
    let mut db = server.db.connect().await;
    fleet::add_location_without_email(&mut db, &bad).await;

    let driver = Driver::start().await;
    let browser = driver.browser().await;
    let url = format!("http://{addr}/");
    browser.goto(&url).await.unwrap();
    // Signed out: the login form.
    browser
        .find(Locator::Css("#login"))
        .await
        .expect("the login form");
    browser
        .find(Locator::Css("#key"))
        .await
        .unwrap()
        .send_keys(admin_key())
        .await
        .unwrap();
    browser
        .find(Locator::Css("#sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#tenants-total"))
        .await
        .expect("the dashboard after signing in");
    assert_eq!(
        text(&browser, "#tenants-total").await.as_deref(),
        Some(TENANTS.to_string().as_str())
    );
    // The stream is up before the run starts; a marker shows the page is
    // never reloaded.
    browser
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::XPath("//span[@id='live' and text()='live']"))
        .await
        .expect("the live stream connects");
    browser
        .execute("window.__stillTheSamePage = true; return true;", vec![])
        .await
        .unwrap();

    let mut client = fleet::migration_client(server.endpoint()).await;
    let run = fleet::start(&mut client, fleet::start_request(2, FAILING as i32 + 5)).await;
    let row = format!("#run-{}", run.id);
    let mut seen_done = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let done = text(&browser, &format!("{row} td.done")).await;
        let status = text(&browser, &format!("{row} td.status")).await;
        if let Some(d) = done.as_deref().and_then(|d| d.parse::<i64>().ok()) {
            seen_done.insert(d);
        }
        if status.as_deref() == Some("failed") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run never showed as ended: {status:?} {done:?}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let ended = fleet::get_run(&mut client, &run.id).await;
    let totals = fleet::totals(&ended);
    assert_eq!(
        (totals.done, totals.failed),
        ((TENANTS - FAILING) as i64, FAILING as i64)
    );
    // The last totals show once the run ended (within a tick).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        text(&browser, &format!("{row} td.done")).await.as_deref(),
        Some(totals.done.to_string().as_str())
    );
    assert_eq!(
        text(&browser, &format!("{row} td.failed")).await.as_deref(),
        Some(totals.failed.to_string().as_str())
    );
    assert_eq!(
        text(&browser, &format!("{row} td.pending"))
            .await
            .as_deref(),
        Some("0")
    );
    assert!(
        seen_done.len() >= 3,
        "the numbers changed while the page watched: {seen_done:?}"
    );
    let same_page = browser
        .execute("return window.__stillTheSamePage === true;", vec![])
        .await
        .unwrap();
    assert_eq!(same_page, json!(true), "updated without reloading");

    // The failed tenants are listed with their SQLSTATE.
    let rows = read_page(
        &browser,
        "return [...document.querySelectorAll('tr.failure')].map(r => [r.dataset.tenant, r.textContent]);",
    )
    .await;
    let mut listed = HashSet::new();
    for row in rows.as_array().unwrap() {
        let row_text = row[1].as_str().unwrap();
        assert!(row_text.contains("23502"), "{row_text}");
        listed.insert(row[0].as_str().unwrap().to_owned());
    }
    let expected: HashSet<String> = bad.iter().map(|t| t.id.clone()).collect();
    assert_eq!(listed, expected);
    // By schema version: the chart counts the upgraded tenants at v2.
    let v2 = read_page(
        &browser,
        "const b = document.querySelector(\"#chart-versions g.bar[data-label='v2']\"); return b ? b.dataset.count : null;",
    )
    .await;
    assert_eq!(v2, json!(totals.done.to_string()), "the v2 bar");

    let shots = target_dir();
    std::fs::create_dir_all(&shots).unwrap();
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(shots.join("console.png"), &png).unwrap();

    // A narrow window: nothing spills past the viewport but the tables,
    // which scroll inside their panels.
    browser.set_window_size(390, 1200).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let overflow = browser
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        overflow.as_i64().unwrap_or(1) <= 0,
        "the page is wider than a narrow window: {overflow}"
    );
    std::fs::write(
        shots.join("console-narrow.png"),
        browser.screenshot().await.unwrap(),
    )
    .unwrap();

    // Signing out ends the session: the next load is the login form.
    browser
        .find(Locator::Css("header form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#login"))
        .await
        .expect("the login form after signing out");
    browser.close().await.unwrap();
}
