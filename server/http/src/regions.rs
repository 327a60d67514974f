//! `GET` and `POST /v1/_regions`, `DELETE /v1/_regions/{id}`: the cluster's membership, changed
//! while every node runs (admin on *). See `meridian_sync`'s `members` for what the set is and
//! docs/replication.md, "Membership", for how a region joins and leaves.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use meridian_sync::RegionsReport;
use serde::Deserialize;

use crate::error::ApiError;
use crate::extract::{Json as JsonBody, Query, WriteBody};
use crate::state::AppState;

pub(crate) async fn list(State(st): State<AppState>) -> Json<RegionsReport> {
    Json(st.replica.regions())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddRegion {
    id: String,
    url: String,
}

/// Adds a region (or moves one to a new URL): this node follows it at once, the others once
/// the change reaches them. 200 with the set; adding what is there already changes nothing.
pub(crate) async fn add(
    State(st): State<AppState>,
    body: WriteBody<JsonBody>,
) -> Result<Json<RegionsReport>, ApiError> {
    if st.cluster_secret.is_none() {
        return Err(ApiError::BadRequest(
            "this node runs without --cluster-secret, so no region could replicate with it: \
             restart it with the cluster's secret (the same on every node), then add regions"
                .into(),
        ));
    }
    let add: AddRegion = serde_json::from_slice(&body.bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body must be {{\"id\": \"<node id>\", \"url\": \"http(s)://host:port\"}}: {e}"
        ))
    })?;
    let report = st.replica.add_region(&add.id, &add.url).await?;
    tracing::info!(
        region = add.id,
        url = add.url,
        "admin request: region added"
    );
    Ok(Json(report))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RemoveParams {
    force: Option<String>,
}

/// Removes a region for good: every node stops following it once the change reaches it; what
/// was merged of it stays. First this node reads the region's feed to the end, and refuses
/// (409 `region_not_caught_up`) if it cannot, unless `?force=true`. 200 with the set;
/// removing a removed region changes nothing.
pub(crate) async fn remove(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<RemoveParams>,
) -> Result<(StatusCode, Json<RegionsReport>), ApiError> {
    let force = crate::extract::flag("force", p.force.as_deref())?;
    let report = st.replica.remove_region(&id, force).await?;
    tracing::info!(region = id, "admin request: region removed");
    Ok((StatusCode::OK, Json(report)))
}
