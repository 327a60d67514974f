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
