//! The Prometheus endpoint as a scraper sees it: one HTTP/1.1 request over
//! a fresh connection, and a scrape checked line by line.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 response.
pub struct HttpResponse {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

/// `method path` over a fresh connection, read until the server closes it.
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> HttpResponse {
    request(addr, method, path, &[], "").await
}

/// `method path` with extra `headers` and `body` over a fresh connection,
/// read until the server closes it.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the HTTP listener");
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    // The listener's address, unless the caller names another host.
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("the HTTP listener answers within 10 s")
        .unwrap();
    let raw = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("headers end");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// A scrape, checked line by line: every sample is `name{labels} value` or
/// `name value`, the text ends in `# EOF`, and no label value holds a UUID.
pub struct Scrape {
    pub text: String,
    pub samples: HashMap<String, f64>,
}

impl Scrape {
    pub async fn of(addr: SocketAddr) -> Scrape {
        let response = http(addr, "GET", "/metrics").await;
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(
            response.headers.get("content-type").map(String::as_str),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
        Scrape::parse(response.body)
    }

    fn parse(text: String) -> Scrape {
        assert!(text.ends_with("# EOF\n"), "{text}");
        let mut samples = HashMap::new();
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no value in {line:?}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let name = match series.split_once('{') {
                Some((name, labels)) => {
                    let labels = labels
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                    for label in split_labels(labels) {
                        let (key, value) = label
                            .split_once('=')
                            .unwrap_or_else(|| panic!("bad label {label:?} in {line:?}"));
                        assert!(is_name(key), "bad label name in {line:?}");
                        let value = value
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .unwrap_or_else(|| panic!("unquoted label value in {line:?}"));
                        assert!(!holds_uuid(value), "a UUID as label value: {line:?}");
                    }
                    name
                }
                None => series,
            };
            assert!(
                is_name(name) && name.starts_with("tenantd_"),
                "bad name in {line:?}"
            );
            assert!(
                samples.insert(series.to_owned(), value).is_none(),
                "{series} twice"
            );
        }
        Scrape { text, samples }
    }

    /// The value of one series, written as in the exposition.
    pub fn value(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in\n{}", self.text))
    }

    pub fn assert(&self, series: &str, expected: f64) {
        assert_eq!(self.value(series), expected, "{series} in\n{}", self.text);
    }
}

/// `a="x",b="y,z"` into its labels (label values here hold no quotes).
fn split_labels(labels: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in labels.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&labels[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&labels[start..]);
    out
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn holds_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    [36, 32].iter().any(|&n| {
        b.len() >= n
            && (0..=b.len() - n).any(|i| {
                std::str::from_utf8(&b[i..i + n]).is_ok_and(|w| uuid::Uuid::try_parse(w).is_ok())
            })
    })
}
