//! A small Server-Sent Events reader for tests and the benchmark: events as the spec frames
//! them (`event:`, `id:`, `data:` lines, a blank line ends one), comments counted.

use std::time::Duration;

/// One event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }
}

/// An open stream.
#[derive(Debug)]
pub struct EventStream {
    resp: reqwest::Response,
    buf: String,
    /// Comment lines seen so far (keep-alives).
    pub comments: usize,
    ended: bool,
}

impl EventStream {
    /// Opens `url` with `Accept: text/event-stream` and the given extra headers. A non-200
    /// answer is returned as it is.
    pub async fn open(
        client: &reqwest::Client,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<EventStream, reqwest::Response> {
        let mut req = client.get(url).header("accept", "text/event-stream");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("the node answers");
        if resp.status() != 200 {
            return Err(resp);
        }
        Ok(EventStream {
            resp,
            buf: String::new(),
            comments: 0,
            ended: false,
        })
    }

    /// The next event, or `None` once the node has closed the stream.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(ev) = self.take_event() {
                return Some(ev);
            }
            if self.ended {
                return None;
            }
            match self.resp.chunk().await {
                Ok(Some(bytes)) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(None) | Err(_) => self.ended = true,
            }
        }
    }

    /// The next event if one comes within `d`.
    pub async fn next_within(&mut self, d: Duration) -> Option<SseEvent> {
        tokio::time::timeout(d, self.next()).await.ok().flatten()
    }

    /// Waits up to `d` for comments (or events, which are returned).
    pub async fn idle(&mut self, d: Duration) -> Vec<SseEvent> {
        let mut out = vec![];
        let end = tokio::time::Instant::now() + d;
        while let Ok(Some(ev)) = tokio::time::timeout_at(end, self.next()).await {
            out.push(ev);
        }
        out
    }

    fn take_event(&mut self) -> Option<SseEvent> {
        loop {
            let end = self.buf.find("\n\n")?;
            let block: String = self.buf.drain(..end + 2).collect();
            let mut ev = SseEvent {
                event: "message".into(),
                id: None,
                data: String::new(),
            };
            let mut any = false;
            for line in block.lines() {
                if line.is_empty() {
                    continue;
                }
                if line.starts_with(':') {
                    self.comments += 1;
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                any = true;
                match field {
                    "event" => ev.event = value.into(),
                    "id" => ev.id = Some(value.into()),
                    "data" => {
                        if !ev.data.is_empty() {
                            ev.data.push('\n');
                        }
                        ev.data.push_str(value);
                    }
                    _ => {}
                }
            }
            if any {
                return Some(ev);
            }
        }
    }
}
