//! What a change stream says: cursors in (`Last-Event-ID`) and events out (the SSE events and
//! their JSON), without I/O.

use axum::http::{header, HeaderMap};
use axum::response::sse::Event;
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

pub(super) fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// The data of a `change` event: the document answer after the change, and who made it.
pub(super) fn render(e: &ChangeEvent) -> String {
    // stored keys were valid when written; a damaged one still renders, without its url
    let url = DocKey::new(&e.collection, &e.id)
        .map(|k| quote(&DocumentId::of(&k).url()))
        .unwrap_or_else(|_| "null".into());
    let deleted = e.state == meridian_crdt::State::Deleted;
    let (node, hlc) = match e.stamps.last() {
        Some((n, h)) => (quote(n), quote(h)),
        None => ("null".into(), "null".into()),
    };
    let stamps: Vec<String> = e
        .stamps
        .iter()
        .map(|(n, h)| format!(r#"{{"node":{},"hlc":{}}}"#, quote(n), quote(h)))
        .collect();
    format!(
        r#"{{"collection":{},"id":{},"value":{},"version":{},"deleted":{deleted},"automerge_url":{},"node":{node},"hlc":{hlc},"changes":[{}]}}"#,
        quote(&e.collection),
        quote(&e.id),
        if deleted { "null" } else { &e.json },
        quote(&e.version),
        url,
        stamps.join(",")
    )
}

/// The data of a `document` event: the document as it is.
pub(super) fn render_state(key: &DocKey, state: Option<&DocState>) -> String {
    let (value, version, deleted) = match state {
        Some(s) if s.state == meridian_crdt::State::Live => {
            (s.json.as_str(), quote(&s.version), false)
        }
        Some(s) if s.state == meridian_crdt::State::Deleted => ("null", quote(&s.version), true),
        _ => ("null", "null".into(), false),
    };
    format!(
        r#"{{"collection":{},"id":{},"value":{value},"version":{version},"deleted":{deleted},"automerge_url":{}}}"#,
        quote(key.collection()),
        quote(key.id()),
        quote(&DocumentId::of(key).url()),
    )
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
