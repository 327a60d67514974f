//! What a change stream says: cursors in (`Last-Event-ID`) and events out (the SSE events and
//! their JSON), without I/O.

use axum::http::{header, HeaderMap};
use axum::response::sse::Event;
use meridian_api::{Change, DocumentEvent, Stamp};
use meridian_crdt::{ChangeEvent, DocKey, DocState, DocumentId};

use crate::error::ApiError;

/// Where a stream starts, from its `Last-Event-ID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resume {
    /// No cursor: from now on (a document stream first gets the document as it is).
    Now,
    /// After this event of this node's data dir.
    After(u64),
    /// A cursor of another node or of an earlier data dir: start over.
    Foreign,
}

/// True if the request asks for an event stream (`Accept: text/event-stream`).
pub(crate) fn requested(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().starts_with("text/event-stream"))
        })
}

/// Where the request's stream starts.
pub(crate) fn resume_of(headers: &HeaderMap, epoch: &str) -> Result<Resume, ApiError> {
    match headers.get("last-event-id") {
        None => Ok(Resume::Now),
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| ApiError::BadRequest("Last-Event-ID is not visible ASCII".into()))?;
            parse_cursor(v, epoch)
        }
    }
}

/// Parses a `Last-Event-ID`: `<epoch>-<sequence>`, as this node hands them out.
pub(crate) fn parse_cursor(value: &str, epoch: &str) -> Result<Resume, ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "Last-Event-ID {value:?} is not a cursor of this feed (16 hex digits, '-', a number)"
        ))
    };
    let (e, seq) = value.trim().split_once('-').ok_or_else(bad)?;
    if e.len() != 16 || !e.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let seq: u64 = seq.parse().map_err(|_| bad())?;
    Ok(if e.eq_ignore_ascii_case(epoch) {
        Resume::After(seq)
    } else {
        Resume::Foreign
    })
}

pub(super) fn cursor(epoch: &str, seq: u64) -> String {
    format!("{epoch}-{seq}")
}

pub(super) fn change(epoch: &str, seq: u64, data: String) -> Event {
    Event::default()
        .event("change")
        .id(cursor(epoch, seq))
        .data(data)
}

pub(super) fn reset(epoch: &str, from: u64) -> Event {
    Event::default().event("reset").id(cursor(epoch, from)).data(
        r#"{"message":"the stream cannot continue from Last-Event-ID (too old, or from another node); read the current state again"}"#,
    )
}

/// The data of a `change` event: the document answer after the change, and who made it.
pub(super) fn render(e: &ChangeEvent) -> String {
    let deleted = e.state == meridian_crdt::State::Deleted;
    let last = e.stamps.last();
    let data = Change {
        collection: e.collection.clone(),
        id: e.id.clone(),
        value: (!deleted).then(|| meridian_api::json(e.json.clone())),
        version: e.version.clone(),
        deleted,
        // stored keys were valid when written; a damaged one still renders, without its url
        automerge_url: DocKey::new(&e.collection, &e.id)
            .ok()
            .map(|k| DocumentId::of(&k).url()),
        node: last.map(|(n, _)| n.clone()),
        hlc: last.map(|(_, h)| h.clone()),
        changes: e
            .stamps
            .iter()
            .map(|(node, hlc)| Stamp {
                node: node.clone(),
                hlc: hlc.clone(),
            })
            .collect(),
    };
    serde_json::to_string(&data).expect("API types serialize")
}

/// The data of a `document` event: the document as it is.
pub(super) fn render_state(key: &DocKey, state: Option<&DocState>) -> String {
    let live = state.filter(|s| s.state == meridian_crdt::State::Live);
    let data = DocumentEvent {
        collection: key.collection().to_owned(),
        id: key.id().to_owned(),
        value: live.map(|s| meridian_api::json(s.json.clone())),
        // a deleted document keeps its version; one never written has none
        version: state
            .filter(|s| {
                matches!(
                    s.state,
                    meridian_crdt::State::Live | meridian_crdt::State::Deleted
                )
            })
            .map(|s| s.version.clone()),
        deleted: state.is_some_and(|s| s.state == meridian_crdt::State::Deleted),
        automerge_url: DocumentId::of(key).url(),
    };
    serde_json::to_string(&data).expect("API types serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_parse_or_are_refused() {
        let epoch = "00112233aabbccdd";
        assert_eq!(
            parse_cursor("00112233aabbccdd-42", epoch).unwrap(),
            Resume::After(42)
        );
        assert_eq!(
            parse_cursor("00112233AABBCCDD-0", epoch).unwrap(),
            Resume::After(0)
        );
        assert_eq!(
            parse_cursor("ffffffffffffffff-42", epoch).unwrap(),
            Resume::Foreign
        );
        for bad in [
            "",
            "42",
            "00112233aabbccdd-",
            "00112233aabbccdd--1",
            "0011-42",
            "zz112233aabbccdd-1",
            "00112233aabbccdd-1x",
        ] {
            assert!(parse_cursor(bad, epoch).is_err(), "{bad:?}");
        }
    }
}
