//! TLS for `mqtts://` brokers: a rustls client config on the ring provider.
//!
//! Trust comes from `ca_file` when configured, otherwise from the system CA bundle (the
//! file `SSL_CERT_FILE` names, or the usual distribution paths). The ring provider is named
//! explicitly, so this works whether or not `main()` installed a process default.

use rumqttc::TlsConfiguration;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where distributions keep the system CA bundle.
const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Why no TLS config could be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read.
    #[error("cannot read CA file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CA file holds no usable certificate.
    #[error("no usable CA certificate in {0}")]
    NoCerts(PathBuf),
    /// No `ca_file` and no system bundle was found.
    #[error("no ca_file configured and no system CA bundle found (set ca_file or SSL_CERT_FILE)")]
    NoSystemRoots,
    /// rustls refused the configuration.
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Add every PEM certificate in `path` to `roots`; returns how many were accepted.
fn add_pem_file(roots: &mut RootCertStore, path: &Path) -> Result<usize, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    Ok(added)
}

/// The rustls client config for a broker, trusting `ca_file` or the system roots.
pub fn client_config(ca_file: Option<&Path>) -> Result<TlsConfiguration, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            if add_pem_file(&mut roots, path)? == 0 {
                return Err(TlsError::NoCerts(path.to_path_buf()));
            }
        }
        None => {
            let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
            let found = env
                .into_iter()
                .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
                .filter(|p| p.is_file())
                .find_map(|p| add_pem_file(&mut roots, &p).ok().filter(|n| *n > 0));
            if found.is_none() {
                return Err(TlsError::NoSystemRoots);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_ca_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.pem");
        assert!(matches!(
            client_config(Some(&missing)),
            Err(TlsError::Read { .. })
        ));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        assert!(matches!(
            client_config(Some(&empty)),
            Err(TlsError::NoCerts(_))
        ));
    }
}
