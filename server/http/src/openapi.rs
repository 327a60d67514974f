//! The OpenAPI description of the HTTP API, kept as a JSON file beside the code; a test checks
//! that every route the router serves is described. Collections with a schema are added when
//! served: each schema as a component and a typed path `/v1/{that collection}/{id}`, so that
//! generated clients are typed.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use meridian_crdt::SCHEMAS;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::state::AppState;
use meridian_schema::Schema;

pub(crate) const SPEC: &str = include_str!("openapi.json");

pub(crate) async fn serve(State(st): State<AppState>) -> Result<Response, ApiError> {
    let page = st.store.list(SCHEMAS, None, crate::api::MAX_LIMIT).await?;
    if page.items.is_empty() {
        return Ok(([(header::CONTENT_TYPE, "application/json")], SPEC).into_response());
    }
    let mut spec: Value = serde_json::from_str(SPEC).expect("the description is JSON");
    for d in &page.items {
        let Ok(schema) = Schema::from_document(&d.json) else {
            continue; // logged where the store compiles it
        };
        add_collection(&mut spec, &d.id, &d.version, schema.source);
    }
    Ok(axum::Json(spec).into_response())
}

/// A component name for a collection (components allow `A-Z a-z 0-9 . - _` only).
fn component(collection: &str) -> String {
    let safe: String = collection
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.value")
}

fn add_collection(spec: &mut Value, collection: &str, version: &str, mut schema: Value) {
    if let Some(m) = schema.as_object_mut() {
        m.remove("$schema");
        m.insert("x-meridian-schema-version".into(), version.into());
    }
    let name = component(collection);
    spec["components"]["schemas"][&name] = schema;
    let value = json!({"$ref": format!("#/components/schemas/{name}")});
    let error = json!({"$ref": "#/components/responses/Error"});
    spec["paths"][format!("/v1/{collection}/{{id}}")] = json!({
        "parameters": [{"name": "id", "in": "path", "required": true,
                        "schema": {"$ref": "#/components/schemas/Name"}}],
        "get": {
            "summary": format!("Read a document of {collection} (typed by its schema)"),
            "responses": {
                "200": {"description": "the document", "content": {"application/json": {"schema": {
                    "allOf": [{"$ref": "#/components/schemas/Document"},
                              {"type": "object", "properties": {"value": value}}]}}}},
                "404": error
            }
        },
        "put": {
            "summary": format!("Replace a document of {collection} (checked against its schema)"),
            "requestBody": {"required": true, "content": {"application/json": {"schema": value}}},
            "responses": {
                "200": {"description": "replaced", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Document"}}}},
                "201": {"description": "created", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Document"}}}},
                "422": error
            }
        }
    });
}
