//! The `/v1` document API handlers.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use meridian_api::{Deleted, Document, Item, Page};
use meridian_crdt::{
    json, parse_ops, Contract, DocKey, DocumentId, Edit, Idempotency, Violation, Written,
};
use serde::Deserialize;

use crate::auth::Caller;
use crate::changes::{self, Filter, Scope};
use crate::error::ApiError;
use crate::extract::{CollectionPath, DocPath, IdempotencyKey, Json, MergePatch, Query, WriteBody};
use crate::state::AppState;

/// Largest page of a list.
pub(crate) const MAX_LIMIT: usize = 1000;
pub(crate) const DEFAULT_LIMIT: usize = 100;

/// Who asked (the auth layer puts it on every request; `Anyone` on a node without keys).
pub(crate) type Who = Option<axum::Extension<Caller>>;

fn caller_of(who: Who) -> Caller {
    who.map_or(Caller::Anyone, |c| c.0)
}

/// What a change stream of `caller` may show, and when it ends.
fn stream_scope(st: &AppState, caller: Caller, collection: Option<&str>) -> Scope {
    Scope {
        readable: collection.and_then(|c| caller.readable_in(c)),
        ended: (!matches!(caller, Caller::Anyone))
            .then(|| Box::pin(st.auth.ended(caller)) as std::pin::Pin<Box<_>>),
    }
}

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
    // read here: the spawned task is outside the request's task-local context
    let trace = crate::trace::current().map(|t| t.trace_id);
    let w = tokio::spawn(async move { store.write_traced(&k, edit, idem, trace).await })
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
    who: Who,
) -> Result<Response, ApiError> {
    if changes::requested(&headers) {
        if p.conflicts {
            return Err(ApiError::BadRequest(
                "conflicts=true does not apply to a change stream".into(),
            ));
        }
        if st.drain.is_on() {
            return Err(st.draining_error());
        }
        let resume = changes::resume_of(&headers, st.store.event_epoch())?;
        let scope = stream_scope(&st, caller_of(who), None);
        return st.changes.open(Filter::Doc(key), resume, scope);
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
    who: Who,
) -> Result<Response, ApiError> {
    let caller = caller_of(who);
    if changes::requested(&headers) {
        if p.limit.is_some() || p.after.is_some() || p.invalid.is_some() {
            return Err(ApiError::BadRequest(
                "limit, after and invalid do not apply to a change stream (resume with Last-Event-ID)"
                    .into(),
            ));
        }
        if st.drain.is_on() {
            return Err(st.draining_error());
        }
        let resume = changes::resume_of(&headers, st.store.event_epoch())?;
        let scope = stream_scope(&st, caller, Some(&collection));
        return st
            .changes
            .open(Filter::Collection(collection), resume, scope);
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
    let page = list_readable(&st, &caller, &collection, p.after.as_deref(), limit).await?;
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

/// A page of `collection` with only what `caller` may read. A token's page is filled from as
/// many of the store's pages as it takes, up to a bound of scanned documents; past it the page
/// holds fewer than `limit` items and `next` goes on from the last one scanned.
async fn list_readable(
    st: &AppState,
    caller: &Caller,
    collection: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<meridian_crdt::Page, ApiError> {
    let list = |after: Option<String>| async move {
        st.store
            .list(collection, after.as_deref(), limit)
            .await
            .map_err(|e| match e {
                meridian_crdt::Error::InvalidId(m) => ApiError::BadRequest(m),
                other => other.into(),
            })
    };
    let Some(readable) = caller.readable_in(collection) else {
        return list(after.map(str::to_owned)).await;
    };
    const MAX_SCANNED: usize = 10 * MAX_LIMIT;
    let mut out = meridian_crdt::Page {
        items: Vec::new(),
        next: after.map(str::to_owned),
    };
    let mut scanned = 0;
    loop {
        let page = list(out.next.take()).await?;
        scanned += page.items.len();
        out.items
            .extend(page.items.into_iter().filter(|d| readable.has(&d.id)));
        out.next = page.next;
        if out.items.len() >= limit || out.next.is_none() || scanned >= MAX_SCANNED {
            if out.items.len() > limit {
                out.items.truncate(limit);
                out.next = out.items.last().map(|d| d.id.clone());
            }
            return Ok(out);
        }
    }
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
