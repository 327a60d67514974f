//! `GET /v1/_placement`, `PUT` and `DELETE /v1/_placement/{collection}`: where a collection
//! lives (admin on *). See `meridian_crdt::Placement` for what a placement means and
//! docs/replication.md, "Placement", for how regions apply it.

use axum::extract::{Path, State};
use axum::Json;
use meridian_sync::PlacementReport;
use serde::Deserialize;

use crate::error::ApiError;
use crate::extract::{Json as JsonBody, WriteBody};
use crate::state::AppState;

pub(crate) async fn list(State(st): State<AppState>) -> Json<PlacementReport> {
    Json(st.replica.placement())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Place {
    regions: Vec<String>,
}

/// Limits the collection to the regions named (this node, or regions it follows): durable
/// here before the answer, applied by the others once the change reaches them. 200 with the
/// placement; placing it where it is changes nothing.
pub(crate) async fn place(
    State(st): State<AppState>,
    Path(collection): Path<String>,
    body: WriteBody<JsonBody>,
) -> Result<Json<PlacementReport>, ApiError> {
    let place: Place = serde_json::from_slice(&body.bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body must be {{\"regions\": [\"<node id>\", ...]}}: {e}"
        ))
    })?;
    let report = st.replica.place(&collection, &place.regions).await?;
    tracing::info!(
        collection,
        regions = ?place.regions,
        "admin request: collection placed"
    );
    Ok(Json(report))
}

/// Sends the collection to every region again; the regions that were outside get its
/// documents by anti-entropy.
pub(crate) async fn unplace(
    State(st): State<AppState>,
    Path(collection): Path<String>,
) -> Result<Json<PlacementReport>, ApiError> {
    let report = st.replica.unplace(&collection).await?;
    tracing::info!(collection, "admin request: collection placed everywhere");
    Ok(Json(report))
}
