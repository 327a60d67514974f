//! A TCP proxy a test can cut and heal, to partition real nodes on loopback.
//!
//! Each directed link between two nodes gets its own proxy (node X reaches peer Y through the
//! proxy X→Y), so a link can be cut one way. A cut closes the link's open connections and
//! refuses new ones, as a partition that the sender notices at once would.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Debug, Default)]
struct State {
    target: Mutex<Option<SocketAddr>>,
    cut: AtomicBool,
    conns: Mutex<Vec<AbortHandle>>,
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
            while let Ok((mut down, _)) = listener.accept().await {
                let target = *s.target.lock();
                let Some(target) = target.filter(|_| !s.cut.load(Ordering::SeqCst)) else {
                    continue; // dropped: the connection closes
                };
                let conn = tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(target).await {
                        let _ = up.set_nodelay(true);
                        let _ = down.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
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

    pub fn heal(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
