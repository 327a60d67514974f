//! The OpenAPI description of the HTTP API, generated (utoipa) from the API's types
//! (`meridian-api`), the request grammar (`grammar`) and the routes (`paths`); a test checks
//! that every route the router serves is described. Collections with a schema are added when
//! served: each schema as a component and a typed path `/v1/{that collection}/{id}`, so that
//! generated clients are typed.
//!
//! # Layout
//! - this file: the document, its security schemes and links, serving it.
//! - `grammar`: names, JSON values, ops, headers, query parameters, error responses.
//! - `paths`: every route.

mod grammar;
mod paths;

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use meridian_crdt::SCHEMAS;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::state::AppState;
use meridian_schema::Schema;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Meridian",
        description = "A geo-replicated CRDT document database. Documents are JSON objects \
            addressed by collection and id. Every /v1 route and /metrics need an API key \
            (Authorization: Bearer <key>; on GET also the access_token query parameter, for \
            browsers) on a node with an auth file; a node without one serves only on loopback. \
            See docs/security.md."
    ),
    paths(
        paths::get_doc, paths::put_doc, paths::patch_doc, paths::delete_doc, paths::post_ops,
        paths::list_docs, paths::sync, paths::get_schema, paths::put_schema,
        paths::delete_schema, paths::status, paths::cluster, paths::reload_auth, paths::drain, paths::backup,
        paths::list_regions, paths::add_region, paths::remove_region,
        paths::list_placement, paths::place, paths::unplace,
        paths::metrics,
        paths::healthz,
        paths::readyz, paths::openapi, paths::rpc, paths::subscribe,
    ),
    components(
        schemas(
            grammar::Name, grammar::Collection, grammar::JsonValue, grammar::JsonObject,
            grammar::Ops, grammar::Op, grammar::CollectionSchema,
            meridian_api::ErrorBody, meridian_api::Error, meridian_api::Code,
            meridian_api::Broken, meridian_api::RegionUrl,
            meridian_api::Change, meridian_api::DocumentEvent, meridian_api::Stamp,
        ),
        responses(
            grammar::Error, grammar::Unauthorized, grammar::Forbidden, grammar::TooManyRequests
        ),
    ),
    modifiers(&Access, &Links),
    security(("bearer" = []), ("access_token" = [])),
)]
struct Description;

/// The security schemes: API keys and scoped tokens (JWTs) as bearer tokens, and as a query
/// parameter on GET.
struct Access;

impl utoipa::Modify for Access {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme,
        };
        let components = api.components.get_or_insert_with(Default::default);
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.description = Some(
            "An API key from `meridian key create` (access per collection), or a scoped token: a \
             JWT the app's backend mints, with access per document (docs/security.md)"
                .into(),
        );
        components.add_security_scheme("bearer", SecurityScheme::Http(bearer));
        components.add_security_scheme(
            "access_token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "access_token",
                "The same key or token as a query parameter, on GET only (EventSource and WebSocket in \
                 browsers cannot set headers)",
            ))),
        );
        // the query parameter is offered where it is taken: on GET. Every other operation that
        // inherits the document's schemes gets the header alone
        let bearer_only = vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )];
        for item in api.paths.paths.values_mut() {
            for op in [
                &mut item.put,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                if op.security.is_none() {
                    op.security = Some(bearer_only.clone());
                }
            }
        }
    }
}

/// Links from an answer that names a document to what can be done with it next: what a client
/// does, and what schemathesis's stateful phase follows.
struct Links;

impl utoipa::Modify for Links {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::link::Link;
        use utoipa::openapi::path::HttpMethod;
        use utoipa::openapi::RefOr;
        let doc = "/v1/{collection}/{id}";
        let next = [
            ("GetDocument", "get_doc"),
            ("PatchDocument", "patch_doc"),
            ("DeleteDocument", "delete_doc"),
            ("ApplyOps", "post_ops"),
        ];
        let of_answer = |op: &str| {
            Link::builder()
                .operation_id(op)
                .parameter("collection", "$response.body#/collection")
                .parameter("id", "$response.body#/id")
                .build()
        };
        let sources = [
            (doc, HttpMethod::Put, &["200", "201"][..]),
            (doc, HttpMethod::Patch, &["200", "201"][..]),
            (
                "/v1/{collection}/{id}/ops",
                HttpMethod::Post,
                &["200", "201"][..],
            ),
        ];
        for (path, method, statuses) in sources {
            let Some(item) = api.paths.paths.get_mut(path) else {
                continue;
            };
            let op = match method {
                HttpMethod::Put => item.put.as_mut(),
                HttpMethod::Patch => item.patch.as_mut(),
                _ => item.post.as_mut(),
            };
            let Some(op) = op else { continue };
            for status in statuses {
                if let Some(RefOr::T(resp)) = op.responses.responses.get_mut(*status) {
                    for (name, target) in next {
                        resp.links.insert(name.into(), RefOr::T(of_answer(target)));
                    }
                }
            }
        }
    }
}

/// The generated description, as JSON.
fn generated() -> &'static str {
    static SPEC: OnceLock<String> = OnceLock::new();
    SPEC.get_or_init(|| {
        use utoipa::OpenApi;
        let mut api = Description::openapi();
        api.info.version = env!("CARGO_PKG_VERSION").into();
        api.to_json().expect("the description serializes")
    })
}

pub(crate) async fn serve(State(st): State<AppState>) -> Result<Response, ApiError> {
    let page = st.store.list(SCHEMAS, None, crate::api::MAX_LIMIT).await?;
    if page.items.is_empty() {
        return Ok(([(header::CONTENT_TYPE, "application/json")], generated()).into_response());
    }
    let mut spec: Value = serde_json::from_str(generated()).expect("the description is JSON");
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
