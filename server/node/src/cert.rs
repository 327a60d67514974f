//! `meridian cert`: a development CA and node certificates (rcgen), for tests and demos. Each
//! node certificate serves HTTPS and identifies the node to its peers (mutual TLS), for the
//! node's name, `localhost`, `127.0.0.1` and any `--host`. Not for production: a real
//! deployment's certificates come from its own CA, and the CA key here sits beside them.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

#[derive(Debug, Args)]
pub struct CertArgs {
    /// Where to write ca.pem and ca.key, and <node>.pem and <node>.key for each node; must not
    /// hold a CA already.
    #[arg(long, default_value = "meridian-certs")]
    pub dir: PathBuf,
    /// A node to make a certificate for (repeat).
    #[arg(long = "node", required = true)]
    pub nodes: Vec<String>,
    /// Another DNS name or IP address every node certificate covers (repeat).
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// Days the node certificates are valid.
    #[arg(long, default_value_t = 365)]
    pub days: u64,
}

impl CertArgs {
    /// Writes the files; returns their paths.
    pub fn run(&self) -> anyhow::Result<Vec<PathBuf>> {
        for n in &self.nodes {
            meridian_crdt::validate_name("node", n)?;
        }
        let ca_pem = self.dir.join("ca.pem");
        anyhow::ensure!(
            !ca_pem.exists(),
            "{} already holds a CA; use another --dir",
            self.dir.display()
        );
        std::fs::create_dir_all(&self.dir)?;
        let ca = DevCa::new()?;
        let now = SystemTime::now();
        let until = now + Duration::from_secs(self.days * 86_400);
        let mut written = vec![];
        let mut write = |name: &str, text: &str, secret: bool| -> anyhow::Result<()> {
            let path = self.dir.join(name);
            write_file(&path, text, secret)?;
            written.push(path);
            Ok(())
        };
        write("ca.pem", &ca.cert_pem(), false)?;
        write("ca.key", &ca.key_pem(), true)?;
        for n in &self.nodes {
            let (cert, key) = ca.issue(n, &self.hosts, now - Duration::from_secs(60), until)?;
            write(&format!("{n}.pem"), &cert, false)?;
            write(&format!("{n}.key"), &key, true)?;
        }
        Ok(written)
    }
}

fn write_file(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if secret { 0o600 } else { 0o644 };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// A CA made on the spot.
pub struct DevCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevCa")
    }
}

impl DevCa {
    pub fn new() -> anyhow::Result<DevCa> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // a name of its own: verifiers find a certificate's issuer by name
        let tag: u32 = rand::random();
        p.distinguished_name.push(
            DnType::CommonName,
            format!("Meridian development CA {tag:08x}"),
        );
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        p.not_before = (now - Duration::from_secs(86_400)).into();
        p.not_after = (now + Duration::from_secs(10 * 365 * 86_400)).into();
        let key = KeyPair::generate()?;
        let cert = p.self_signed(&key)?;
        Ok(DevCa { cert, key })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate for `name` (plus `localhost`, `127.0.0.1` and `hosts`), for serving and
    /// as a client: (certificate PEM, key PEM).
    pub fn issue(
        &self,
        name: &str,
        hosts: &[String],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> anyhow::Result<(String, String)> {
        let mut names = vec![name.to_owned(), "localhost".into(), "127.0.0.1".into()];
        names.extend(hosts.iter().cloned());
        names.dedup();
        let mut p = CertificateParams::new(names)?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.not_before = not_before.into();
        p.not_after = not_after.into();
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_are_written_once_with_private_keys_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let args = CertArgs {
            dir: dir.path().join("c"),
            nodes: vec!["us".into(), "eu".into()],
            hosts: vec!["us.regions".into()],
            days: 30,
        };
        let files = args.run().unwrap();
        assert_eq!(files.len(), 6);
        let mode = |f: &str| {
            std::fs::metadata(dir.path().join("c").join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("ca.key"), 0o600);
        assert_eq!(mode("us.key"), 0o600);
        assert_eq!(mode("us.pem"), 0o644);
        // the pair loads as a node's TLS configuration, with the CA for peers
        let c = dir.path().join("c");
        meridian_net::tls::ServerTls::new(
            &c.join("us.pem"),
            &c.join("us.key"),
            Some(&c.join("ca.pem")),
        )
        .unwrap();
        // a second run does not overwrite the CA
        let err = args.run().unwrap_err().to_string();
        assert!(err.contains("already holds a CA"), "{err}");
        let err = CertArgs {
            nodes: vec!["a/b".into()],
            dir: dir.path().join("d"),
            ..args
        }
        .run()
        .unwrap_err()
        .to_string();
        assert!(err.contains("node"), "{err}");
    }
}
