//! TLS with rustls (ring; no OpenSSL): the node's HTTPS listener, certificates re-read on
//! SIGHUP, client certificates of peers verified against `--peer-ca`, and the client side of
//! peer connections. `docs/security.md` is the contract.
//!
//! The listener does TLS handshakes off the accept loop (a slow or silent client cannot hold
//! the next one back), at most [`MAX_HANDSHAKES`] at a time, each bounded by
//! [`HANDSHAKE_TIMEOUT`]; axum serves the streams that complete one.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Handshakes in progress at once; more connections wait in the kernel's backlog.
pub const MAX_HANDSHAKES: usize = 1024;
/// Longest a handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no certificate", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a private key from {}: {e}", path.display()))
}

/// The CA that signs peers' certificates.
pub fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(path)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The node's certificate and key, swapped whole on reload; new connections get the new pair.
#[derive(Debug)]
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertFiles {
    fn load(cert: &Path, key_path: &Path) -> Result<Arc<CertifiedKey>, String> {
        let chain = read_certs(cert)?;
        let key = provider()
            .key_provider
            .load_private_key(read_key(key_path)?)
            .map_err(|e| format!("{}: an unusable private key: {e}", key_path.display()))?;
        let ck = CertifiedKey::new(chain, key);
        // a certificate with another pair's key would fail every handshake: refuse it here
        ck.keys_match().map_err(|e| {
            format!(
                "{} and {} are not a pair: {e}",
                cert.display(),
                key_path.display()
            )
        })?;
        Ok(Arc::new(ck))
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

/// A node's TLS settings, made once at start.
#[derive(Debug, Clone)]
pub struct ServerTls {
    certs: Arc<CertFiles>,
    config: Arc<ServerConfig>,
}

impl ServerTls {
    /// Reads the pair (and the peers' CA, which client certificates must chain to); errors name
    /// the file and what is wrong with it.
    pub fn new(cert: &Path, key: &Path, peer_ca: Option<&Path>) -> Result<Self, String> {
        let certs = Arc::new(CertFiles {
            current: RwLock::new(CertFiles::load(cert, key)?),
            cert: cert.to_owned(),
            key: key.to_owned(),
        });
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match peer_ca {
            // clients (apps, browsers) have no certificate; peers present one, checked here
            // against the CA (a bad one fails the handshake) and required on /internal/ with
            // --require-peer-cert
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(read_roots(ca)?),
                    provider(),
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(certs.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls {
            certs,
            config: Arc::new(config),
        })
    }

    /// Re-reads the certificate and key; a broken pair keeps the one in force.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = CertFiles::load(&self.certs.cert, &self.certs.key)?;
        *self.certs.current.write() = fresh;
        Ok(())
    }

    /// Listens on `tcp`, handshaking off the accept loop.
    pub fn listen(&self, tcp: TcpListener) -> io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = TlsAcceptor::from(self.config.clone());
        let task = tokio::spawn(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (stream, addr) = match tcp.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        // out of file descriptors, say: wait rather than spin
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%addr, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            rx,
            local,
            _task: AbortOnDrop(task),
        })
    }
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connections that completed a handshake.
#[derive(Debug)]
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    _task: AbortOnDrop,
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // the accept task ended (it does not, short of a panic): serve what is open
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Who is on the other end of a connection, for every request on it.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub addr: SocketAddr,
    /// The client presented a certificate that chains to `--peer-ca` (a peer).
    pub peer_cert: bool,
}

impl Connected<IncomingStream<'_, TlsListener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        ConnInfo {
            addr: *stream.remote_addr(),
            // only a verified certificate gets this far: a bad one fails the handshake
            peer_cert: stream
                .io()
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty()),
        }
    }
}

/// Plain HTTP: TCP with `TCP_NODELAY` on every connection. Without it a feed frame can sit in
/// the kernel for a delayed-ACK round (tens of milliseconds) behind the previous one: Nagle's
/// algorithm holds small writes back. (The TLS listener sets it too.)
#[derive(Debug)]
pub struct PlainListener(pub TcpListener);

impl Listener for PlainListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, addr) = Listener::accept(&mut self.0).await;
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        (tcp, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl Connected<IncomingStream<'_, PlainListener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, PlainListener>) -> Self {
        ConnInfo {
            addr: *stream.remote_addr(),
            peer_cert: false,
        }
    }
}

/// TLS between regions: the CA peers' certificates chain to, this node's own certificate for
/// mutual TLS, and whether peers must present one.
#[derive(Debug, Clone, Default)]
pub struct PeerTls {
    pub ca: Option<PathBuf>,
    /// (certificate, key), PEM.
    pub identity: Option<(PathBuf, PathBuf)>,
    pub require_cert: bool,
}

/// The client side of peer connections: peers' certificates verified against the CA (no public
/// roots: a cluster's CA is its own), and this node's certificate if mutual TLS is on.
pub fn peer_client(
    builder: reqwest::ClientBuilder,
    tls: &PeerTls,
) -> Result<reqwest::ClientBuilder, String> {
    let mut b = builder.use_rustls_tls().tls_built_in_root_certs(false);
    if let Some(ca) = &tls.ca {
        for c in read_certs(ca)? {
            let cert =
                reqwest::Certificate::from_der(&c).map_err(|e| format!("{}: {e}", ca.display()))?;
            b = b.add_root_certificate(cert);
        }
    }
    if let Some((cert, key)) = &tls.identity {
        let mut pem =
            std::fs::read(cert).map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
        pem.extend(std::fs::read(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?);
        let id = reqwest::Identity::from_pem(&pem)
            .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?;
        b = b.identity(id);
    }
    Ok(b)
}
