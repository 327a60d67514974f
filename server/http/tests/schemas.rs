//! Schema contracts through the HTTP API: the schema routes, every write route checked against
//! a table of keywords, bad schemas, compatibility, forced changes counted and listed, reserved
//! collections, violations shown on reads, and `/openapi.json` typed by the schemas.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use meridian_crdt::{Store, StoreConfig};
use meridian_http::{app, AppState, Limits};
use serde_json::{json, Value};
use tower::ServiceExt;

fn node() -> (Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = StoreConfig::new(dir.path());
    c.node_id = Some("test-node".into());
    let store = Store::open(c).unwrap();
    (app(AppState::new(store, "test", Limits::default())), dir)
}

async fn send(app: &Router, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    let body = match body {
        Some(b) => {
            let ct = if method == "PATCH" {
                "application/merge-patch+json"
            } else {
                "application/json"
            };
            req = req.header("content-type", ct);
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn users_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 20},
            "email": {"type": "string", "format": "email"},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "role": {"enum": ["admin", "member"]},
            "handle": {"type": "string", "pattern": "^@[a-z]+$"},
            "address": {"type": "object", "required": ["city"],
                        "properties": {"city": {"type": "string"}, "zip": {"type": "string", "maxLength": 5}}},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3, "x-merge": "list"},
            "visits": {"type": "integer", "x-merge": "counter"},
            "bio": {"type": "string", "x-merge": "text"}
        }
    })
}

/// One rule broken, through each write route: (field, a valid value, an invalid value, the
/// pointer the violation names).
fn keyword_table() -> Vec<(&'static str, Value, Value, &'static str)> {
    vec![
        ("name", json!("ada"), json!(42), "/name"), // type
        ("name", json!("ada"), json!(""), "/name"), // minLength
        ("name", json!("ada"), json!("a".repeat(21)), "/name"), // maxLength
        (
            "email",
            json!("ada@example.com"),
            json!("not an email"),
            "/email",
        ), // format
        ("age", json!(36), json!(-1), "/age"),      // minimum
        ("age", json!(36), json!(151), "/age"),     // maximum
        ("age", json!(36), json!(3.5), "/age"),     // integer
        ("role", json!("admin"), json!("owner"), "/role"), // enum
        ("handle", json!("@ada"), json!("ada"), "/handle"), // pattern
        (
            "address",
            json!({"city": "Paris"}),
            json!({"zip": "75001"}),
            "/address",
        ), // nested required
        (
            "address",
            json!({"city": "Paris", "zip": "75001"}),
            json!({"city": "Paris", "zip": "750011"}),
            "/address/zip",
        ), // nested maxLength
        (
            "tags",
            json!(["a", "b"]),
            json!(["a", "b", "c", "d"]),
            "/tags",
        ), // maxItems
        ("tags", json!(["a"]), json!(["a", 1]), "/tags/1"), // items
    ]
}

#[tokio::test]
async fn every_write_route_is_checked_against_the_schema_and_a_violation_changes_nothing() {
    let (app, _dir) = node();
    let (s, b) = send(&app, "PUT", "/v1/_schemas/users", Some(users_schema())).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert!(b["version"].as_str().is_some());
    for (field, good, bad, pointer) in keyword_table() {
        let base = json!({"name": "ada"});
        assert!(send(&app, "PUT", "/v1/users/u", Some(base.clone()))
            .await
            .0
            .is_success());
        let (_, before) = send(&app, "GET", "/v1/users/u", None).await;
        let mut put = base.clone();
        put[field] = bad.clone();
        let routes: [(&str, &str, Value); 3] = [
            ("PUT", "/v1/users/u", put),
            ("PATCH", "/v1/users/u", json!({ field: bad.clone() })),
            (
                "POST",
                "/v1/users/u/ops",
                json!({"ops": [{"op": "set", "path": format!("/{field}"), "value": bad.clone()}]}),
            ),
        ];
        for (method, uri, body) in routes {
            let (s, b) = send(&app, method, uri, Some(body.clone())).await;
            assert_eq!(
                s,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{method} {field}={bad}: {b}"
            );
            assert_eq!(b["error"]["code"], "schema_violation");
            let errors = b["error"]["errors"].as_array().unwrap();
            assert!(
                errors.iter().any(|e| e["path"] == pointer),
                "{method} {field}: {errors:?}"
            );
            assert!(errors
                .iter()
                .all(|e| e["message"].as_str().is_some_and(|m| !m.is_empty())));
            assert_eq!(
                send(&app, "GET", "/v1/users/u", None).await.1,
                before,
                "{method} changed it"
            );
        }
        // and the valid value passes each route
        let mut put = base.clone();
        put[field] = good.clone();
        assert_eq!(
            send(&app, "PUT", "/v1/users/u", Some(put)).await.0,
            StatusCode::OK
        );
        assert_eq!(
            send(
                &app,
                "PATCH",
                "/v1/users/u",
                Some(json!({ field: good.clone() }))
            )
            .await
            .0,
            StatusCode::OK
        );
        let op =
            json!({"ops": [{"op": "set", "path": format!("/{field}"), "value": good.clone()}]});
        assert_eq!(
            send(&app, "POST", "/v1/users/u/ops", Some(op)).await.0,
            StatusCode::OK
        );
    }
    // a document without the required field cannot be created; removing it is refused
    let (s, _) = send(&app, "PUT", "/v1/users/v", Some(json!({"age": 3}))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        send(&app, "GET", "/v1/users/v", None).await.0,
        StatusCode::NOT_FOUND
    );
    let (s, _) = send(&app, "PATCH", "/v1/users/u", Some(json!({"name": null}))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    // other collections are not checked
    assert_eq!(
        send(&app, "PUT", "/v1/other/v", Some(json!({"age": "x"})))
            .await
            .0,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn counters_change_only_by_increment_and_text_and_lists_merge_element_wise() {
    let (app, _dir) = node();
    send(&app, "PUT", "/v1/_schemas/users", Some(users_schema())).await;
    send(
        &app,
        "PUT",
        "/v1/users/u",
        Some(json!({"name": "ada", "bio": "likes tea"})),
    )
    .await;
    for body in [json!({"visits": 5}), json!({"visits": "x"})] {
        let (s, b) = send(&app, "PATCH", "/v1/users/u", Some(body)).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(b["error"]["errors"][0]["path"], "/visits");
    }
    let inc = json!({"ops": [{"op": "increment", "path": "/visits", "by": 2}]});
    let (s, b) = send(&app, "POST", "/v1/users/u/ops", Some(inc)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["value"]["visits"], 2);
    // writing the value it has is no change; a string to a text field is a text edit
    let (s, b) = send(
        &app,
        "PUT",
        "/v1/users/u",
        Some(json!({"name": "ada", "visits": 2, "bio": "likes green tea"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["value"]["bio"], "likes green tea");
}

#[tokio::test]
async fn bad_schemas_are_400_and_store_nothing() {
    let (app, _dir) = node();
    let bad = [
        json!({"type": 12}),
        json!("a string"),
        json!({"properties": {"n": {"type": "integer", "x-merge": "sum"}}}),
        json!({"properties": {"n": {"type": "string", "x-merge": "counter"}}}),
        json!({"properties": {"n": {"x-merge": "counter"}}}),
        json!({"properties": {"b": {"type": "integer", "x-merge": "text"}}}),
        json!({"properties": {"l": {"type": "object", "x-merge": "list"}}}),
        json!({"x-merge": "lww"}),
        json!({"anyOf": [{"properties": {"n": {"type": "integer", "x-merge": "counter"}}}]}),
        json!({"properties": {"l": {"type": "array", "items": {"type": "object", "properties": {"c": {"type": "integer", "x-merge": "counter"}}}}}}),
    ];
    for schema in bad {
        let (s, b) = send(&app, "PUT", "/v1/_schemas/users", Some(schema.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{schema}: {b}");
        assert_eq!(b["error"]["code"], "invalid_schema", "{schema}");
    }
    assert_eq!(
        send(&app, "GET", "/v1/_schemas/users", None).await.0,
        StatusCode::NOT_FOUND
    );
    // not JSON at all
    let req = Request::put("/v1/_schemas/users")
        .header("content-type", "application/json")
        .body(Body::from("{"))
        .unwrap();
    assert_eq!(
        app.clone().oneshot(req).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn an_incompatible_change_is_refused_and_a_forced_one_counts_and_lists_what_it_breaks() {
    let (app, _dir) = node();
    send(&app, "PUT", "/v1/_schemas/users", Some(users_schema())).await;
    for (id, age) in [("a", 10), ("b", 20), ("c", 30)] {
        send(
            &app,
            "PUT",
            &format!("/v1/users/{id}"),
            Some(json!({"name": id, "age": age})),
        )
        .await;
    }
    let (_, v1) = send(&app, "GET", "/v1/_schemas/users", None).await;
    // relaxing: a wider limit, a new optional property
    let mut relaxed = users_schema();
    relaxed["properties"]["age"]["maximum"] = json!(200);
    relaxed["properties"]["nick"] = json!({"type": "string"});
    let (s, b) = send(&app, "PUT", "/v1/_schemas/users", Some(relaxed.clone())).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["broken"]["count"], 0);
    assert_ne!(b["version"], v1["version"]);
    // tightening: refused, naming why, and nothing stored
    let mut tight = relaxed.clone();
    tight["properties"]["age"]["minimum"] = json!(15);
    tight["required"] = json!(["name", "email"]);
    let (s, b) = send(&app, "PUT", "/v1/_schemas/users", Some(tight.clone())).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_eq!(b["error"]["code"], "incompatible_schema");
    let reasons = b["error"]["reasons"].to_string();
    assert!(
        reasons.contains("minimum") && reasons.contains("email"),
        "{reasons}"
    );
    assert_eq!(b["error"]["broken"]["count"], 3);
    assert_eq!(
        send(&app, "GET", "/v1/_schemas/users", None).await.1["schema"],
        relaxed
    );
    // forced: stored, counted, listed; the documents are still served, saying what they break
    let (s, b) = send(&app, "PUT", "/v1/_schemas/users?force=true", Some(tight)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["broken"], json!({"count": 3, "ids": ["a", "b", "c"]}));
    let (_, list) = send(&app, "GET", "/v1/users?invalid=true", None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
    let (s, doc) = send(&app, "GET", "/v1/users/a", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["violations"].as_array().unwrap().len() >= 2, "{doc}");
    // a write must leave it valid
    let (s, _) = send(&app, "PATCH", "/v1/users/a", Some(json!({"age": 40}))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = send(
        &app,
        "PATCH",
        "/v1/users/a",
        Some(json!({"age": 40, "email": "a@b.co"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (_, list) = send(&app, "GET", "/v1/users?invalid=true", None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    let (_, doc) = send(&app, "GET", "/v1/users/a", None).await;
    assert!(doc.get("violations").is_none(), "{doc}");
    // a first schema that breaks stored documents is incompatible too
    send(&app, "PUT", "/v1/pets/p", Some(json!({"legs": "four"}))).await;
    let (s, b) = send(
        &app,
        "PUT",
        "/v1/_schemas/pets",
        Some(json!({"properties": {"legs": {"type": "integer"}}})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_eq!(b["error"]["broken"]["ids"], json!(["p"]));
    // removed: writes are free again
    let (s, _) = send(&app, "DELETE", "/v1/_schemas/users", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        send(&app, "DELETE", "/v1/_schemas/users", None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send(&app, "PATCH", "/v1/users/a", Some(json!({"age": "old"})))
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn collections_beginning_with_an_underscore_are_reserved() {
    let (app, _dir) = node();
    for (method, uri) in [
        ("PUT", "/v1/_private/x"),
        ("GET", "/v1/_schemas"),
        ("PUT", "/v1/_schemas/_other"),
        ("POST", "/v1/_x/y/ops"),
    ] {
        let body = (method != "GET").then(|| json!({"a": 1}));
        let (s, b) = send(&app, method, uri, body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {uri}: {b}");
        assert_eq!(b["error"]["code"], "invalid_id", "{method} {uri}");
    }
    // no document lives under the schemas' own path
    assert_eq!(
        send(&app, "GET", "/v1/_schemas/users/x", None).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_served_openapi_description_is_typed_by_each_schema() {
    let (app, _dir) = node();
    let (_, plain) = send(&app, "GET", "/openapi.json", None).await;
    assert!(plain["paths"].get("/v1/users/{id}").is_none());
    send(&app, "PUT", "/v1/_schemas/users", Some(users_schema())).await;
    let (s, spec) = send(&app, "GET", "/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    let component = &spec["components"]["schemas"]["users.value"];
    assert_eq!(component["properties"]["visits"]["x-merge"], "counter");
    assert!(component["x-meridian-schema-version"].as_str().is_some());
    assert_eq!(
        spec["paths"]["/v1/users/{id}"]["put"]["requestBody"]["content"]["application/json"]
            ["schema"]["$ref"],
        "#/components/schemas/users.value"
    );
    assert!(spec["paths"].get("/v1/_schemas/{collection}").is_some());
}
