//! One trace across regions, against real processes: a PUT in us with a W3C `traceparent` is
//! answered with that trace (`traceresponse`, `x-request-id`), and eu's JSON log shows the apply
//! of the change it made under the same trace id, carried through us's feed. A request without
//! a valid `traceparent` starts a fresh trace of its own.

use std::time::Duration;

use meridian_tests::{eventually, http_client, Process};
use serde_json::Value;

const SECRET: &str = "trace-test-secret";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_with_a_traceparent_in_us_is_applied_in_eu_under_the_same_trace() {
    let dir = tempfile::tempdir().unwrap();
    let c = http_client();
    let us = Process::start(
        &dir.path().join("us"),
        &["--node-id", "us", "--cluster-secret", SECRET],
    );
    let seed = format!("us=http://{}", us.addr);
    let eu = Process::start_with_env(
        &dir.path().join("eu"),
        &[
            "--log-format",
            "json",
            "--node-id",
            "eu",
            "--cluster-secret",
            SECRET,
            "--peer",
            &seed,
        ],
        &[("MERIDIAN_LOG", "info,meridian::apply=debug")],
    );
    let (code, err) = meridian_tests::run_to_exit(
        &[
            "region",
            "add",
            "eu",
            &format!("http://{}", eu.addr),
            "--node",
            &us.url(""),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");

    let r = c
        .put(us.url("/v1/users/traced"))
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .header("tracestate", "vendor=x")
        .body(r#"{"name":"Ada"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let h = r.headers();
    let response = h["traceresponse"].to_str().unwrap();
    assert!(response.starts_with(&format!("00-{TRACE}-")), "{response}");
    assert!(
        !response.contains("00f067aa0ba902b7"),
        "a span of its own: {response}"
    );
    assert!(h["x-request-id"].to_str().unwrap().starts_with(TRACE));
    assert_eq!(h["tracestate"], "vendor=x");

    // eu's log: one JSON object per line, the apply under the caller's trace id
    let mut seen: Vec<String> = vec![];
    eventually(
        "eu logs the apply under the trace",
        Duration::from_secs(10),
        || {
            seen.extend(eu.log_lines());
            let found = seen.iter().any(|l| {
                serde_json::from_str::<Value>(l).is_ok_and(|v| {
                    v["trace_id"] == TRACE
                        && v["message"] == "applied changes from a peer"
                        && v["id"] == "traced"
                        && v["peer"] == "us"
                })
            });
            async move { found }
        },
    )
    .await;
    for line in &seen {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not a JSON line: {line}"
        );
    }

    // no traceparent, or a malformed one: a fresh trace each time
    let mut traces = vec![];
    for tp in [None, Some("00-garbage"), None] {
        let mut req = c.get(us.url("/v1/users/traced"));
        if let Some(tp) = tp {
            req = req.header("traceparent", tp);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200);
        let t = r.headers()["traceresponse"].to_str().unwrap().to_owned();
        assert_eq!(t.split('-').nth(1).unwrap().len(), 32, "{t}");
        traces.push(t.split('-').nth(1).unwrap().to_owned());
    }
    traces.sort();
    traces.dedup();
    assert_eq!(traces.len(), 3, "each a trace of its own");
}

/// A stand-in OTLP/HTTP collector: answers every request 200 and keeps each body.
async fn collector() -> (String, std::sync::Arc<parking_lot::Mutex<Vec<Vec<u8>>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let keep = bodies.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    // one request: its head, then Content-Length bytes of body
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < head_end + len {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buf.drain(..head_end + len).skip(head_end).collect();
                    assert!(head.starts_with("post /v1/traces "), "{head}");
                    keep.lock().push(body);
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if s.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), bodies)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_are_exported_over_otlp_under_the_callers_trace() {
    let (endpoint, bodies) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let node = Process::start_with_env(
        dir.path(),
        &["--node-id", "us", "--otlp-endpoint", &endpoint],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let c = http_client();
    let parent = "00f067aa0ba902b7";
    let r = c
        .put(node.url("/v1/users/traced"))
        .header("traceparent", format!("00-{TRACE}-{parent}-01"))
        .json(&serde_json::json!({"name": "t"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let answered = r.headers()["traceresponse"].to_str().unwrap().to_owned();
    let span = answered.split('-').nth(2).unwrap().to_owned();
    assert!(answered.starts_with(&format!("00-{TRACE}-")), "{answered}");
    assert_ne!(span, parent, "a span of its own, the caller's child");
    // a request without one: a fresh trace, exported under the ids the answer names
    let r = c.get(node.url("/v1/status")).send().await.unwrap();
    let fresh = r.headers()["traceresponse"].to_str().unwrap().to_owned();
    let fresh_trace = fresh.split('-').nth(1).unwrap().to_owned();
    let fresh_span = fresh.split('-').nth(2).unwrap().to_owned();
    let holds = |b: &[u8], s: &str| {
        let want = unhex(s);
        b.windows(want.len()).any(|w| w == want.as_slice())
    };
    let found =
        |bodies: &[Vec<u8>], ids: &[&str]| bodies.iter().any(|b| ids.iter().all(|id| holds(b, id)));
    eventually(
        "both spans reach the collector",
        Duration::from_secs(15),
        || {
            let all = bodies.lock().clone();
            // the PUT's span: the caller's trace, its own span id, the caller's span as parent
            let ok =
                found(&all, &[TRACE, &span, parent]) && found(&all, &[&fresh_trace, &fresh_span]);
            async move { ok }
        },
    )
    .await;
    let all = bodies.lock().concat();
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.contains("/v1/users/traced") && text.contains("meridian"),
        "the span's path and service"
    );
    drop(node);
    // bad endpoints are refused at start, naming the flag
    let (code, err) = meridian_tests::run_to_exit(
        &[
            "serve",
            "--data-dir",
            dir.path().join("x").to_str().unwrap(),
            "--otlp-endpoint",
            "https://otel:4318",
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--otlp-endpoint"), "{err}");
}
