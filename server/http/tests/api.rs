//! HTTP contract tests: every route and every error code, driven through the router without
//! sockets.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use meridian_crdt::{Store, StoreConfig};
use meridian_http::{app, AppState, Limits, Options};
use serde_json::{json, Value};
use tower::ServiceExt;

struct Node {
    app: Router,
    _dir: tempfile::TempDir,
}

fn node_with(limits: Limits) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut c = StoreConfig::new(dir.path());
    c.node_id = Some("test-node".into());
    let store = Store::open(c).unwrap();
    Node {
        app: app(AppState::new(store, "test", limits)),
        _dir: dir,
    }
}

fn node() -> Node {
    node_with(Limits::default())
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

async fn send_body(
    app: &Router,
    method: &str,
    uri: &str,
    ct: Option<&str>,
    headers: &[(&str, &str)],
    body: Body,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(ct) = ct {
        req = req.header("content-type", ct);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Reply {
        status,
        headers,
        body,
    }
}

async fn send(app: &Router, method: &str, uri: &str, body: Option<&str>) -> Reply {
    send_with(app, method, uri, body, &[]).await
}

async fn send_with(
    app: &Router,
    method: &str,
    uri: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Reply {
    let ct = match (method, body) {
        (_, None) => None,
        ("PATCH", _) => Some("application/merge-patch+json"),
        _ => Some("application/json"),
    };
    send_body(
        app,
        method,
        uri,
        ct,
        headers,
        Body::from(body.unwrap_or("").to_owned()),
    )
    .await
}

#[tokio::test]
async fn documents_are_created_read_replaced_patched_and_deleted() {
    let n = node();
    let a = &n.app;
    // --- PUT creates (201), then replaces (200)
    let r = send(
        a,
        "PUT",
        "/v1/users/alice",
        Some(r#"{"name":"Alice","age":30,"bio":"hi"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["value"], json!({"name":"Alice","age":30,"bio":"hi"}));
    assert_eq!(r.body["collection"], "users");
    assert_eq!(r.body["id"], "alice");
    let v1 = r.body["version"].as_str().unwrap().to_owned();
    let r = send(
        a,
        "PUT",
        "/v1/users/alice",
        Some(r#"{"name":"Alice","score":1.5}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["value"], json!({"name":"Alice","score":1.5}));
    assert_ne!(r.body["version"], v1.as_str());
    // --- PATCH: RFC 7396, with either media type
    let r = send(
        a,
        "PATCH",
        "/v1/users/alice",
        Some(r#"{"score":null,"tags":["x"],"nested":{"k":"v"}}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body["value"],
        json!({"name":"Alice","tags":["x"],"nested":{"k":"v"}})
    );
    let r = send_body(
        a,
        "PATCH",
        "/v1/users/bob",
        Some("application/json; charset=utf-8"),
        &[],
        Body::from(r#"{"n":1}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    // --- GET, with and without conflicts
    let r = send(a, "GET", "/v1/users/alice", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["value"]["nested"], json!({"k":"v"}));
    assert_eq!(r.headers["content-type"], "application/json");
    let r = send(a, "GET", "/v1/users/alice?conflicts=true", None).await;
    assert_eq!(r.body["conflicts"], json!([]));
    // --- DELETE, then 404 everywhere
    let r = send(a, "DELETE", "/v1/users/alice", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["deleted"], true);
    assert!(r.body["version"].is_string());
    assert_eq!(
        send(a, "GET", "/v1/users/alice", None).await.code(),
        "not_found"
    );
    assert_eq!(
        send(a, "DELETE", "/v1/users/alice", None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send(a, "GET", "/v1/users/nobody", None).await.status,
        StatusCode::NOT_FOUND
    );
    let r = send(a, "GET", "/v1/users", None).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    // --- a write after the delete re-creates it
    let r = send(a, "PATCH", "/v1/users/alice", Some(r#"{"again":true}"#)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["value"], json!({"again":true}));
}

#[tokio::test]
async fn values_come_back_exactly_as_written() {
    let n = node();
    let body = r#"{"i":9223372036854775807,"n":-9223372036854775808,"f":1.5,"one":1.0,"tiny":5e-324,"s":"日本語 🎉 \u0000","t":true,"z":null,"a":[[],{}]}"#;
    send(&n.app, "PUT", "/v1/c/d", Some(body)).await;
    let r = send(&n.app, "GET", "/v1/c/d", None).await;
    let want: Value = serde_json::from_str(body).unwrap();
    assert_eq!(r.body["value"], want);
    assert_eq!(r.body["value"]["one"].to_string(), "1.0");
    assert_eq!(r.body["value"]["i"].to_string(), "9223372036854775807");
}

#[tokio::test]
async fn ops_are_atomic_and_refused_whole() {
    let n = node();
    let a = &n.app;
    send(a, "PUT", "/v1/c/d", Some(r#"{"list":[1],"s":"abc"}"#)).await;
    let ops = r#"{"ops":[{"op":"increment","path":"/hits","by":2},{"op":"insert","path":"/list/-","value":2},
        {"op":"splice","path":"/s","index":1,"delete":1,"insert":"XY"},{"op":"set","path":"/k","value":{"x":1}},
        {"op":"remove","path":"/list/0"}]}"#;
    let r = send(a, "POST", "/v1/c/d/ops", Some(ops)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body["value"],
        json!({"list":[2],"s":"aXYc","hits":2,"k":{"x":1}})
    );
    let before = send(a, "GET", "/v1/c/d", None).await.body;
    let r = send(a, "POST", "/v1/c/d/ops", Some(r#"{"ops":[{"op":"set","path":"/new","value":1},{"op":"increment","path":"/s","by":1}]}"#)).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable")
    );
    let r2 = send(
        a,
        "POST",
        "/v1/c/d/ops",
        Some(r#"{"ops":[{"op":"insert","path":"/list/7","value":1}]}"#),
    )
    .await;
    assert_eq!(r2.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        send(a, "GET", "/v1/c/d", None).await.body,
        before,
        "a refused request changed nothing"
    );
    for bad in [
        r#"{"ops":[{"op":"explode","path":"/a"}]}"#,
        r#"{"ops":[{"op":"set","path":"a","value":1}]}"#,
        r#"{"ops":[{"op":"set","path":"/a~9","value":1}]}"#,
        r#"{"ops":[]}"#,
        r#"{"ops":{}}"#,
        r#"{"operations":[]}"#,
        r#"{"ops":[{"op":"increment","path":"/a","by":"1"}]}"#,
    ] {
        let r = send(a, "POST", "/v1/c/d/ops", Some(bad)).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{bad}"
        );
    }
    assert_eq!(send(a, "GET", "/v1/c/d", None).await.body, before);
}

#[tokio::test]
async fn idempotency_keys_make_retries_safe() {
    let n = node();
    let a = &n.app;
    let incr = r#"{"ops":[{"op":"increment","path":"/n","by":1}]}"#;
    let key = [("idempotency-key", "retry-1")];
    let first = send_with(a, "POST", "/v1/c/d/ops", Some(incr), &key).await;
    assert_eq!(first.status, StatusCode::CREATED);
    for _ in 0..3 {
        let again = send_with(a, "POST", "/v1/c/d/ops", Some(incr), &key).await;
        assert_eq!(again.status, StatusCode::CREATED, "the first answer, again");
        assert_eq!(again.body, first.body);
        assert_eq!(again.headers["idempotent-replayed"], "true");
    }
    assert_eq!(
        send(a, "GET", "/v1/c/d", None).await.body["value"],
        json!({"n":1})
    );
    let other = send_with(
        a,
        "POST",
        "/v1/c/d/ops",
        Some(r#"{"ops":[{"op":"increment","path":"/n","by":5}]}"#),
        &key,
    )
    .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    let bad = send_with(
        a,
        "POST",
        "/v1/c/d/ops",
        Some(incr),
        &[("idempotency-key", "")],
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        send(a, "GET", "/v1/c/d", None).await.body["value"],
        json!({"n":1})
    );
}

#[tokio::test]
async fn lists_page_through_a_collection() {
    let n = node();
    let a = &n.app;
    for i in 0..25 {
        send(
            a,
            "PUT",
            &format!("/v1/items/i{i:03}"),
            Some(&format!(r#"{{"i":{i}}}"#)),
        )
        .await;
    }
    let mut seen = vec![];
    let mut uri = "/v1/items?limit=10".to_owned();
    loop {
        let r = send(a, "GET", &uri, None).await;
        assert_eq!(r.status, StatusCode::OK);
        for item in r.body["items"].as_array().unwrap() {
            assert!(item["version"].is_string());
            seen.push(item["value"]["i"].as_i64().unwrap());
        }
        match r.body["next"].as_str() {
            Some(next) => uri = format!("/v1/items?limit=10&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, (0..25).collect::<Vec<_>>());
    assert_eq!(
        send(a, "GET", "/v1/items", None).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        25
    );
    assert_eq!(
        send(a, "GET", "/v1/items?limit=5000", None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(a, "GET", "/v1/empty", None).await.body,
        json!({"items":[],"next":null})
    );
    for bad in [
        "/v1/items?limit=0",
        "/v1/items?limit=x",
        "/v1/items?limit=-1",
        "/v1/items?after=a/b",
        "/v1/items?bogus=1",
    ] {
        let r = send(a, "GET", bad, None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn bad_ids_are_refused_with_invalid_id() {
    let n = node();
    let long = "x".repeat(201);
    for uri in [
        "/v1/a%2Fb/x".to_owned(),
        "/v1/users/a%20b".to_owned(),
        "/v1/users/%FF".to_owned(),
        "/v1/users/%C3%A9".to_owned(),
        format!("/v1/users/{long}"),
        format!("/v1/{long}/x"),
    ] {
        for (m, body) in [("GET", None), ("PUT", Some("{}")), ("DELETE", None)] {
            let r = send(&n.app, m, &uri, body).await;
            assert_eq!(
                (r.status, r.code()),
                (StatusCode::BAD_REQUEST, "invalid_id"),
                "{m} {uri}"
            );
        }
    }
    assert_eq!(
        send(&n.app, "GET", "/v1/users?limit=1", None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&n.app, "GET", "/v1/status", None).await.body["documents"],
        0,
        "nothing was stored"
    );
}

#[tokio::test]
async fn bad_bodies_get_clear_errors_and_store_nothing() {
    let n = node();
    let a = &n.app;
    let deep = "[".repeat(100_000);
    let deep_obj = format!("{}1{}", r#"{"a":"#.repeat(65), "}".repeat(65));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("malformed", b"{\"a\":".to_vec(), "bad_request"),
        ("truncated", b"{\"a\":[1,2".to_vec(), "bad_request"),
        ("trailing garbage", b"{} x".to_vec(), "bad_request"),
        (
            "invalid utf-8",
            b"{\"a\":\"\xff\xfe\"}".to_vec(),
            "bad_request",
        ),
        ("not an object", b"[1,2]".to_vec(), "bad_request"),
        ("a string", b"\"x\"".to_vec(), "bad_request"),
        ("empty", b"".to_vec(), "bad_request"),
        ("100000 deep", deep.into_bytes(), "bad_request"),
        ("65 deep", deep_obj.into_bytes(), "bad_request"),
        (
            "huge integer",
            b"{\"a\":123456789012345678901234567890}".to_vec(),
            "bad_request",
        ),
        (
            "too large",
            format!(r#"{{"a":"{}"}}"#, "x".repeat(1_100_000)).into_bytes(),
            "payload_too_large",
        ),
    ];
    for (what, body, code) in cases {
        for method in ["PUT", "PATCH"] {
            let ct = if method == "PUT" {
                "application/json"
            } else {
                "application/merge-patch+json"
            };
            let r = send_body(
                a,
                method,
                "/v1/c/d",
                Some(ct),
                &[],
                Body::from(body.clone()),
            )
            .await;
            assert_eq!(r.code(), code, "{method} {what}: {}", r.body);
        }
    }
    // content types
    for (ct, method) in [
        (Some("text/plain"), "PUT"),
        (None, "PUT"),
        (Some("application/merge-patch+json"), "PUT"),
        (Some("text/plain"), "PATCH"),
        (Some("application/xml"), "POST"),
    ] {
        let uri = if method == "POST" {
            "/v1/c/d/ops"
        } else {
            "/v1/c/d"
        };
        let r = send_body(a, method, uri, ct, &[], Body::from("{}")).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            "{method} {ct:?}"
        );
    }
    // a body larger than the limit without a Content-Length (streamed)
    let chunks = vec![
        Ok::<_, std::io::Error>(vec![b' '; 600 << 10]),
        Ok(vec![b' '; 600 << 10]),
    ];
    let stream = Body::from_stream(futures_stream(chunks));
    let r = send_body(a, "PUT", "/v1/c/d", Some("application/json"), &[], stream).await;
    assert_eq!(r.code(), "payload_too_large");
    assert_eq!(
        send(a, "GET", "/v1/c/d", None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send(a, "GET", "/v1/status", None).await.body["documents"],
        0
    );
    assert_eq!(
        send(a, "GET", "/healthz", None).await.status,
        StatusCode::OK,
        "still alive"
    );
}

fn futures_stream(
    items: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    tokio_stream::iter(items)
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods() {
    let n = node();
    let r = send(&n.app, "GET", "/nope", None).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"));
    for (m, uri) in [
        ("POST", "/v1/c/d"),
        ("PUT", "/v1/c"),
        ("GET", "/v1/c/d/ops"),
        ("DELETE", "/healthz"),
        ("POST", "/metrics"),
    ] {
        let r = send(&n.app, m, uri, None).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            "{m} {uri}"
        );
    }
}

/// A body that never finishes keeps its request in flight.
fn stalled_body() -> (
    Body,
    tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    (
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
        tx,
    )
}

#[tokio::test]
async fn overload_is_refused_at_once_with_retry_after() {
    let n = node_with(Limits {
        max_in_flight: 1,
        ..Limits::default()
    });
    let (body, _hold) = stalled_body();
    let app = n.app.clone();
    let slow = tokio::spawn(async move {
        send_body(
            &app,
            "PUT",
            "/v1/c/slow",
            Some("application/json"),
            &[],
            body,
        )
        .await
    });
    // wait until the slow request holds the only slot
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = send(&n.app, "GET", "/v1/c/x", None).await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(r.code(), "overloaded");
            assert_eq!(r.headers["retry-after"], "1");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never overloaded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // health and metrics still answer
    assert_eq!(
        send(&n.app, "GET", "/healthz", None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&n.app, "GET", "/readyz", None).await.status,
        StatusCode::OK
    );
    slow.abort();
}

#[tokio::test]
async fn slow_requests_time_out() {
    let n = node_with(Limits {
        request_timeout: Duration::from_millis(100),
        ..Limits::default()
    });
    let (body, _hold) = stalled_body();
    let r = send_body(
        &n.app,
        "PUT",
        "/v1/c/slow",
        Some("application/json"),
        &[],
        body,
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "timeout")
    );
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(
        send(&n.app, "GET", "/v1/c/slow", None).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn operational_endpoints() {
    let n = node();
    let a = &n.app;
    send(a, "PUT", "/v1/c/d", Some("{}")).await;
    send(a, "GET", "/v1/c/d", None).await;
    assert_eq!(
        send(a, "GET", "/healthz", None).await.body,
        json!({"status":"ok"})
    );
    assert_eq!(
        send(a, "GET", "/readyz", None).await.body,
        json!({"ready":true})
    );
    let s = send(a, "GET", "/v1/status", None).await.body;
    assert_eq!(s["node_id"], "test-node");
    assert_eq!(s["region"], "test");
    assert_eq!(s["documents"], 1);
    assert!(s["hlc"].as_str().unwrap().contains('/'));
    assert!(s["bytes_on_disk"].as_u64().unwrap() > 0);
    assert_eq!(s["storage"]["state"], "ok");
    assert!(s["storage"]["free_bytes"].as_u64().unwrap() > 0);
    let m = send(a, "GET", "/metrics", None).await.body;
    let m = m.as_str().unwrap();
    for needle in [
        r#"meridian_http_requests_total{method="PUT",route="/v1/{collection}/{id}",status="201"} 1"#,
        "meridian_http_request_duration_seconds_bucket",
        "meridian_documents 1",
        "meridian_cache_hits_total",
        "meridian_cache_misses_total",
        "meridian_flushes_total",
        "meridian_clock_drift_refusals_total 0",
        "meridian_replication_sent_bytes_total",
        "meridian_storage_free_bytes",
        "meridian_storage_floor_bytes",
        "meridian_storage_writable 1",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }
}

#[tokio::test]
async fn openapi_describes_every_route() {
    let n = node();
    let r = send(&n.app, "GET", "/openapi.json", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["openapi"], "3.1.0");
    let paths = r.body["paths"].as_object().unwrap();
    for (path, methods) in [
        (
            "/v1/{collection}/{id}",
            &["get", "put", "patch", "delete"][..],
        ),
        ("/v1/{collection}/{id}/ops", &["post"]),
        ("/v1/{collection}", &["get"]),
        ("/v1/status", &["get"]),
        ("/v1/cluster", &["get"]),
        ("/v1/sync", &["get"]),
        ("/internal/rpc", &["post"]),
        ("/internal/subscribe", &["post"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
        ("/openapi.json", &["get"]),
    ] {
        for m in methods {
            assert!(paths[path][m].is_object(), "{m} {path} is not described");
        }
    }
    // the key as a query parameter is offered on GET only, where it is taken
    let schemes = |path: &str, m: &str| -> Vec<String> {
        let security = &paths[path][m]["security"];
        let list = match security.as_array() {
            Some(l) => l,
            None => r.body["security"].as_array().unwrap(),
        };
        list.iter()
            .flat_map(|s| s.as_object().unwrap().keys().cloned())
            .collect()
    };
    assert!(schemes("/v1/{collection}/{id}", "get").contains(&"access_token".to_owned()));
    for (path, m) in [
        ("/v1/{collection}/{id}", "put"),
        ("/v1/{collection}/{id}", "patch"),
        ("/v1/{collection}/{id}", "delete"),
        ("/v1/{collection}/{id}/ops", "post"),
        ("/v1/_schemas/{collection}", "put"),
    ] {
        assert_eq!(schemes(path, m), ["bearer"], "{m} {path}");
    }
}

#[tokio::test]
async fn every_v1_answer_carries_a_session_token_that_covers_the_write() {
    let n = node();
    let a = &n.app;
    let w = send(a, "PUT", "/v1/c/d", Some(r#"{"a":1}"#)).await;
    let token = w.headers["meridian-session"].to_str().unwrap().to_owned();
    assert!(token.starts_with("test-node="), "{token}");
    // the node covers its own token: the read is served, and its token is at least as new
    let r = send_with(a, "GET", "/v1/c/d", None, &[("meridian-session", &token)]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["meridian-session"].to_str().unwrap(), token);
    for uri in ["/v1/c", "/v1/status", "/v1/cluster", "/v1/c/nope"] {
        let r = send(a, "GET", uri, None).await;
        assert!(r.headers.contains_key("meridian-session"), "{uri}");
    }
}

#[tokio::test]
async fn bad_session_headers_get_400_and_change_nothing() {
    let n = node();
    let a = &n.app;
    for (h, v) in [
        ("meridian-session", "garbage"),
        ("meridian-session", "test-node=zz"),
        ("meridian-session", "a=1,,a=2"),
        ("meridian-session", "a=1,b"),
        ("meridian-max-wait-ms", "soon"),
        ("meridian-max-wait-ms", "-1"),
    ] {
        let r = send_with(a, "PUT", "/v1/c/d", Some(r#"{"a":1}"#), &[(h, v)]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{h}: {v}");
        let wanted = if h == "meridian-session" {
            "invalid_session_token"
        } else {
            "bad_request"
        };
        assert_eq!(r.code(), wanted, "{h}: {v}");
        assert_eq!(
            send(a, "GET", "/v1/c/d", None).await.status,
            StatusCode::NOT_FOUND
        );
    }
}

#[tokio::test]
async fn a_token_this_node_cannot_cover_gets_503_session_unavailable_within_the_bound() {
    let n = node();
    let a = &n.app;
    // a node that is not in the cluster: no region can ever cover it, so a 4xx, at once
    let r = send_with(
        a,
        "GET",
        "/v1/c/d",
        None,
        &[("meridian-session", "elsewhere=1")],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "unknown_session_node");
    assert_eq!(r.body["error"]["region"], "elsewhere");
    assert_eq!(r.body["error"]["url"], serde_json::Value::Null);
    assert!(!r.headers.contains_key("retry-after"));
    // this node's own future: waits no longer than asked, then says so; writes are refused too
    let future = format!("test-node={:x}", u64::MAX / 2);
    let t0 = std::time::Instant::now();
    let r = send_with(
        a,
        "PUT",
        "/v1/c/d",
        Some("{}"),
        &[
            ("meridian-session", &future),
            ("meridian-max-wait-ms", "100"),
        ],
    )
    .await;
    assert_eq!(r.code(), "session_unavailable");
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(
        send(a, "GET", "/v1/c/d", None).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn requests_waiting_for_a_session_count_against_the_in_flight_limit() {
    let n = node_with(Limits {
        max_in_flight: 1,
        ..Limits::default()
    });
    let future = format!("test-node={:x}", u64::MAX / 2);
    let app = n.app.clone();
    let waiting = tokio::spawn(async move {
        send_with(
            &app,
            "GET",
            "/v1/c/d",
            None,
            &[("meridian-session", &future)],
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = send(&n.app, "GET", "/v1/c/e", None).await;
    assert_eq!(r.code(), "overloaded");
    // every /v1 answer carries a token, the refusals too
    assert!(r.headers.contains_key("meridian-session"));
    let w = waiting.await.unwrap();
    assert_eq!(w.code(), "session_unavailable");
    assert!(w.headers.contains_key("meridian-session"));
}

#[tokio::test]
async fn internal_endpoints_need_the_cluster_secret() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = StoreConfig::new(dir.path());
    c.node_id = Some("eu".into());
    let store = Store::open(c).unwrap();
    let state = AppState::clustered(
        store,
        "eu",
        Limits::default(),
        meridian_sync::ReplicationConfig::new(vec![]),
        Some("s3cret-s3cret"),
    )
    .unwrap();
    let a = &app(state);
    let digest = meridian_sync::encode(&meridian_sync::Request::Digest {
        from: "us".into(),
        cursor: None,
    });
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("s3cret-s3cret"),
        Some("Bearer s3cret-s3cre"),
    ] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|v| ("authorization", *v)).collect();
        let r = send_body(
            a,
            "POST",
            "/internal/rpc",
            None,
            &headers,
            Body::from(digest.clone()),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(r.code(), "unauthorized");
    }
    let ok = [("authorization", "Bearer s3cret-s3cret")];
    let r = send_body(a, "POST", "/internal/rpc", None, &ok, Body::from(digest)).await;
    assert_eq!(r.status, StatusCode::OK);
    // garbage with the secret: an error message in the protocol, not a crash
    let app = a.clone();
    let req = Request::builder()
        .method("POST")
        .uri("/internal/rpc")
        .header("authorization", "Bearer s3cret-s3cret")
        .body(Body::from(vec![1u8, 255, 255]))
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let answer: meridian_sync::Response = meridian_sync::decode(&bytes).unwrap();
    assert!(matches!(answer, meridian_sync::Response::Error { .. }));
    // a node without a secret refuses every internal request
    let n = node();
    let r = send_body(
        &n.app,
        "POST",
        "/internal/rpc",
        None,
        &ok,
        Body::from(vec![1u8]),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_cluster_endpoint_describes_this_node_and_its_peers() {
    let n = node();
    let r = send(&n.app, "GET", "/v1/cluster", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["node"], "test-node");
    assert_eq!(r.body["peers"], json!([]));
    assert_eq!(r.body["clock_drift_refusals"], 0);
}

mod fuzz {
    //! Property: no request, however malformed, gets a 5xx or crashes the node, and every 4xx
    //! leaves the store exactly as it was.
    use super::*;
    use proptest::prelude::*;

    fn arb_segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("users".to_owned()),
            Just("alice".to_owned()),
            Just("ops".to_owned()),
            Just("v1".to_owned()),
            "[a-z]{1,4}",
            "(%[0-9A-F]{2}){1,3}",
            "[ -~]{0,6}".prop_map(|s| s.replace(['/', '?', '#', ' ', '%'], "x")),
            Just("x".repeat(201)),
        ]
    }

    fn arb_body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            Just(br#"{"a":1}"#.to_vec()),
            Just(br#"{"ops":[{"op":"set","path":"/a","value":1}]}"#.to_vec()),
            r#"\{"(ops|a|b)":(\[|\{|1|null|"x"|-1e999|99999999999999999999)[\],\}]{0,3}"#
                .prop_map(String::into_bytes),
            Just(b"[".repeat(5000)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn malformed_requests_get_4xx_and_change_nothing(
            method in prop_oneof![Just("GET"), Just("PUT"), Just("PATCH"), Just("POST"), Just("DELETE"), Just("OPTIONS")],
            segments in prop::collection::vec(arb_segment(), 0..5),
            query in prop_oneof![Just(String::new()), Just("?conflicts=true".to_owned()), Just("?limit=0".to_owned()), "\\?[a-z=&]{0,8}"],
            ct in prop_oneof![Just(None), Just(Some("application/json")), Just(Some("application/merge-patch+json")), Just(Some("text/plain"))],
            body in arb_body(),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let n = node();
                let a = &n.app;
                send(a, "PUT", "/v1/users/alice", Some(r#"{"keep":"me"}"#)).await;
                let before = send(a, "GET", "/v1/users/alice", None).await.body;
                let uri = format!("/{}{}", segments.join("/"), query);
                let Ok(uri_ok) = uri.parse::<axum::http::Uri>() else { return };
                let r = send_body(a, method, &uri_ok.to_string(), ct, &[], Body::from(body.clone())).await;
                assert!(r.status.as_u16() < 500, "{method} {uri} -> {} {}", r.status, r.body);
                if r.status.is_client_error() {
                    assert!(r.body["error"]["code"].is_string(), "{method} {uri}: {}", r.body);
                    assert_eq!(send(a, "GET", "/v1/users/alice", None).await.body, before, "{method} {uri} changed alice");
                    let status = send(a, "GET", "/v1/status", None).await.body;
                    assert_eq!(status["documents"], 1, "{method} {uri} stored something");
                }
                assert_eq!(send(a, "GET", "/healthz", None).await.status, StatusCode::OK);
            });
        }
    }
}

#[tokio::test]
async fn every_document_answer_carries_its_automerge_url() {
    let n = node();
    let want = format!(
        "automerge:{}",
        meridian_crdt::DocumentId::of(&meridian_crdt::DocKey::new("users", "alice").unwrap())
    );
    // --- writes, reads, conflicts, lists and deletes all name it
    let r = send(&n.app, "PUT", "/v1/users/alice", Some(r#"{"a":1}"#)).await;
    assert_eq!(r.body["automerge_url"], want);
    let r = send(&n.app, "PATCH", "/v1/users/alice", Some(r#"{"b":2}"#)).await;
    assert_eq!(r.body["automerge_url"], want);
    let r = send(
        &n.app,
        "POST",
        "/v1/users/alice/ops",
        Some(r#"{"ops":[{"op":"increment","path":"/n","by":1}]}"#),
    )
    .await;
    assert_eq!(r.body["automerge_url"], want);
    for uri in ["/v1/users/alice", "/v1/users/alice?conflicts=true"] {
        assert_eq!(
            send(&n.app, "GET", uri, None).await.body["automerge_url"],
            want
        );
    }
    let r = send(&n.app, "GET", "/v1/users", None).await;
    assert_eq!(r.body["items"][0]["automerge_url"], want);
    let r = send(&n.app, "DELETE", "/v1/users/alice", None).await;
    assert_eq!(r.body["automerge_url"], want);
    // the documented example (docs/sync.md)
    assert_eq!(want, "automerge:mzrsqTMKuksKfdneu3DtLTrzzWG");
}

#[tokio::test]
async fn the_sync_endpoint_upgrades_and_a_plain_get_still_lists_the_collection_sync() {
    let n = node_with(Limits::default());
    // --- without an upgrade, GET /v1/sync is the list of the collection "sync", as it was
    send(&n.app, "PUT", "/v1/sync/one", Some(r#"{"x":1}"#)).await;
    let r = send(&n.app, "GET", "/v1/sync?limit=5", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["items"][0]["id"], "one");
    assert_eq!(
        send(&n.app, "GET", "/v1/sync?bogus=1", None).await.code(),
        "bad_request"
    );
    assert!(send(&n.app, "GET", "/v1/sync/one", None)
        .await
        .status
        .is_success());

    // --- an upgrade that is not a WebSocket handshake: 426 with a reason
    let r = send_with(
        &n.app,
        "GET",
        "/v1/sync",
        None,
        &[("upgrade", "websocket"), ("connection", "upgrade")],
    )
    .await;
    assert_eq!(r.status, StatusCode::UPGRADE_REQUIRED, "{:?}", r.body);
    assert_eq!(r.code(), "upgrade_required");
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("WebSocket"));
    // other methods on the path are 405, as for any known path
    assert_eq!(
        send(&n.app, "POST", "/v1/sync", Some("{}")).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn sync_connections_beyond_the_limit_get_503_before_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = StoreConfig::new(dir.path());
    c.node_id = Some("test-node".into());
    let store = Store::open(c).unwrap();
    let state = AppState::build(
        store,
        Options {
            client_limits: meridian_sync::repo::SyncLimits {
                max_connections: 0,
                ..Default::default()
            },
            ..Options::new("test")
        },
    )
    .unwrap();
    let app = app(state);
    let handshake = [
        ("upgrade", "websocket"),
        ("connection", "upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let r = send_with(&app, "GET", "/v1/sync", None, &handshake).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.code(), "overloaded");
    assert!(r.headers.contains_key("retry-after"));
}
