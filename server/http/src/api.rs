//! The `/v1` document API handlers.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use meridian_crdt::{
    json, parse_ops, Contract, DocKey, DocView, DocumentId, Edit, Idempotency, Written,
};
use serde::Deserialize;

use crate::changes::{self, Filter};
use crate::error::ApiError;
use crate::extract::{CollectionPath, DocPath, IdempotencyKey, Json, MergePatch, Query, WriteBody};
use crate::state::AppState;

/// Largest page of a list.
pub(crate) const MAX_LIMIT: usize = 1000;
pub(crate) const DEFAULT_LIMIT: usize = 100;

fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// A JSON response from already-serialized parts, so stored JSON is never parsed again.
fn json_response(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The automerge URL of a document (its automerge-repo id; see `docs/sync.md`).
fn url(key: &DocKey) -> String {
    quote(&DocumentId::of(key).url())
}

fn doc_body(key: &DocKey, value: &str, version: &str) -> String {
    format!(
        r#"{{"collection":{},"id":{},"value":{},"version":{},"automerge_url":{}}}"#,
        quote(key.collection()),
        quote(key.id()),
        value,
        quote(version),
        url(key)
    )
}

fn write_response(key: &DocKey, w: Written) -> Response {
    let o = &w.outcome;
    let (status, body) = if o.deleted {
        (
            StatusCode::OK,
            format!(
                r#"{{"collection":{},"id":{},"deleted":true,"version":{},"automerge_url":{}}}"#,
                quote(key.collection()),
                quote(key.id()),
                quote(&o.version),
                url(key)
            ),
        )
    } else {
        let status = if o.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        (status, doc_body(key, &o.value, &o.version))
    };
    let mut resp = json_response(status, body);
    if w.replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

/// Runs a write on its own task: once accepted, a write finishes and is flushed even if the
/// client goes away or the request times out, so nothing is ever half-applied.
async fn write(
    st: &AppState,
    key: DocKey,
    edit: Edit,
    idem: Option<Idempotency>,
) -> Result<Response, ApiError> {
    let store = st.store.clone();
    let k = key.clone();
    let w = tokio::spawn(async move { store.write(&k, edit, idem).await })
        .await
        .map_err(|e| ApiError::Internal(format!("write task failed: {e}")))??;
    Ok(write_response(&key, w))
}

/// `,"violations":[...]` when the collection has a schema and the stored document breaks it
/// (concurrent writes, each valid, can merge into such a document; see docs/schemas.md), else
/// nothing.
fn violations_field(contract: Option<&dyn Contract>, json: &str) -> Result<String, ApiError> {
    let Some(contract) = contract else {
        return Ok(String::new());
    };
    let v = meridian_schema::violations_of(contract, json)?;
    Ok(if v.is_empty() {
        String::new()
    } else {
        format!(
            r#","violations":{}"#,
            serde_json::to_string(&v).expect("violations serialize")
        )
    })
}

/// A document body with its violations spliced in before the closing brace.
fn with_violations(mut body: String, violations: &str) -> String {
    if !violations.is_empty() {
        body.pop();
        body.push_str(violations);
        body.push('}');
    }
    body
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GetParams {
    #[serde(default)]
    conflicts: bool,
}

pub(crate) async fn get_doc(
    State(st): State<AppState>,
    DocPath(key): DocPath,
    Query(p): Query<GetParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if changes::requested(&headers) {
        if p.conflicts {
            return Err(ApiError::BadRequest(
                "conflicts=true does not apply to a change stream".into(),
            ));
        }
        let resume = changes::resume_of(&headers, st.store.event_epoch())?;
        return st.changes.open(Filter::Doc(key), resume);
    }
    let not_found = || ApiError::NotFound(format!("no document {key}"));
    let contract = st.store.contract_of(key.collection());
    if p.conflicts {
        let (view, conflicts) = st
            .store
            .get_with_conflicts(&key)
            .await?
            .ok_or_else(not_found)?;
        let body = format!(
            r#"{{"collection":{},"id":{},"value":{},"version":{},"automerge_url":{},"conflicts":{}}}"#,
            quote(key.collection()),
            quote(key.id()),
            view.json,
            quote(&view.version),
            url(&key),
            serde_json::to_string(&conflicts).expect("conflicts serialize")
        );
        let violations = violations_field(contract.as_deref(), &view.json)?;
        return Ok(json_response(
            StatusCode::OK,
            with_violations(body, &violations),
        ));
    }
    let view = st.store.get(&key).await?.ok_or_else(not_found)?;
    let violations = violations_field(contract.as_deref(), &view.json)?;
    Ok(json_response(
        StatusCode::OK,
        with_violations(doc_body(&key, &view.json, &view.version), &violations),
    ))
}

pub(crate) async fn put_doc(
    State(st): State<AppState>,
    DocPath(key): DocPath,
    body: WriteBody<Json>,
) -> Result<Response, ApiError> {
    let edit = json::parse_object(&body.bytes).map(Edit::Put)?;
    write(&st, key, edit, body.idem).await
}

pub(crate) async fn patch_doc(
    State(st): State<AppState>,
    DocPath(key): DocPath,
    body: WriteBody<MergePatch>,
) -> Result<Response, ApiError> {
    let edit = json::parse_object(&body.bytes).map(Edit::Patch)?;
    write(&st, key, edit, body.idem).await
}

pub(crate) async fn post_ops(
    State(st): State<AppState>,
    DocPath(key): DocPath,
    body: WriteBody<Json>,
) -> Result<Response, ApiError> {
    let edit = Edit::Ops(parse_ops(json::parse(&body.bytes)?)?);
    write(&st, key, edit, body.idem).await
}

pub(crate) async fn delete_doc(
    State(st): State<AppState>,
    DocPath(key): DocPath,
    IdempotencyKey(idem): IdempotencyKey,
) -> Result<Response, ApiError> {
    write(&st, key, Edit::Delete, idem).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    limit: Option<String>,
    after: Option<String>,
    /// `true`: only the documents that break the collection's schema.
    invalid: Option<String>,
}

pub(crate) async fn list_docs(
    State(st): State<AppState>,
    CollectionPath(collection): CollectionPath,
    Query(p): Query<ListParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if changes::requested(&headers) {
        if p.limit.is_some() || p.after.is_some() || p.invalid.is_some() {
            return Err(ApiError::BadRequest(
                "limit, after and invalid do not apply to a change stream (resume with Last-Event-ID)"
                    .into(),
            ));
        }
        let resume = changes::resume_of(&headers, st.store.event_epoch())?;
        return st.changes.open(Filter::Collection(collection), resume);
    }
    let limit = match p.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(s) => match s.parse::<usize>() {
            Ok(0) | Err(_) => {
                return Err(ApiError::BadRequest(format!(
                    "limit must be a whole number from 1 to {MAX_LIMIT}"
                )))
            }
            Ok(n) => n.min(MAX_LIMIT),
        },
    };
    let page = st
        .store
        .list(&collection, p.after.as_deref(), limit)
        .await
        .map_err(|e| match e {
            meridian_crdt::Error::InvalidId(m) => ApiError::BadRequest(m),
            other => other.into(),
        })?;
    let only_invalid = match p.invalid.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "invalid must be true or false, not {other:?}"
            )))
        }
    };
    let contract = st.store.contract_of(&collection);
    let mut items: Vec<String> = Vec::with_capacity(page.items.len());
    for d in &page.items {
        let violations = violations_field(contract.as_deref(), &d.json)?;
        if !only_invalid || !violations.is_empty() {
            items.push(with_violations(item_body(&collection, d), &violations));
        }
    }
    let next = page
        .next
        .as_deref()
        .map(quote)
        .unwrap_or_else(|| "null".into());
    Ok(json_response(
        StatusCode::OK,
        format!(r#"{{"items":[{}],"next":{}}}"#, items.join(","), next),
    ))
}

fn item_body(collection: &str, d: &DocView) -> String {
    let key = DocKey::new(collection, &d.id).expect("a stored document has a valid key");
    format!(
        r#"{{"id":{},"value":{},"version":{},"automerge_url":{}}}"#,
        quote(&d.id),
        d.json,
        quote(&d.version),
        url(&key)
    )
}

/// 405 for a known path with another method.
pub(crate) async fn method_not_allowed(method: Method) -> ApiError {
    tracing::debug!(%method, "method not allowed");
    ApiError::MethodNotAllowed
}

/// 404 for any unknown path.
pub(crate) async fn no_route(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}
