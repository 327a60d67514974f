//! Who may do what, through the router without sockets: every keyed route and method against
//! every kind of key, what a refused request leaves (nothing), the query-parameter key, and
//! the per-address limit on failed authentication.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use meridian_crdt::{Store, StoreConfig};
use meridian_http::auth::{hash_of, Auth, FailureLimiter, KeyRing};
use meridian_http::{app, AppState, Limits};
use meridian_net::tls::ConnInfo;
use serde_json::Value;
use tower::ServiceExt;

const READ: &str = "mdk_read-users";
const WRITE: &str = "mdk_write-users";
const OTHER: &str = "mdk_write-settings";
const ADMIN: &str = "mdk_admin";
const METRICS: &str = "mdk_metrics";
const EXPIRED: &str = "mdk_expired-admin";

fn ring() -> KeyRing {
    let entry = |name: &str, key: &str, access: &str, extra: &str| {
        format!(
            "[[keys]]\nname = \"{name}\"\nhash = \"{}\"\naccess = {{ {access} }}\n{extra}",
            hash_of(key)
        )
    };
    let text = [
        "metrics_keys = [\"scraper\"]\n".to_owned(),
        entry("reader", READ, "users = \"read\"", ""),
        entry("writer", WRITE, "users = \"write\"", ""),
        entry("other", OTHER, "settings = \"write\"", ""),
        entry("root", ADMIN, "\"*\" = \"admin\"", ""),
        entry("scraper", METRICS, "users = \"read\"", ""),
        entry(
            "old",
            EXPIRED,
            "\"*\" = \"admin\"",
            "expires = \"2020-01-01T00:00:00Z\"\n",
        ),
    ]
    .concat();
    KeyRing::parse(&text).unwrap()
}

struct Node {
    app: Router,
    _dir: tempfile::TempDir,
}

fn node(auth: Auth) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut c = StoreConfig::new(dir.path());
    c.node_id = Some("test-node".into());
    let store = Store::open(c).unwrap();
    let state = AppState::new(store, "test", Limits::default()).with_auth(auth);
    Node {
        app: app(state),
        _dir: dir,
    }
}

/// Auth with a failure limit out of the way (the table fails on purpose many times).
fn keyed() -> Node {
    node(Auth::from_ring(ring()).with_limiter(FailureLimiter::new(1_000_000, 1.0)))
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Reply {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    from: Option<&str>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        let ct = if method == "PATCH" {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        req = req.header("content-type", ct);
        req = req.header("content-length", b.len());
    }
    let mut req = req.body(Body::from(body.unwrap_or("").to_owned())).unwrap();
    if let Some(addr) = from {
        let addr: SocketAddr = addr.parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(ConnInfo {
            addr,
            peer_cert: false,
        }));
    }
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let streaming = headers
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"));
    let body = if streaming {
        // a change stream never ends; its status and type are the answer
        Value::Null
    } else {
        let bytes = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
            .await
            .expect("a body")
            .unwrap()
            .to_bytes();
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Reply {
        status,
        headers,
        body,
    }
}

async fn as_key(app: &Router, key: &str, method: &str, uri: &str, body: Option<&str>) -> Reply {
    let auth = format!("Bearer {key}");
    call(app, method, uri, &[("authorization", &auth)], body, None).await
}

/// What the admin sees of the data a request could touch.
async fn snapshot(app: &Router) -> Value {
    let mut all = serde_json::Map::new();
    for c in ["users", "settings", "sync"] {
        let r = as_key(app, ADMIN, "GET", &format!("/v1/{c}?limit=100"), None).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let mut items = r.body["items"].clone();
        for item in items.as_array_mut().unwrap() {
            // the list shows values; the version tells a change apart too
            let id = item["id"].as_str().unwrap().to_owned();
            let doc = as_key(app, ADMIN, "GET", &format!("/v1/{c}/{id}"), None).await;
            item["doc"] = doc.body;
        }
        all.insert(c.into(), items);
    }
    Value::Object(all)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Ok,
    Status(StatusCode, &'static str),
}

const UNAUTH: Want = Want::Status(StatusCode::UNAUTHORIZED, "unauthorized");
const FORBID: Want = Want::Status(StatusCode::FORBIDDEN, "forbidden");

#[tokio::test]
async fn every_route_and_method_against_every_kind_of_key() {
    let n = keyed();
    let app = &n.app;
    // what the routes act on
    for (c, id) in [("users", "alice"), ("settings", "s1"), ("sync", "one")] {
        let r = as_key(
            app,
            ADMIN,
            "PUT",
            &format!("/v1/{c}/{id}"),
            Some(r#"{"n":1}"#),
        )
        .await;
        assert!(r.status.is_success(), "{:?}", r.body);
    }
    let sse: &[(&str, &str)] = &[("accept", "text/event-stream")];
    let upgrade: &[(&str, &str)] = &[("upgrade", "websocket"), ("connection", "upgrade")];
    // (method, uri, extra headers, body, is a write of users)
    type Route = (
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
        Option<&'static str>,
    );
    let routes: &[Route] = &[
        ("GET", "/v1/users/alice", &[], None),
        ("PUT", "/v1/users/alice", &[], Some(r#"{"n":2}"#)),
        ("PATCH", "/v1/users/alice", &[], Some(r#"{"m":3}"#)),
        (
            "POST",
            "/v1/users/alice/ops",
            &[],
            Some(r#"{"ops":[{"op":"set","path":"/k","value":4}]}"#),
        ),
        ("DELETE", "/v1/users/alice", &[], None),
        ("GET", "/v1/users", &[], None),
        ("GET", "/v1/users/alice", sse, None),
        ("GET", "/v1/users", sse, None),
        ("GET", "/v1/sync", &[], None),
        ("GET", "/v1/sync", upgrade, None),
        ("GET", "/v1/status", &[], None),
        ("GET", "/v1/cluster", &[], None),
        ("GET", "/metrics", &[], None),
    ];
    let write = |m: &str| m != "GET";
    // the expected answer of each key kind for each route
    let want = |key: &str, (method, uri, headers, _): &Route| -> Want {
        let node_wide = ["/v1/status", "/v1/cluster", "/metrics"].contains(uri);
        let sync_upgrade = *uri == "/v1/sync" && !headers.is_empty();
        let sync_list = *uri == "/v1/sync" && headers.is_empty();
        match key {
            "none" | "malformed" | "wrong" | EXPIRED => UNAUTH,
            ADMIN => Want::Ok,
            _ if sync_upgrade => Want::Ok,
            METRICS if *uri == "/metrics" => Want::Ok,
            _ if node_wide || sync_list => FORBID,
            READ | METRICS if write(method) => FORBID,
            READ | METRICS | WRITE => Want::Ok,
            OTHER => FORBID,
            k => unreachable!("{k}"),
        }
    };
    let keys = [
        "none",
        "malformed",
        "wrong",
        EXPIRED,
        READ,
        WRITE,
        OTHER,
        ADMIN,
        METRICS,
    ];
    let mut checked = 0;
    for key in keys {
        for route in routes {
            let (method, uri, extra, body) = *route;
            // a deleted document comes back for the next case
            let r = as_key(app, ADMIN, "PUT", "/v1/users/alice", Some(r#"{"n":1}"#)).await;
            assert!(r.status.is_success());
            let before = snapshot(app).await;
            let mut headers: Vec<(&str, String)> =
                extra.iter().map(|(k, v)| (*k, v.to_string())).collect();
            match key {
                "none" => {}
                "malformed" => headers.push(("authorization", "Basic dXNlcjpwYXNz".into())),
                "wrong" => headers.push(("authorization", "Bearer mdk_not-a-key".into())),
                k => headers.push(("authorization", format!("Bearer {k}"))),
            }
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = call(app, method, uri, &h, body, None).await;
            let what = format!("{key} {method} {uri} {extra:?}");
            match want(key, route) {
                Want::Ok => {
                    // through auth: whatever the route itself answers (426 for an upgrade
                    // without a socket under it)
                    assert!(
                        r.status.is_success() || r.status == StatusCode::UPGRADE_REQUIRED,
                        "{what}: {} {:?}",
                        r.status,
                        r.body
                    );
                }
                Want::Status(status, code) => {
                    assert_eq!(r.status, status, "{what}: {:?}", r.body);
                    assert_eq!(r.code(), code, "{what}");
                    if status == StatusCode::UNAUTHORIZED {
                        assert_eq!(
                            r.headers["www-authenticate"], "Bearer realm=\"meridian\"",
                            "{what}"
                        );
                    }
                    if status == StatusCode::FORBIDDEN && uri.starts_with("/v1/users") {
                        let m = r.body["error"]["message"].as_str().unwrap();
                        assert!(m.contains("access") && m.contains("users"), "{what}: {m}");
                    }
                    // a refused request tells nothing: no session token either
                    assert!(!r.headers.contains_key("meridian-session"), "{what}");
                    assert_eq!(snapshot(app).await, before, "{what} changed something");
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, keys.len() * routes.len());

    // open routes stay open
    for uri in ["/healthz", "/readyz", "/openapi.json"] {
        let r = call(app, "GET", uri, &[], None, None).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}");
    }
    // the key's own messages: which access is missing, and an expiry said as such
    let r = as_key(app, READ, "PATCH", "/v1/users/alice", Some("{}")).await;
    let m = r.body["error"]["message"].as_str().unwrap().to_owned();
    assert!(m.contains("\"reader\"") && m.contains("has read"), "{m}");
    let r = as_key(app, EXPIRED, "GET", "/v1/users/alice", None).await;
    let m = r.body["error"]["message"].as_str().unwrap().to_owned();
    assert!(m.contains("expired") && m.contains("2020-01-01"), "{m}");
}

#[tokio::test]
async fn a_browser_may_send_the_key_as_a_query_parameter_on_get_only() {
    let n = keyed();
    let app = &n.app;
    as_key(app, ADMIN, "PUT", "/v1/users/alice", Some(r#"{"n":1}"#)).await;
    // the parameter is taken out before the list reads its own parameters
    let r = call(
        app,
        "GET",
        &format!("/v1/users?limit=1&access_token={READ}"),
        &[],
        None,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["items"][0]["id"], "alice");
    let r = call(
        app,
        "GET",
        &format!("/v1/users/alice?access_token={READ}"),
        &[],
        None,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = call(
        app,
        "GET",
        &format!("/v1/users/alice?access_token={READ}"),
        &[("accept", "text/event-stream")],
        None,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // not on a write: a URL ends up in logs and histories
    let r = call(
        app,
        "PATCH",
        &format!("/v1/users/alice?access_token={WRITE}"),
        &[],
        Some(r#"{"x":1}"#),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("GET only"), "{message}");
    // not even beside the header: a schema write with it is refused as such, not as a bad query
    let auth = format!("Bearer {ADMIN}");
    let r = call(
        app,
        "PUT",
        &format!("/v1/_schemas/users?force=true&access_token={ADMIN}"),
        &[("authorization", &auth)],
        Some(r#"{"type":"object"}"#),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    // the key in both places, or an empty one: refused
    let auth = format!("Bearer {READ}");
    let r = call(
        app,
        "GET",
        &format!("/v1/users/alice?access_token={READ}"),
        &[("authorization", &auth)],
        None,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not both"));
    let r = call(app, "GET", "/v1/users/alice?access_token=", &[], None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn many_wrong_keys_from_one_address_are_slowed_down_and_other_addresses_are_not() {
    let n = node(Auth::from_ring(ring()).with_limiter(FailureLimiter::new(5, 1.0)));
    let app = &n.app;
    let wrong = [("authorization", "Bearer mdk_guess")];
    let right = format!("Bearer {READ}");
    let right = [("authorization", right.as_str())];
    let attacker = Some("192.0.2.1:5000");
    let neighbour = Some("192.0.2.2:5000");
    for i in 0..5 {
        let r = call(app, "GET", "/v1/users", &wrong, None, attacker).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let r = call(app, "GET", "/v1/users", &wrong, None, attacker).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.code(), "too_many_requests");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // while blocked, a right key from that address is refused too: it must not learn it guessed
    let r = call(app, "GET", "/v1/users", &right, None, attacker).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // another address is served, and may fail on its own account
    let r = call(app, "GET", "/v1/users", &right, None, neighbour).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = call(app, "GET", "/v1/users", &wrong, None, neighbour).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // a 403 is not a failed authentication: a valid key asking too much is not slowed
    for _ in 0..10 {
        let r = call(app, "GET", "/v1/settings", &right, None, neighbour).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }
    // the attacker gets one more try per second
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = call(app, "GET", "/v1/users", &right, None, attacker).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn a_node_without_keys_ignores_credentials() {
    let n = node(Auth::open());
    let r = call(&n.app, "GET", "/v1/status", &[], None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["auth"], "open (loopback only)");
    // a browser's parameter does not trip the list's own parameter check
    let r = call(&n.app, "GET", "/v1/users?access_token=x", &[], None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let n = node(Auth::insecure());
    let r = call(&n.app, "GET", "/v1/status", &[], None, None).await;
    assert!(r.body["auth"]
        .as_str()
        .unwrap()
        .contains("insecure-no-auth"));
}
