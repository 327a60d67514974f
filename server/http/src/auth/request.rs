//! What a request presents (a key or a token, from the header or `access_token`) and what the
//! route it matched needs.

use axum::extract::{MatchedPath, RawPathParams, Request};
use axum::http::{header, Method};
use axum::RequestExt;

use super::keys::{Access, Need};
use super::TOKEN_PARAM;

/// What a request presented.
#[derive(Debug)]
pub(super) enum Presented {
    Nothing,
    Malformed(&'static str),
    Key(String),
}

/// Takes the credentials out of the request: the header, or `access_token` on a GET (which is
/// then removed from the URI, so that no handler, log or error repeats it).
pub(super) fn take_credentials(req: &mut Request) -> Presented {
    let header = req.headers_mut().remove(header::AUTHORIZATION);
    let param = strip_token_param(req);
    if param.is_some() && req.method() != Method::GET {
        return Presented::Malformed(
            "access_token is taken on GET only; send the key in the Authorization header",
        );
    }
    match (header, param) {
        (Some(_), Some(_)) => Presented::Malformed(
            "send the key once: in the Authorization header or in access_token, not both",
        ),
        (None, None) => Presented::Nothing,
        (None, Some(k)) if k.is_empty() => Presented::Malformed("access_token is empty"),
        (None, Some(k)) => Presented::Key(k),
        (Some(h), None) => {
            let Ok(h) = h.to_str() else {
                return Presented::Malformed("the Authorization header is not ASCII");
            };
            match h.split_once(' ') {
                Some((scheme, key))
                    if scheme.eq_ignore_ascii_case("bearer") && !key.trim().is_empty() =>
                {
                    Presented::Key(key.trim().to_owned())
                }
                _ => Presented::Malformed("malformed Authorization header: expected Bearer <key>"),
            }
        }
    }
}

/// Removes `access_token` from the query, leaving the other parameters as they were; returns
/// its (last) value.
fn strip_token_param(req: &mut Request) -> Option<String> {
    let query = req.uri().query()?;
    let mut value = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|segment| {
            match serde_urlencoded::from_str::<Vec<(String, String)>>(segment).as_deref() {
                Ok([(k, v)]) if k == TOKEN_PARAM => {
                    value = Some(v.clone());
                    false
                }
                _ => true,
            }
        })
        .collect();
    let value = value?;
    let path = req.uri().path();
    let pq = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = pq.parse().ok();
    if let Ok(uri) = axum::http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    Some(value)
}

/// What the matched route needs.
pub(super) async fn need_of(req: &mut Request) -> Need {
    let upgrade = req.headers().contains_key(header::UPGRADE);
    let fixed = match req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
    {
        Some("/metrics") => Some(Need::Metrics),
        Some(
            "/v1/status"
            | "/v1/cluster"
            | "/v1/_auth/reload"
            | "/v1/_drain"
            | "/v1/_regions"
            | "/v1/_regions/{id}"
            | "/v1/_placement"
            | "/v1/_placement/{collection}",
        ) => Some(Need::Node),
        Some("/v1/sync") if upgrade => Some(Need::AnyKey),
        Some("/v1/sync") => Some(Need::Collection(Access::Read, "sync".into())),
        _ => None,
    };
    if let Some(need) = fixed {
        return need;
    }
    let (collection, id) = match req.extract_parts::<RawPathParams>().await {
        Ok(params) => {
            let get = |name: &str| {
                params
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_owned())
            };
            (get("collection"), get("id"))
        }
        Err(_) => (None, None),
    };
    let schema = req
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| p.as_str() == "/v1/_schemas/{collection}");
    let level = if matches!(*req.method(), Method::GET | Method::HEAD) {
        Access::Read
    } else if schema {
        // a collection's contract is its admins' to change
        Access::Admin
    } else {
        Access::Write
    };
    match (collection, id) {
        (Some(c), Some(id)) if !schema => Need::Document(level, c, id),
        (Some(c), _) => Need::Collection(level, c),
        // every keyed route names a collection; one that does not is node-wide
        (None, _) => Need::Node,
    }
}
