//! Every route, as the OpenAPI description states it: parameters and statuses here, bodies by
//! their types (`meridian-api` for answers, `grammar` for requests). These functions are never
//! called; the router's handlers live beside the concerns they serve, and a test checks that
//! every route the router serves is described (`server/http/tests/api.rs`).
#![allow(dead_code)]

use meridian_api::{Deleted, Document, Page};

use super::grammar::{
    CollectionAt, CollectionSchema, DocAt, Force, Idempotent, JsonObject, OnlyInvalid, Ops, Paging,
    Read, SchemaDeleted, SchemaVersion, Session, Stream,
};
#[allow(unused_imports)] // named by the response lists below
use super::grammar::{Error, Forbidden, TooManyRequests, Unauthorized};

/// Read a document
///
/// With Accept: text/event-stream, a live stream of every change (Server-Sent Events).
#[utoipa::path(get, path = "/v1/{collection}/{id}", tag = "documents",
    params(DocAt, Read, Session, Stream),
    responses(
        (status = 200, description = "the document; with Accept: text/event-stream, its change stream (events document, change, reset, behind; see docs/changes.md)", content(
            (Document = "application/json"),
            (String = "text/event-stream"))),
        (status = 400, response = Error), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 404, response = Error),
        (status = 421, response = Error), (status = 429, response = TooManyRequests), (status = 503, response = Error)))]
fn get_doc() {}

/// Replace a document (keys absent from the body are removed)
#[utoipa::path(put, path = "/v1/{collection}/{id}", tag = "documents",
    params(DocAt, Idempotent, Session),
    request_body(content = JsonObject, content_type = "application/json"),
    responses(
        (status = 200, description = "the document", body = Document),
        (status = 201, description = "the document was created", body = Document),
        (status = 400, response = Error), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 413, response = Error),
        (status = 415, response = Error), (status = 422, response = Error),
        (status = 421, response = Error), (status = 429, response = TooManyRequests), (status = 503, response = Error),
        (status = 507, response = Error)))]
fn put_doc() {}

/// RFC 7396 merge patch (null removes a key); creates the document if absent
#[utoipa::path(patch, path = "/v1/{collection}/{id}", tag = "documents",
    params(DocAt, Idempotent, Session),
    request_body(content(
        (JsonObject = "application/merge-patch+json"),
        (JsonObject = "application/json"))),
    responses(
        (status = 200, description = "the document", body = Document),
        (status = 201, description = "the document was created", body = Document),
        (status = 400, response = Error), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 413, response = Error),
        (status = 415, response = Error), (status = 422, response = Error),
        (status = 421, response = Error), (status = 429, response = TooManyRequests), (status = 503, response = Error),
        (status = 507, response = Error)))]
fn patch_doc() {}

/// Delete a document (a delete wins over concurrent updates)
#[utoipa::path(delete, path = "/v1/{collection}/{id}", tag = "documents",
    params(DocAt, Idempotent, Session),
    responses(
        (status = 200, description = "deleted", body = Deleted),
        (status = 400, response = Error), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 404, response = Error),
        (status = 422, response = Error), (status = 421, response = Error), (status = 429, response = TooManyRequests),
        (status = 503, response = Error),
        (status = 507, response = Error)))]
fn delete_doc() {}

/// Apply ops atomically as one change
#[utoipa::path(post, path = "/v1/{collection}/{id}/ops", tag = "documents",
    params(DocAt, Idempotent, Session),
    request_body(content = Ops, content_type = "application/json"),
    responses(
        (status = 200, description = "the document", body = Document),
        (status = 201, description = "the document was created", body = Document),
        (status = 400, response = Error), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 413, response = Error),
        (status = 415, response = Error), (status = 422, response = Error),
        (status = 421, response = Error), (status = 429, response = TooManyRequests), (status = 503, response = Error),
        (status = 507, response = Error)))]
fn post_ops() {}

/// List live documents in id order
///
/// With Accept: text/event-stream, a live stream of every change (Server-Sent Events).
#[utoipa::path(get, path = "/v1/{collection}", tag = "documents",
    params(CollectionAt, Paging, OnlyInvalid, Session, Stream),
    responses(
        (status = 200, description = "a page; with Accept: text/event-stream, the collection's change stream (events change, reset, behind; see docs/changes.md)", content(
            (Page = "application/json"),
            (String = "text/event-stream"))),
        (status = 400, response = Error), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 421, response = Error), (status = 429, response = TooManyRequests),
        (status = 503, response = Error)))]
fn list_docs() {}

/// Sync documents with automerge-repo's protocol over a WebSocket; without an upgrade, the list of the collection named `sync`
///
/// With `Connection: Upgrade` and `Upgrade: websocket`, the answer is 101 and the socket speaks
/// automerge-repo's network protocol "1" (binary CBOR frames: join/peer, request, sync,
/// doc-unavailable, ephemeral, error), as `@automerge/automerge-repo` 2.x and samod do.
/// Document ids are computed from (collection, id); docs/sync.md describes the document
/// layout, the ordering of client changes, limits and errors. A session token on the upgrade
/// request holds it until this node covers the token. Without an upgrade this is
/// `GET /v1/{collection}` for the collection `sync`.
#[utoipa::path(get, path = "/v1/sync", tag = "sync",
    params(Paging, Session),
    responses(
        (status = 101, description = "switching to the sync protocol"),
        (status = 200, description = "a page", body = Page),
        (status = 400, response = Error), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 426, response = Error),
        (status = 429, response = TooManyRequests), (status = 503, response = Error)))]
fn sync() {}

/// Read a collection's schema
#[utoipa::path(get, path = "/v1/_schemas/{collection}", tag = "schemas",
    params(CollectionAt),
    responses(
        (status = 200, description = "the schema and its version", body = SchemaVersion),
        (status = 400, response = Error), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 404, response = Error),
        (status = 429, response = TooManyRequests), (status = 503, response = Error)))]
fn get_schema() {}

/// Store a collection's schema (a new version must accept every document the old one accepted)
///
/// Needs admin access to the collection. Every write to the collection is then checked against
/// it (422 schema_violation). A change that would refuse documents the old version accepted,
/// or documents stored here, is 409 incompatible_schema unless force=true; the answer counts
/// the documents stored here that the schema refuses (list them with
/// GET /v1/{collection}?invalid=true).
#[utoipa::path(put, path = "/v1/_schemas/{collection}", tag = "schemas",
    params(CollectionAt, Force, Idempotent, Session),
    request_body(content = CollectionSchema, content_type = "application/json"),
    responses(
        (status = 200, description = "stored (replaces the earlier version)", body = SchemaVersion),
        (status = 201, description = "stored (the collection's first)", body = SchemaVersion),
        (status = 400, response = Error), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 404, response = Error),
        (status = 409, response = Error), (status = 413, response = Error),
        (status = 415, response = Error), (status = 422, response = Error),
        (status = 429, response = TooManyRequests), (status = 503, response = Error)))]
fn put_schema() {}

/// Remove a collection's schema
#[utoipa::path(delete, path = "/v1/_schemas/{collection}", tag = "schemas",
    params(CollectionAt, Idempotent, Session),
    responses(
        (status = 200, description = "removed", body = SchemaDeleted),
        (status = 400, response = Error), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 404, response = Error),
        (status = 422, response = Error), (status = 429, response = TooManyRequests),
        (status = 503, response = Error)))]
fn delete_schema() {}

/// Node id, region, HLC now, document count, bytes on disk, auth mode (admin on *)
#[utoipa::path(get, path = "/v1/status", tag = "operations",
    responses(
        (status = 200, description = "status"),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests)))]
fn status() {}

/// This node and each peer: reachability, last contact, replication lag both ways (seconds, changes), bytes sent and received, clock drift refusals
///
/// Needs admin access on * when keys are on.
#[utoipa::path(get, path = "/v1/cluster", tag = "operations",
    responses(
        (status = 200, description = "cluster status"),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests)))]
fn cluster() {}

/// Re-reads the auth file, as SIGHUP does (admin on *)
///
/// A broken file keeps the keys and tokens in force and is 422 saying why. Open sync connections
/// and change streams whose credentials the new file revokes or removes end (docs/security.md).
#[utoipa::path(post, path = "/v1/_auth/reload", tag = "operations",
    responses(
        (status = 200, description = "reloaded: {\"reloaded\": true, \"keys\": n}"),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 422, response = Error),
        (status = 429, response = TooManyRequests)))]
fn reload_auth() {}

/// Drains and stops the node, as SIGTERM does (admin on *)
///
/// `/readyz` goes 503, sync connections are closed with "going away" and change streams end;
/// new ones are 503 `draining` naming a peer; requests are served on until none has come for a
/// second, or until `--drain-secs` (0: the node stops at once).
#[utoipa::path(post, path = "/v1/_drain", tag = "operations",
    responses(
        (status = 202, description = "draining: {\"draining\": true, \"started_now\": bool}"),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests)))]
fn drain() {}

/// An online backup of this node (admin on *)
///
/// Every document's whole history, read while writes go on, as frames (length, payload,
/// CRC-32) ending in a trailer; `meridian backup` writes it to a directory and `meridian
/// restore` makes a new node from it (docs/replication.md, Backups).
#[utoipa::path(get, path = "/v1/_backup", tag = "operations",
    params(("max_mb_per_sec" = Option<u32>, Query, description = "the stream's pace in MiB/s (absent or 0: no limit)")),
    responses(
        (status = 200, description = "the backup stream", content_type = "application/octet-stream"),
        (status = 400, response = Error), (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests)))]
fn backup() {}

/// The cluster's membership as this node sees it (admin on *)
///
/// The regions it follows (its --peer flags and the membership document every region holds),
/// the ones removed and when, and whether this node itself was removed (docs/replication.md,
/// Membership).
#[utoipa::path(get, path = "/v1/_regions", tag = "operations",
    responses(
        (status = 200, description = "{\"node\", \"removed_at\", \"following\": [{\"id\", \"url\"}], \"removed\": [{\"id\", \"at\"}], \"ignored_flags\"}"),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests)))]
fn list_regions() {}

/// Adds a region, or moves one to a new URL, while every node runs (admin on *)
///
/// Body `{"id": "<node id>", "url": "http(s)://host:port"}`. This node follows it at once,
/// the others once the change reaches them; the new region catches up from their feeds (or by
/// anti-entropy where a feed was trimmed). 409 `region_removed` for an id removed before: its
/// automerge sequence numbers are taken.
#[utoipa::path(post, path = "/v1/_regions", tag = "operations",
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses(
        (status = 200, description = "the membership after the change"),
        (status = 400, response = Error), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 409, response = Error),
        (status = 413, response = Error), (status = 415, response = Error),
        (status = 429, response = TooManyRequests), (status = 503, response = Error)))]
fn add_region() {}

/// Removes a region for good (admin on *)
///
/// This node first reads the region's feed to its end (409 `region_not_caught_up` if it
/// cannot; `?force=true` removes it anyway, losing what it acknowledged that no region
/// pulled). Every node stops following it once the change reaches it; what was merged of it
/// stays; it refuses writes once it learns. 404 `unknown_region`.
#[utoipa::path(delete, path = "/v1/_regions/{id}", tag = "operations",
    params(("id" = String, Path, description = "the region's node id"),
        ("force" = Option<bool>, Query, description = "remove even if its feed cannot be read to the end")),
    responses(
        (status = 200, description = "the membership after the change"),
        (status = 400, response = Error), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 404, response = Error),
        (status = 409, response = Error), (status = 429, response = TooManyRequests),
        (status = 503, response = Error)))]
fn remove_region() {}

/// Where placed collections live, as this node holds it (admin on *)
///
/// Collections not listed go to every region (docs/replication.md, Placement).
#[utoipa::path(get, path = "/v1/_placement", tag = "operations",
    responses(
        (status = 200, description = "{\"node\", \"collections\": [{\"collection\", \"regions\", \"here\"}]}"),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests)))]
fn list_placement() {}

/// Limit a collection to some regions (admin on *)
///
/// Body `{"regions": ["<node id>", ...]}`: this node, or regions it follows. Its documents
/// then replicate only among them (feeds, anti-entropy), and the other regions answer its
/// requests with 421 `collection_elsewhere` naming them. 404 `unknown_region`; 409
/// `region_removed`.
#[utoipa::path(put, path = "/v1/_placement/{collection}", tag = "operations",
    params(("collection" = String, Path, description = "the collection")),
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses(
        (status = 200, description = "the placement after the change"),
        (status = 400, response = Error), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 404, response = Error),
        (status = 409, response = Error), (status = 413, response = Error),
        (status = 415, response = Error), (status = 429, response = TooManyRequests),
        (status = 503, response = Error)))]
fn place() {}

/// Send a collection to every region again (admin on *)
///
/// The regions that were outside get its documents by anti-entropy.
#[utoipa::path(delete, path = "/v1/_placement/{collection}", tag = "operations",
    params(("collection" = String, Path, description = "the collection")),
    responses(
        (status = 200, description = "the placement after the change"),
        (status = 400, response = Error), (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden), (status = 409, response = Error),
        (status = 429, response = TooManyRequests), (status = 503, response = Error)))]
fn unplace() {}

/// Prometheus metrics
///
/// Needs admin access on *, or a key listed in metrics_keys, when keys are on.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "OpenMetrics text"),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests)))]
fn metrics() {}

/// The process is up
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "up")))]
fn healthz() {}

/// Storage is open and healthy, and the node is not draining (503 `draining` while it does)
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "ready"),
        (status = 503, response = Error)))]
fn readyz() {}

/// This document
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "OpenAPI 3.1")))]
fn openapi() {}

/// Node-to-node replication (postcard-encoded messages, see docs/replication.md). Needs `Authorization: Bearer <cluster secret>`
#[utoipa::path(post, path = "/internal/rpc", tag = "internal", security(()),
    responses(
        (status = 200, description = "the answer message"),
        (status = 401, response = Error)))]
fn rpc() {}

/// Node-to-node: follow this node's change feed as a stream of length-prefixed frames (see docs/replication.md). Needs `Authorization: Bearer <cluster secret>`
#[utoipa::path(post, path = "/internal/subscribe", tag = "internal", security(()),
    responses(
        (status = 200, description = "a stream of frames"),
        (status = 401, response = Error)))]
fn subscribe() {}
