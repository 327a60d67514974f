//! TLS for `https://` regions and `wss://` sync.

use std::sync::Arc;

use crate::error::{Error, Result};

/// TLS that trusts `ca_pem`'s certificates, or else the public CAs (webpki-roots).
pub(super) fn tls_config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for c in CertificateDer::pem_slice_iter(pem) {
                let c =
                    c.map_err(|e| Error::Invalid(format!("ca_pem: not PEM certificates: {e}")))?;
                roots
                    .add(c)
                    .map_err(|e| Error::Invalid(format!("ca_pem: not a usable CA: {e}")))?;
            }
            if roots.is_empty() {
                return Err(Error::Invalid("ca_pem holds no certificate".into()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Invalid(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(config)
}
