//! Calls to a peer and the bookkeeping of its link: bytes each way, successes and failures
//! (which the reachability rule in `status` reads), and the protocol version it runs.
//!
//! Versions: a link first asks in the newest version this node speaks. A peer of the previous
//! release refuses it, naming what it speaks (`wire::spoken_by`); the request goes again at
//! once in the newest version both speak, and the link stays there until it fails (the peer may
//! come back upgraded: a rolling upgrade). Answers come in the request's version, so a peer of
//! the previous release asking this node is answered in its own.

use std::time::{Duration, Instant};

use super::{PeerState, Replica, Transport};
use crate::wire::{self, Extras, Request, Response, Versions};

impl<T: Transport> Replica<T> {
    /// One request to `peer` and its answer; an error answer is a refusal.
    pub(super) async fn call(
        &self,
        peer: &PeerState,
        req: &Request,
        extra_wait: Duration,
    ) -> Result<Response, crate::Error> {
        self.call_with_extras(peer, req, extra_wait)
            .await
            .map(|(r, _)| r)
    }

    /// [`Replica::call`], with what rode on the answer (see [`Extras`]).
    pub(super) async fn call_with_extras(
        &self,
        peer: &PeerState,
        req: &Request,
        extra_wait: Duration,
    ) -> Result<(Response, Extras), crate::Error> {
        let speaks = self.shared.config.versions;
        loop {
            let version = self.asking(peer);
            let body = wire::encode_at(version, req, &Extras::default());
            let sent = body.len() as u64;
            let answer = self
                .shared
                .transport
                .call(
                    &peer.peer,
                    body,
                    self.shared.config.call_timeout + extra_wait,
                )
                .await
                .and_then(|bytes| {
                    peer.status.lock().bytes_received += bytes.len() as u64;
                    wire::decode_at::<Response>(&bytes, speaks)
                });
            let result = match answer {
                Ok(d) => match d.message {
                    Response::Error { message } => {
                        if let Some(v) = wire::spoken_by(&message).and_then(|t| common(speaks, t)) {
                            if v != version {
                                tracing::info!(peer = %peer.peer.id, from = version, to = v, "the peer speaks an older protocol: the link uses the newest both speak");
                                peer.status.lock().asking = Some(v);
                                continue;
                            }
                        }
                        Err(crate::Error::Refused(format!(
                            "the peer refused: {message}"
                        )))
                    }
                    r => {
                        peer.status.lock().protocol = Some(d.version);
                        Ok((r, d.extras))
                    }
                },
                Err(e) => Err(e),
            };
            let mut st = peer.status.lock();
            st.bytes_sent += sent;
            match &result {
                Ok(_) => st.succeeded(Instant::now()),
                Err(e) => st.failed(e),
            }
            return result;
        }
    }

    /// The version requests to `peer` go in now.
    pub(super) fn asking(&self, peer: &PeerState) -> u8 {
        peer.status
            .lock()
            .asking
            .unwrap_or(self.shared.config.versions.newest)
    }
}

/// The newest version both `ours` and `theirs` speak.
fn common(ours: Versions, theirs: Versions) -> Option<u8> {
    let v = ours.newest.min(theirs.newest);
    (v >= ours.oldest.max(theirs.oldest)).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_version_both_speak() {
        let v = |oldest, newest| Versions { oldest, newest };
        assert_eq!(common(v(2, 3), v(2, 2)), Some(2));
        assert_eq!(common(v(2, 3), v(2, 4)), Some(3));
        assert_eq!(common(v(3, 4), v(2, 2)), None);
        assert_eq!(common(v(2, 2), v(3, 3)), None);
    }
}
