//! The OpenAPI description of the HTTP API, kept as a JSON file beside the code; a test checks
//! that every route the router serves is described.

use axum::http::header;
use axum::response::IntoResponse;

pub(crate) const SPEC: &str = include_str!("openapi.json");

pub(crate) async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], SPEC)
}
