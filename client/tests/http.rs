//! The HTTP client against a scripted server on loopback: retries, idempotency keys,
//! Retry-After, failover, session tokens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::any;
use axum::Router;
use meridian_client::{Client, Error, Retry};
use parking_lot::Mutex;
use serde_json::json;

/// A scripted answer: status, headers, body.
type Answer = (u16, Vec<(&'static str, &'static str)>, serde_json::Value);

/// What the server saw, and what it answers next.
#[derive(Default)]
struct Script {
    seen: Vec<HeaderMap>,
    answers: Vec<Answer>,
}

async fn serve(script: Arc<Mutex<Script>>) -> String {
    let app = Router::new().fallback(any(move |headers: HeaderMap| {
        let script = script.clone();
        async move {
            let mut s = script.lock();
            s.seen.push(headers);
            let (status, hdrs, body) = if s.answers.is_empty() {
                (200, vec![], doc())
            } else {
                s.answers.remove(0)
            };
            let mut resp =
                (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
            for (k, v) in hdrs {
                resp.headers_mut().insert(k, v.parse().unwrap());
            }
            resp
        }
    }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}")
}

fn doc() -> serde_json::Value {
    json!({"collection":"users","id":"a","value":{"x":1},"version":"v1","automerge_url":"automerge:x"})
}

fn busy() -> Answer {
    (
        503,
        vec![("retry-after", "1")],
        json!({"error":{"code":"overloaded","message":"busy"}}),
    )
}

fn fast() -> Retry {
    Retry {
        base: Duration::from_millis(10),
        max: Duration::from_millis(50),
        ..Retry::default()
    }
}

#[tokio::test]
async fn a_write_is_retried_with_one_idempotency_key_honouring_retry_after() {
    let script = Arc::new(Mutex::new(Script::default()));
    script.lock().answers = vec![busy(), busy()];
    let url = serve(script.clone()).await;
    let c = Client::builder([url]).retry(fast()).build().unwrap();
    let t0 = Instant::now();
    let w = c.put("users", "a", &json!({"x": 1})).await.unwrap();
    assert_eq!(w.doc.value, json!({"x": 1}));
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "Retry-After: 1 twice"
    );
    let seen = script.lock().seen.clone();
    assert_eq!(seen.len(), 3);
    let keys: Vec<_> = seen.iter().map(|h| h["idempotency-key"].clone()).collect();
    assert!(
        keys.windows(2).all(|w| w[0] == w[1]),
        "one key for every try: {keys:?}"
    );
    // a second write is another logical write: another key
    c.put("users", "a", &json!({"x": 2})).await.unwrap();
    assert_ne!(script.lock().seen[3]["idempotency-key"], keys[0]);
}

#[tokio::test]
async fn a_refusal_is_not_retried_and_says_why() {
    let script = Arc::new(Mutex::new(Script::default()));
    script.lock().answers = vec![(
        422,
        vec![],
        json!({"error":{"code":"unprocessable","message":"/n: increment needs a counter"}}),
    )];
    let url = serve(script.clone()).await;
    let c = Client::builder([url]).retry(fast()).build().unwrap();
    let err = c
        .ops(
            "users",
            "a",
            &json!([{"op":"increment","path":"/n","by":1}]),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("unprocessable"));
    assert!(err.to_string().contains("counter"), "{err}");
    assert_eq!(script.lock().seen.len(), 1);
    // a missing document is None, not an error
    script.lock().answers = vec![(
        404,
        vec![],
        json!({"error":{"code":"not_found","message":"no"}}),
    )];
    assert_eq!(c.get("users", "zz").await.unwrap(), None);
    // bad input never leaves the client
    assert!(matches!(c.get("a/b", "x").await, Err(Error::Invalid(_))));
    assert!(matches!(
        c.put("users", "a", &json!([1])).await,
        Err(Error::Invalid(_))
    ));
    assert_eq!(script.lock().seen.len(), 2);
}

#[tokio::test]
async fn an_unreachable_region_fails_over_and_the_session_goes_along() {
    // a port nothing listens on
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let script = Arc::new(Mutex::new(Script::default()));
    script.lock().answers = vec![
        (200, vec![("meridian-session", "eu=5")], doc()),
        (200, vec![("meridian-session", "us=9")], doc()),
    ];
    let live = serve(script.clone()).await;
    let c = Client::builder([dead.clone(), live.clone()])
        .retry(fast())
        .build()
        .unwrap();
    assert!(c.get("users", "a").await.unwrap().is_some());
    assert_eq!(c.region(), live, "moved to the region that answered");
    c.get("users", "a").await.unwrap();
    c.get("users", "a").await.unwrap();
    let seen = script.lock().seen.clone();
    assert!(
        !seen[0].contains_key("meridian-session"),
        "nothing to send yet"
    );
    assert_eq!(seen[1]["meridian-session"], "eu=5");
    assert_eq!(
        seen[2]["meridian-session"], "eu=5,us=9",
        "tokens merge per node"
    );
    assert_eq!(c.session().to_string(), "eu=5,us=9");

    // --- every region down: the last error, after the attempts
    let c = Client::builder([dead]).retry(fast()).build().unwrap();
    assert!(matches!(
        c.get("users", "a").await,
        Err(Error::Unreachable(_))
    ));
}

#[test]
fn bad_regions_and_bad_certificates_are_refused_when_the_client_is_built() {
    use meridian_client::Client;
    for (regions, ca, wanted) in [
        (vec![], None, "at least one region"),
        (vec!["ftp://h"], None, "http:// or https://"),
        (vec!["https://"], None, "http:// or https://"),
        (
            vec!["https://h"],
            Some(b"not pem".to_vec()),
            "no certificate",
        ),
        (
            vec!["https://h"],
            Some(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec()),
            "ca_pem",
        ),
    ] {
        let mut b = Client::builder(regions);
        if let Some(ca) = ca {
            b = b.ca_pem(ca);
        }
        let err = b.build().unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err}");
        assert!(
            err.to_string().contains(wanted),
            "{err} should mention {wanted}"
        );
    }
    // http and https regions together, with the public CAs or a given one
    assert!(Client::new(["http://a:1", "https://b:2"]).is_ok());
}
