//! `PUT`, `GET` and `DELETE /v1/_schemas/{collection}`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json as JsonBody;
use meridian_crdt::{json, Contract, DocKey, Edit, Store, SCHEMAS};
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::extract::{IdempotencyKey, Json, Query, SchemaPath, WriteBody};
use crate::state::AppState;
use meridian_schema::{breaking, violations_of, Schema};

/// How many ids of broken documents an answer lists (the count is always whole).
const LISTED: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PutParams {
    force: Option<String>,
}

fn schema_key(collection: &str) -> Result<DocKey, ApiError> {
    Ok(DocKey::new(SCHEMAS, collection)?)
}

/// The schema `collection` has here, with its version.
async fn current(store: &Store, collection: &str) -> Result<Option<(Schema, String)>, ApiError> {
    let Some(view) = store.get(&schema_key(collection)?).await? else {
        return Ok(None);
    };
    let schema = Schema::from_document(&view.json)
        .map_err(|e| ApiError::Internal(format!("stored schema of {collection}: {e}")))?;
    Ok(Some((schema, view.version)))
}

/// The documents of `collection` stored here that `schema` refuses: how many, and the first
/// ids. Reads the whole collection (an administrative request).
pub(crate) async fn broken_documents(
    store: &Store,
    collection: &str,
    schema: &dyn Contract,
) -> Result<(usize, Vec<String>), ApiError> {
    let (mut count, mut ids, mut after) = (0, Vec::new(), None::<String>);
    if !store.holds(collection) {
        // placed in other regions: none of its documents is held (or served) here to check
        return Ok((count, ids));
    }
    loop {
        let page = store.list(collection, after.as_deref(), 1000).await?;
        for d in &page.items {
            if !violations_of(schema, &d.json)?.is_empty() {
                count += 1;
                if ids.len() < LISTED {
                    ids.push(d.id.clone());
                }
            }
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok((count, ids)),
        }
    }
}

pub(crate) async fn put_schema(
    State(st): State<AppState>,
    SchemaPath(collection): SchemaPath,
    Query(p): Query<PutParams>,
    body: WriteBody<Json>,
) -> Result<Response, ApiError> {
    let force = crate::extract::flag("force", p.force.as_deref())?;
    let source = json::parse(&body.bytes)?;
    let schema = Schema::parse(source).map_err(ApiError::InvalidSchema)?;
    let mut reasons = match current(&st.store, &collection).await? {
        Some((old, _)) => breaking(&old.source, &schema.source),
        None => vec![],
    };
    let (count, ids) = broken_documents(&st.store, &collection, &schema).await?;
    if count > 0 {
        reasons.push(format!("{count} document(s) stored here would break it"));
    }
    if !reasons.is_empty() && !force {
        return Err(ApiError::IncompatibleSchema {
            reasons,
            broken: count,
            ids,
        });
    }
    let written = st
        .store
        .write(
            &schema_key(&collection)?,
            Edit::Put(schema.document()),
            body.idem,
        )
        .await?;
    let status = if written.outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    if !reasons.is_empty() {
        tracing::warn!(%collection, ?reasons, "an incompatible schema was forced");
    }
    Ok((
        status,
        JsonBody(json!({
            "collection": collection,
            "schema": schema.source,
            "version": written.outcome.version,
            "broken": {"count": count, "ids": ids},
        })),
    )
        .into_response())
}

pub(crate) async fn get_schema(
    State(st): State<AppState>,
    SchemaPath(collection): SchemaPath,
) -> Result<Response, ApiError> {
    let (schema, version) = current(&st.store, &collection)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("collection {collection} has no schema")))?;
    Ok(JsonBody(json!({
        "collection": collection,
        "schema": schema.source,
        "version": version,
    }))
    .into_response())
}

pub(crate) async fn delete_schema(
    State(st): State<AppState>,
    SchemaPath(collection): SchemaPath,
    IdempotencyKey(idem): IdempotencyKey,
) -> Result<Response, ApiError> {
    let w = st
        .store
        .write(&schema_key(&collection)?, Edit::Delete, idem)
        .await
        .map_err(|e| match e {
            meridian_crdt::Error::NotFound => {
                ApiError::NotFound(format!("collection {collection} has no schema"))
            }
            other => other.into(),
        })?;
    Ok(JsonBody(json!({
        "collection": collection,
        "deleted": true,
        "version": w.outcome.version,
    }))
    .into_response())
}
