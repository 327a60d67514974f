//! Request parsing: paths, bodies, queries and headers, each refused with the project's own
//! error format (axum's default rejections are plain text).

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::{header, request::Parts, HeaderMap};
use meridian_crdt::{DocKey, Idempotency};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// `/{collection}/{id}` as a validated [`DocKey`] of a collection this region holds.
#[derive(Debug)]
pub(crate) struct DocPath(pub DocKey);

impl FromRequestParts<AppState> for DocPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let Path((collection, id)) = Path::<(String, String)>::from_request_parts(parts, st)
            .await
            .map_err(|e| ApiError::InvalidId(format!("invalid path: {}", e.body_text())))?;
        not_reserved(&collection)?;
        let key = DocKey::new(&collection, &id)?;
        placed_here(st, &collection)?;
        Ok(DocPath(key))
    }
}

/// `Err(Elsewhere)`, naming where the collection lives and how clients reach those regions,
/// when this region is outside its placement.
pub(crate) fn placed_here(st: &AppState, collection: &str) -> Result<(), ApiError> {
    match st.store.check_placed(collection) {
        Err(meridian_crdt::Error::Elsewhere {
            collection,
            regions,
        }) => Err(ApiError::Elsewhere {
            collection,
            regions: regions
                .into_iter()
                .map(|r| {
                    let url = st.peer_url(&r);
                    (r, url)
                })
                .collect(),
        }),
        _ => Ok(()),
    }
}

/// Collections beginning with `_` are Meridian's (`_schemas`): not for user documents.
fn not_reserved(collection: &str) -> Result<(), ApiError> {
    if collection.starts_with('_') {
        return Err(ApiError::InvalidId(format!(
            "collection names beginning with _ are reserved for Meridian ({collection:?})"
        )));
    }
    Ok(())
}

/// `/_schemas/{collection}`: a collection that may have a schema (valid, not reserved).
#[derive(Debug)]
pub(crate) struct SchemaPath(pub String);

/// A schema is Meridian's document: every region holds it, whatever the collection's placement.
impl<S: Send + Sync> FromRequestParts<S> for SchemaPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Ok(SchemaPath(collection_of(parts, state).await?))
    }
}

/// `/{collection}`, validated, of a collection this region holds.
#[derive(Debug)]
pub(crate) struct CollectionPath(pub String);

impl FromRequestParts<AppState> for CollectionPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let collection = collection_of(parts, st).await?;
        placed_here(st, &collection)?;
        Ok(CollectionPath(collection))
    }
}

async fn collection_of<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<String, ApiError> {
    let Path(collection) = Path::<String>::from_request_parts(parts, state)
        .await
        .map_err(|e| ApiError::InvalidId(format!("invalid path: {}", e.body_text())))?;
    meridian_crdt::validate_name("collection", &collection)?;
    not_reserved(&collection)?;
    Ok(collection)
}

/// A `true`/`false` query parameter (absent: false).
pub(crate) fn flag(name: &str, value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!(
            "{name} must be true or false, not {other:?}"
        ))),
    }
}

/// Query parameters; unknown parameters are refused so that a typo is not silently ignored.
#[derive(Debug)]
pub(crate) struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Query::parse(&parts.uri)
    }
}

impl<T: DeserializeOwned> Query<T> {
    pub(crate) fn parse(uri: &axum::http::Uri) -> Result<Self, ApiError> {
        serde_urlencoded::from_str(uri.query().unwrap_or(""))
            .map(Query)
            .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))
    }
}

/// The media types a write's body may have.
pub(crate) trait Accepts {
    const TYPES: &'static [&'static str];
}

/// `application/json` (PUT, ops).
#[derive(Debug)]
pub(crate) struct Json;

impl Accepts for Json {
    const TYPES: &'static [&'static str] = &["application/json"];
}

/// `application/merge-patch+json`, or plain JSON (PATCH).
#[derive(Debug)]
pub(crate) struct MergePatch;

impl Accepts for MergePatch {
    const TYPES: &'static [&'static str] = &["application/merge-patch+json", "application/json"];
}

/// A write's body, checked (content type, the node's size limit) and read, with the
/// `Idempotency-Key` it came with, bound to the method, the path and these bytes (a retry
/// with the same key and another body is 422).
#[derive(Debug)]
pub(crate) struct WriteBody<A> {
    pub bytes: axum::body::Bytes,
    pub idem: Option<Idempotency>,
    accepts: std::marker::PhantomData<A>,
}

impl<A: Accepts> FromRequest<AppState> for WriteBody<A> {
    type Rejection = ApiError;

    async fn from_request(req: Request, st: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let bytes = read_body(&parts.headers, body, A::TYPES, st.limits.max_body).await?;
        let idem = idempotency(
            &parts.headers,
            parts.method.as_str(),
            parts.uri.path(),
            &bytes,
        )?;
        Ok(WriteBody {
            bytes,
            idem,
            accepts: std::marker::PhantomData,
        })
    }
}

/// The `Idempotency-Key` of a write without a body (DELETE).
#[derive(Debug)]
pub(crate) struct IdempotencyKey(pub Option<Idempotency>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        idempotency(&parts.headers, parts.method.as_str(), parts.uri.path(), b"")
            .map(IdempotencyKey)
    }
}

/// Checks the content type, then reads the body up to `limit` bytes.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    accepted: &[&str],
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match mime {
        Some(m) if accepted.contains(&m.as_str()) => {}
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "Content-Type must be {} (got {})",
                accepted.join(" or "),
                other.as_deref().unwrap_or("none")
            )))
        }
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::PayloadTooLarge(limit)
        } else {
            ApiError::BadRequest(format!("could not read the body: {e}"))
        }
    })
}

/// The `Idempotency-Key` header, with a digest of the request it came with.
fn idempotency(
    headers: &HeaderMap,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Option<Idempotency>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?;
    let mut h = Sha256::new();
    for part in [method.as_bytes(), b"\0", path.as_bytes(), b"\0", body] {
        h.update(part);
    }
    Ok(Some(Idempotency::new(key, h.finalize().to_vec())?))
}
