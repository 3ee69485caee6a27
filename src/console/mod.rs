//! The operator console: one page on an HTTP listener of its own
//! (`--console-addr`, off by default) that shows the fleet at a glance and
//! keeps itself current through server-sent events.
//!
//! Every URL needs a service key with `tenants:read` and `events:read`,
//! entered once on the login form and kept in an HttpOnly, SameSite=Strict
//! cookie; without it every URL answers 401 (the login form). The HTML is
//! rendered by askama (escaped), the charts are SVG drawn here, and the
//! script and style sheet are compiled into the binary, so the page loads
//! with no network. Its Content-Security-Policy allows nothing from
//! elsewhere and no inline script.

use std::fmt::Write as _;
use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::catalog;
use crate::domain::identity::Scope;
use crate::domain::upgrade::Run;
use crate::events::Events;
use crate::fleet::Upgrades;
use crate::identity::Identity;
use crate::listener::{ConnectionLimits, Served};
use crate::usage::{Order, Usage};

/// The cookie that carries the service key.
const COOKIE: &str = "tenantd_console";
/// How often an open page is brought up to date.
const TICK: Duration = Duration::from_secs(1);
/// What the console's pages may load: only this listener's own script and
/// style sheet.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// The login form carries its few styles inline (nothing else may load
/// before a key is given).
const LOGIN_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
                         frame-ancestors 'none'; base-uri 'none'";

const SCRIPT: &str = include_str!("../../assets/console/console.js");
const STYLE: &str = include_str!("../../assets/console/console.css");

/// What the console reads.
pub struct ConsoleParts {
    pub identity: Identity,
    pub upgrades: Upgrades,
    pub events: Events,
    pub usage: Usage,
    pub catalog: PgPool,
    /// Ends the pages' streams when the server shuts down.
    pub shutdown: CancellationToken,
    /// The listener is on loopback: requests must name a loopback host
    /// (a page on another name that resolves here — DNS rebinding — is
    /// refused).
    pub loopback_only: bool,
}

#[derive(Clone)]
pub struct Console {
    parts: std::sync::Arc<ConsoleParts>,
    /// The panels as last rendered, shared by every open page: however
    /// many pages are open, the catalog is read once a tick.
    rendered: std::sync::Arc<tokio::sync::Mutex<Option<(std::time::Instant, String)>>>,
}

impl Console {
    pub fn new(parts: ConsoleParts) -> Self {
        Self {
            parts: std::sync::Arc::new(parts),
            rendered: Default::default(),
        }
    }

    /// Serves until the parts' `shutdown`, its connections guarded as
    /// every listener's are ([`crate::listener`]).
    pub async fn serve(self, listener: TcpListener, limits: ConnectionLimits) {
        let stop = self.parts.shutdown.clone();
        let service = hyper_util::service::TowerToHyperService::new(self.router());
        crate::listener::serve_http1(listener, limits, Served::Console, service, stop).await;
    }

    pub fn router(self) -> Router {
        Router::new()
            .route("/", get(page))
            .route("/login", post(login))
            .route("/logout", post(logout))
            .route("/panels", get(panels))
            .route("/stream", get(stream))
            .route("/assets/console.js", get(script))
            .route("/assets/console.css", get(style))
            .fallback(not_found)
            .layer(axum::middleware::from_fn_with_state(self.clone(), gate))
            .with_state(self)
    }

    /// Whether the request carries a service key that may use the console.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        key_from_cookies(headers).is_some_and(|key| self.key_may_use(key))
    }

    fn key_may_use(&self, key: &str) -> bool {
        self.parts
            .identity
            .keys
            .verify(key)
            .is_some_and(|k| k.has(Scope::TenantsRead) && k.has(Scope::EventsRead))
    }

    /// Everything the page shows, read now.
    async fn view(&self) -> anyhow::Result<Panels> {
        let p = &self.parts;
        let mut conn = p.catalog.acquire().await?;
        let census = catalog::tenants::census(&mut *conn).await?;
        let events = catalog::events::newest(&mut conn, 15).await?;
        drop(conn);
        let (runs, _) = p
            .upgrades
            .list(None, 6)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut failures = Vec::new();
        let mut conn = p.catalog.acquire().await?;
        for run in runs.iter().filter(|r| r.totals.failed > 0).take(3) {
            for f in catalog::upgrades::failed_items(&mut conn, run.id, 100).await? {
                failures.push(FailureView {
                    run: short(&run.id.0.to_string()),
                    tenant_id: f.tenant_id.to_string(),
                    slug: f.slug,
                    sqlstate: f.sqlstate,
                    message: f.message,
                    attempts: f.attempts,
                });
            }
        }
        drop(conn);
        let (heaviest, sampled) = p.usage.heaviest(Order::Size, 10);
        let (busiest, _) = p.usage.heaviest(Order::Calls, 10);
        Ok(Panels::build(
            &census, &runs, failures, &heaviest, &busiest, sampled, &events,
        ))
    }

    /// The panels, rendered at most once a tick for all pages together.
    async fn render_panels(&self) -> Result<String, Response> {
        let mut last = self.rendered.lock().await;
        if let Some((at, body)) = last.as_ref()
            && at.elapsed() < TICK.mul_f64(0.9)
        {
            return Ok(body.clone());
        }
        let body = self.render_now().await?;
        *last = Some((std::time::Instant::now(), body.clone()));
        Ok(body)
    }

    async fn render_now(&self) -> Result<String, Response> {
        let view = self.view().await.map_err(|e| {
            tracing::warn!(error = %format!("{e:#}"), "the console cannot read the catalog");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot read the catalog; retrying",
            )
                .into_response()
        })?;
        view.render().map_err(|e| {
            tracing::error!(error = %e, "cannot render the console");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        })
    }
}

/// Whether the request's Host names this machine by a loopback address or
/// `localhost` (with or without a port).
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The service key in the request's cookie, if any.
fn key_from_cookies(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

#[derive(Template)]
#[template(path = "console/login.html")]
struct Login<'a> {
    error: &'a str,
}

/// 401 with the login form.
fn unauthorized(error: &str) -> Response {
    let body = Login { error }.render().unwrap_or_default();
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, LOGIN_CSP),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

fn html(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// A form post from another site (its Origin not this host) is refused:
/// SameSite=Strict already keeps the cookie off it, this keeps the login
/// form from being posted to.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|o| o == host)
}

#[derive(Template)]
#[template(path = "console/page.html")]
struct Page {
    panels: String,
}

/// Lets through only requests with a usable key in their cookie, and the
/// login form's post; everything else (unknown paths and methods too) is
/// 401 with the login form.
async fn gate(
    State(console): State<Console>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if console.parts.loopback_only && !loopback_host(request.headers()) {
        return (
            StatusCode::FORBIDDEN,
            "the console answers only to a loopback host name (127.0.0.1, [::1], localhost)",
        )
            .into_response();
    }
    let login = request.uri().path() == "/login" && request.method() == axum::http::Method::POST;
    if login || console.authorized(request.headers()) {
        next.run(request).await
    } else {
        unauthorized("")
    }
}

async fn page(State(console): State<Console>) -> Response {
    match console.render_panels().await {
        Ok(panels) => match (Page { panels }).render() {
            Ok(body) => html(body),
            Err(e) => {
                tracing::error!(error = %e, "cannot render the console");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        },
        Err(r) => r,
    }
}

async fn panels(State(console): State<Console>) -> Response {
    match console.render_panels().await {
        Ok(body) => html(body),
        Err(r) => r,
    }
}

#[derive(serde::Deserialize)]
struct LoginForm {
    key: String,
}

async fn login(
    State(console): State<Console>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if !same_origin(&headers) {
        return unauthorized("the login form must be posted from this page");
    }
    let Ok(Form(form)) = form else {
        return unauthorized("enter a service key");
    };
    let key = form.key.trim();
    // A key is printable ASCII without `;` or spaces, so it fits a cookie.
    let fits = !key.is_empty()
        && key.len() <= 256
        && key
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b',');
    if !fits || !console.key_may_use(key) {
        tracing::info!("console login refused");
        return unauthorized(
            "that is not a service key with the scopes tenants:read and events:read",
        );
    }
    let cookie = format!("{COOKIE}={key}; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200");
    let mut response = Redirect::to("/").into_response();
    match HeaderValue::from_str(&cookie) {
        Ok(v) => {
            response.headers_mut().insert(header::SET_COOKIE, v);
            response
        }
        Err(_) => unauthorized("that key cannot be kept in a cookie"),
    }
}

async fn logout(headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return unauthorized("");
    }
    let mut response = Redirect::to("/").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("tenantd_console=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    response
}

/// The panels again every second, as server-sent events, until the page
/// goes away, the server shuts down, or its key stops being valid (the
/// stream then ends and the page reloads into the login form).
async fn stream(State(console): State<Console>, headers: HeaderMap) -> Response {
    let key = key_from_cookies(&headers).unwrap_or_default().to_owned();
    let updates =
        futures::stream::unfold((console, key, true), |(console, key, first)| async move {
            if !first {
                tokio::select! {
                    () = tokio::time::sleep(TICK) => {}
                    // Open pages must not hold the server's shutdown up.
                    () = console.parts.shutdown.cancelled() => return None,
                }
            }
            if console.parts.shutdown.is_cancelled() || !console.key_may_use(&key) {
                return None;
            }
            let event = match console.render_panels().await {
                Ok(body) => SseEvent::default()
                    .event("panels")
                    .data(body.replace(['\n', '\r'], " ")),
                Err(_) => SseEvent::default()
                    .event("trouble")
                    .data("cannot read the catalog; retrying"),
            };
            Some((
                Ok::<_, std::convert::Infallible>(event),
                (console, key, false),
            ))
        });
    let mut response = Sse::new(updates)
        .keep_alive(KeepAlive::default())
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        SCRIPT,
    )
        .into_response()
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        STYLE,
    )
        .into_response()
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found").into_response()
}

fn short(id: &str) -> String {
    id.chars().take(8).collect()
}

/// One upgrade run as the page shows it.
struct RunView {
    id: String,
    short: String,
    status: String,
    target: i64,
    total: i64,
    done: i64,
    failed: i64,
    pending: i64,
    running: i64,
    skipped: i64,
    rate: String,
    eta: String,
    /// Finished share, 0–100, for the progress bar.
    percent: i64,
    failed_percent: i64,
    started: String,
}

struct FailureView {
    run: String,
    tenant_id: String,
    slug: String,
    sqlstate: String,
    message: String,
    attempts: i32,
}

struct HeavyView {
    tenant_id: String,
    slug: String,
    size: String,
    rows: i64,
    calls: u64,
    errors: u64,
    p99: String,
}

struct EventView {
    cursor: i64,
    at: String,
    kind: String,
    actor: String,
    target: String,
}

#[derive(Template)]
#[template(path = "console/panels.html")]
struct Panels {
    updated: String,
    tenants: i64,
    by_status: Vec<(String, i64)>,
    status_chart: String,
    version_chart: String,
    runs: Vec<RunView>,
    failures: Vec<FailureView>,
    heaviest: Vec<HeavyView>,
    busiest: Vec<HeavyView>,
    sampled: usize,
    events: Vec<EventView>,
}

impl Panels {
    fn build(
        census: &[(String, i64, i64)],
        runs: &[Run],
        failures: Vec<FailureView>,
        heaviest: &[crate::usage::TenantUsage],
        busiest: &[crate::usage::TenantUsage],
        sampled: usize,
        events: &[catalog::events::EventRow],
    ) -> Self {
        let mut by_status: Vec<(String, i64)> = Vec::new();
        let mut by_version: std::collections::BTreeMap<i64, i64> = Default::default();
        for (status, version, n) in census {
            match by_status.iter_mut().find(|(s, _)| s == status) {
                Some((_, total)) => *total += n,
                None => by_status.push((status.clone(), *n)),
            }
            *by_version.entry(*version).or_default() += n;
        }
        let order = ["active", "provisioning", "suspended", "archived"];
        by_status.sort_by_key(|(s, _)| order.iter().position(|o| o == s).unwrap_or(order.len()));
        let tenants = by_status.iter().map(|(_, n)| n).sum();
        let status_chart = bar_chart(
            &by_status
                .iter()
                .map(|(s, n)| (s.clone(), *n))
                .collect::<Vec<_>>(),
            "tenants by status",
        );
        let version_chart = bar_chart(
            &by_version
                .iter()
                .map(|(v, n)| (format!("v{v}"), *n))
                .collect::<Vec<_>>(),
            "tenants by schema version",
        );
        let heavy = |u: &crate::usage::TenantUsage| HeavyView {
            tenant_id: u.tenant.to_string(),
            slug: u
                .sampled
                .as_ref()
                .map(|s| s.slug.clone())
                .unwrap_or_default(),
            size: crate::usage::human_bytes(u.sampled.as_ref().map_or(0, |s| s.schema.bytes)),
            rows: u.sampled.as_ref().map_or(0, |s| s.schema.rows),
            calls: u.calls.calls,
            errors: u.calls.errors,
            p99: format!("{:.1}", u.calls.p99_ms),
        };
        Self {
            updated: Utc::now().format("%H:%M:%S UTC").to_string(),
            tenants,
            by_status,
            status_chart,
            version_chart,
            runs: runs.iter().map(run_view).collect(),
            failures,
            heaviest: heaviest.iter().map(heavy).collect(),
            busiest: busiest.iter().map(heavy).collect(),
            sampled,
            events: events
                .iter()
                .map(|e| EventView {
                    cursor: e.seq,
                    at: time(e.at),
                    kind: e.action.clone(),
                    actor: e.actor.clone(),
                    target: e.target.clone(),
                })
                .collect(),
        }
    }
}

fn run_view(r: &Run) -> RunView {
    let t = &r.totals;
    let finished = t.done + t.failed + t.skipped;
    let percent = |n: i64| if t.total > 0 { n * 100 / t.total } else { 0 };
    RunView {
        id: r.id.0.to_string(),
        short: short(&r.id.0.to_string()),
        status: r.status.as_str().to_owned(),
        target: r.settings.target_version,
        total: t.total,
        done: t.done,
        failed: t.failed,
        pending: t.pending,
        running: t.running,
        skipped: t.skipped,
        rate: format!("{:.1}", t.rate),
        eta: match t.eta() {
            Some(d) if t.pending + t.running > 0 => {
                humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
            }
            _ => "—".into(),
        },
        percent: percent(finished),
        failed_percent: percent(t.failed),
        started: time(r.created_at),
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// A horizontal bar chart as SVG: one bar per (label, count), scaled to
/// the largest. Labels are escaped; the rest is numbers.
fn bar_chart(bars: &[(String, i64)], title: &str) -> String {
    const WIDTH: i64 = 360;
    const LABEL: i64 = 90;
    const ROW: i64 = 22;
    let max = bars.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let height = (bars.len() as i64).max(1) * ROW + 4;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" role="img" viewBox="0 0 {w} {height}" width="100%" preserveAspectRatio="xMinYMin meet" xmlns="http://www.w3.org/2000/svg"><title>{}</title>"#,
        escape(title),
        w = WIDTH + LABEL + 60,
    );
    if bars.is_empty() {
        let _ = write!(svg, r#"<text x="0" y="16" class="empty">none yet</text>"#);
    }
    for (i, (label, n)) in bars.iter().enumerate() {
        let y = i as i64 * ROW + 2;
        let w = (n * WIDTH / max).max(if *n > 0 { 2 } else { 0 });
        let _ = write!(
            svg,
            r#"<g class="bar" data-label="{l}" data-count="{n}"><text x="0" y="{ty}">{l}</text><rect x="{LABEL}" y="{y}" width="{w}" height="{h}" rx="3"></rect><text x="{tx}" y="{ty}" class="count">{n}</text></g>"#,
            l = escape(label),
            ty = y + 14,
            h = ROW - 6,
            tx = LABEL + w + 6,
        );
    }
    svg.push_str("</svg>");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_read_from_the_cookie_header_only_by_its_name() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; tenantd_console=tdk_x; b=2"),
        );
        assert_eq!(key_from_cookies(&h), Some("tdk_x"));
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("xtenantd_console=tdk_y"),
        );
        assert_eq!(key_from_cookies(&h), None);
    }

    #[test]
    fn charts_escape_labels_and_scale_to_the_largest() {
        let svg = bar_chart(&[("<b>".into(), 5), ("v2".into(), 10)], "t");
        assert!(svg.contains("&lt;b&gt;") && !svg.contains("<b>"), "{svg}");
        assert!(svg.contains(r#"width="360""#), "{svg}");
        assert!(svg.contains(r#"width="180""#), "{svg}");
    }

    #[test]
    fn only_loopback_host_names_pass() {
        let host = |h: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, HeaderValue::from_static(h));
            loopback_host(&m)
        };
        for ok in [
            "127.0.0.1:8081",
            "127.0.0.1",
            "localhost:8081",
            "LOCALHOST",
            "[::1]:8081",
            "127.1.2.3:1",
        ] {
            assert!(host(ok), "{ok}");
        }
        for bad in [
            "evil.example:8081",
            "localhost.evil.example:8081",
            "127.0.0.1.nip.io:8081",
            "10.0.0.1:8081",
            "[::2]:8081",
            "",
        ] {
            assert!(!host(bad), "{bad}");
        }
        assert!(!loopback_host(&HeaderMap::new()));
    }

    #[test]
    fn a_post_from_another_origin_is_not_same_origin() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8081"));
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8081"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h));
    }
}
