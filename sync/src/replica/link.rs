//! Calls to a peer and the bookkeeping of its link: bytes each way, successes and failures
//! (which the reachability rule in `status` reads).

use std::time::{Duration, Instant};

use super::{PeerState, Replica, Transport};
use crate::wire::{self, Request, Response};

impl<T: Transport> Replica<T> {
    /// One request to `peer` and its answer; an error answer is a refusal.
    pub(super) async fn call(
        &self,
        peer: &PeerState,
        req: &Request,
        extra_wait: Duration,
    ) -> Result<Response, crate::Error> {
        let body = wire::encode(req);
        let sent = body.len() as u64;
        let result = self
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
                wire::decode::<Response>(&bytes)
            })
            .and_then(|r| match r {
                Response::Error { message } => Err(crate::Error::Refused(format!(
                    "the peer refused: {message}"
                ))),
                r => Ok(r),
            });
        let mut st = peer.status.lock();
        st.bytes_sent += sent;
        match &result {
            Ok(_) => st.succeeded(Instant::now()),
            Err(e) => st.failed(e),
        }
        result
    }
}
