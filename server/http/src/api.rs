//! The `/v1` document API handlers.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use meridian_api::{Deleted, Document, Item, Page};
use meridian_crdt::{
    json, parse_ops, Contract, DocKey, DocumentId, Edit, Idempotency, Violation, Written,
};
use serde::Deserialize;

use crate::changes::{self, Filter};
use crate::error::ApiError;
use crate::extract::{CollectionPath, DocPath, IdempotencyKey, Json, MergePatch, Query, WriteBody};
use crate::state::AppState;

/// Largest page of a list.
pub(crate) const MAX_LIMIT: usize = 1000;
pub(crate) const DEFAULT_LIMIT: usize = 100;

/// A JSON response of an API type.
fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    let body = serde_json::to_vec(body).expect("API types serialize");
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The automerge URL of a document (its automerge-repo id; see `docs/sync.md`).
fn url(key: &DocKey) -> String {
    DocumentId::of(key).url()
}

fn document(key: &DocKey, value: String, version: String) -> Document<meridian_api::Json> {
    Document {
        collection: key.collection().to_owned(),
        id: key.id().to_owned(),
        value: meridian_api::json(value),
        version,
        automerge_url: url(key),
        conflicts: None,
        violations: vec![],
    }
}

fn write_response(key: &DocKey, w: Written) -> Response {
    let o = w.outcome;
    let mut resp = if o.deleted {
        let deleted = Deleted {
            collection: key.collection().to_owned(),
            id: key.id().to_owned(),
            deleted: true,
            version: o.version,
            automerge_url: url(key),
        };
        json_response(StatusCode::OK, &deleted)
    } else {
        let status = if o.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        json_response(status, &document(key, o.value, o.version))
    };
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

/// The rules the stored document breaks when its collection has a schema (concurrent writes,
/// each valid, can merge into such a document; see docs/schemas.md), else none.
fn violations(contract: Option<&dyn Contract>, json: &str) -> Result<Vec<Violation>, ApiError> {
    match contract {
        None => Ok(vec![]),
        Some(contract) => Ok(meridian_schema::violations_of(contract, json)?),
    }
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
    let (view, conflicts) = if p.conflicts {
        let (view, conflicts) = st
            .store
            .get_with_conflicts(&key)
            .await?
            .ok_or_else(not_found)?;
        (view, Some(conflicts))
    } else {
        (st.store.get(&key).await?.ok_or_else(not_found)?, None)
    };
    let violations = violations(contract.as_deref(), &view.json)?;
    let doc = Document {
        conflicts,
        violations,
        ..document(&key, view.json, view.version)
    };
    Ok(json_response(StatusCode::OK, &doc))
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
    let mut items = Vec::with_capacity(page.items.len());
    for d in page.items {
        let violations = violations(contract.as_deref(), &d.json)?;
        if !only_invalid || !violations.is_empty() {
            let key = DocKey::new(&collection, &d.id).expect("a stored document has a valid key");
            items.push(Item {
                automerge_url: url(&key),
                id: d.id,
                value: meridian_api::json(d.json),
                version: d.version,
                violations,
            });
        }
    }
    let page = Page {
        items,
        next: page.next,
    };
    Ok(json_response(StatusCode::OK, &page))
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
