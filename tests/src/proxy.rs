//! A TCP proxy a test can cut and heal, to partition real nodes on loopback.
//!
//! Each directed link between two nodes gets its own proxy (node X reaches peer Y through the
//! proxy X→Y), so a link can be cut one way. A cut closes the link's open connections and
//! refuses new ones, as a partition that the sender notices at once would. A stall is the
//! other kind: connections stay open and new ones are taken, but nothing crosses (as when a
//! network drops packets), and what was held back is delivered after the heal.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Debug, Default)]
struct State {
    target: Mutex<Option<SocketAddr>>,
    cut: AtomicBool,
    stalled: AtomicBool,
    resumed: tokio::sync::Notify,
    conns: Mutex<Vec<AbortHandle>>,
    /// Bytes carried, both directions (HTTP framing included).
    bytes: AtomicU64,
}

/// One proxy. Stops when dropped.
#[derive(Debug)]
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: AbortHandle,
}

impl Proxy {
    /// Listens on a free loopback port; forwards nothing until [`Proxy::set_target`].
    pub async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(State::default());
        let s = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let target = *s.target.lock();
                let Some(target) = target.filter(|_| !s.cut.load(Ordering::SeqCst)) else {
                    continue; // dropped: the connection closes
                };
                let counted = s.clone();
                let conn = tokio::spawn(async move {
                    counted.pass().await;
                    if let Ok(up) = TcpStream::connect(target).await {
                        let _ = up.set_nodelay(true);
                        let _ = down.set_nodelay(true);
                        let (dr, dw) = down.into_split();
                        let (ur, uw) = up.into_split();
                        tokio::join!(pump(dr, uw, &counted), pump(ur, dw, &counted));
                    }
                });
                let mut conns = s.conns.lock();
                conns.retain(|c| !c.is_finished());
                conns.push(conn.abort_handle());
            }
        })
        .abort_handle();
        Proxy {
            addr,
            state,
            accept,
        }
    }

    /// Bytes carried so far, both directions.
    pub fn bytes(&self) -> u64 {
        self.state.bytes.load(Ordering::Relaxed)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_target(&self, target: &str) {
        *self.state.target.lock() = Some(target.parse().expect("a socket address"));
    }

    /// Closes every open connection and refuses new ones until [`Proxy::heal`].
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        for c in self.state.conns.lock().drain(..) {
            c.abort();
        }
    }

    /// Holds every byte back, on open connections and new ones, until [`Proxy::heal`].
    pub fn stall(&self) {
        self.state.stalled.store(true, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
        self.state.stalled.store(false, Ordering::SeqCst);
        self.state.resumed.notify_waiters();
    }
}

impl State {
    /// Waits while the link is stalled.
    async fn pass(&self) {
        while self.stalled.load(Ordering::SeqCst) {
            let resumed = self.resumed.notified();
            if !self.stalled.load(Ordering::SeqCst) {
                break;
            }
            let _ = tokio::time::timeout(std::time::Duration::from_millis(50), resumed).await;
        }
    }
}

/// Copies one direction, counting bytes, until either side closes.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: &State,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                state.pass().await;
                state.bytes.fetch_add(n as u64, Ordering::Relaxed);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
