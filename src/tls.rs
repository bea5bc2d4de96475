//! TLS pieces shared by the technician listener, `fieldgate tail`, `fieldgate tls` and the
//! MQTT source: PEM loading, the listener's rustls server config, a board's self-signed
//! certificate, and client configs that trust a CA file or one pinned certificate.
//!
//! A board on a vehicle's Wi-Fi has no public name, so no public CA can vouch for it: the
//! board makes its own certificate (`fieldgate tls self-signed`) and prints its SHA-256
//! fingerprint; a technician trusts it once, by that fingerprint (a browser exception, or
//! `--pin` for `tail` and the Node client) or by installing the certificate as a CA file.
//! Everything uses the ring provider by name, whether or not `main()` installed a default.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where distributions keep the system CA bundle.
const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Why a TLS config or certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate file holds no usable certificate.
    #[error("no usable certificate in {0}")]
    NoCerts(PathBuf),
    /// A key file holds no usable private key.
    #[error("no usable private key (PEM, PKCS#8/SEC1/PKCS#1) in {0}")]
    NoKey(PathBuf),
    /// No CA file and no system bundle was found.
    #[error("no ca_file configured and no system CA bundle found (set ca_file or SSL_CERT_FILE)")]
    NoSystemRoots,
    /// A pinned fingerprint is not 32 bytes of hex.
    #[error("expected a SHA-256 fingerprint (64 hex digits, colons allowed), got {0:?}")]
    BadPin(String),
    /// Certificate generation failed.
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every PEM certificate in `path`.
pub fn certs_from_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCerts(path.to_path_buf()));
    }
    Ok(certs)
}

/// Trust anchors from `ca_file`, or from the system bundle when there is none.
pub fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let mut add = |path: &Path| -> Result<usize, TlsError> {
        Ok(roots.add_parsable_certificates(certs_from_pem(path)?).0)
    };
    match ca_file {
        Some(path) => {
            if add(path)? == 0 {
                return Err(TlsError::NoCerts(path.to_path_buf()));
            }
        }
        None => {
            let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
            let found = env
                .into_iter()
                .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
                .filter(|p| p.is_file())
                .find_map(|p| add(&p).ok().filter(|n| *n > 0));
            if found.is_none() {
                return Err(TlsError::NoSystemRoots);
            }
        }
    }
    Ok(roots)
}

/// The listener's server config: the chain in `cert` (PEM, leaf first) and the key in
/// `key`; HTTP/1.1 only (WebSocket upgrades are HTTP/1.1).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certs_from_pem(cert)?;
    let key_der =
        PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|_| TlsError::NoKey(key.into()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A certificate's SHA-256 fingerprint as browsers show it: `AB:CD:...` (32 bytes).
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(cert.as_ref());
    let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// Parse a pinned fingerprint: 64 hex digits, colons and a `sha256:` prefix allowed.
pub fn parse_pin(pin: &str) -> Result<[u8; 32], TlsError> {
    let bad = || TlsError::BadPin(pin.chars().take(120).collect());
    let body = pin.trim();
    let body = body
        .strip_prefix("sha256:")
        .or_else(|| body.strip_prefix("SHA256:"))
        .unwrap_or(body);
    let hex: String = body.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// A board's self-signed certificate and its key, as PEM.
pub struct SelfSigned {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The private key (PEM, PKCS#8).
    pub key_pem: String,
    /// Its SHA-256 fingerprint, `AB:CD:...`.
    pub fingerprint: String,
}

/// A self-signed ECDSA P-256 server certificate for `hosts` (DNS names or IP addresses),
/// valid from yesterday for `days`.
pub fn self_signed(hosts: &[String], days: u32) -> Result<SelfSigned, TlsError> {
    let mut params = rcgen::CertificateParams::new(hosts.to_vec())?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(
        rcgen::DnType::CommonName,
        hosts.first().map(String::as_str).unwrap_or("fieldgate"),
    );
    dn.push(rcgen::DnType::OrganizationName, "fieldgate gateway");
    params.distinguished_name = dn;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(SelfSigned {
        fingerprint: fingerprint(cert.der()),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// How a client decides to trust the gateway's certificate.
#[derive(Debug, Clone, Default)]
pub enum Trust {
    /// The system CA bundle.
    #[default]
    System,
    /// The CAs (or the board certificate itself) in this PEM file.
    CaFile(PathBuf),
    /// Exactly the certificate with this SHA-256 fingerprint, whatever signed it.
    Pinned([u8; 32]),
}

/// A client config for `trust`, on the ring provider.
pub fn client_config(trust: &Trust) -> Result<ClientConfig, TlsError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    Ok(match trust {
        Trust::System => builder.with_root_certificates(roots(None)?),
        Trust::CaFile(path) => builder.with_root_certificates(roots(Some(path))?),
        Trust::Pinned(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                pin: *pin,
                provider: provider(),
            })),
    }
    .with_no_client_auth())
}

/// A client stream to the gateway: TCP or TLS.
pub trait ClientIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> ClientIo for T {}

/// A WebSocket client connection (`ws://` or `wss://`).
pub type ClientWs = tokio_tungstenite::WebSocketStream<Box<dyn ClientIo>>;

/// Open a WebSocket to the gateway: `ws://` over TCP, `wss://` over TLS trusting `trust`.
/// A certificate the client does not trust ends the handshake before anything (the key
/// included) is sent; [`is_untrusted`] tells that error apart from a network one.
pub async fn connect_ws(
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
    trust: &Trust,
) -> Result<ClientWs, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::error::{Error, UrlError};
    let uri = req.uri();
    let secure = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        _ => return Err(Error::Url(UrlError::UnsupportedUrlScheme)),
    };
    let host = uri
        .host()
        .ok_or(Error::Url(UrlError::NoHostName))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn ClientIo> = if secure {
        let config = client_config(trust).map_err(std::io::Error::other)?;
        let name =
            ServerName::try_from(host.clone()).map_err(|_| Error::Url(UrlError::NoHostName))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    Ok(tokio_tungstenite::client_async(req, io).await?.0)
}

/// Whether a [`connect_ws`] error is the gateway's certificate being refused (not worth
/// retrying: a pin or CA file that does not match will not match next time either).
pub fn is_untrusted(e: &tokio_tungstenite::tungstenite::Error) -> bool {
    let tokio_tungstenite::tungstenite::Error::Io(io) = e else {
        return false;
    };
    io.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)))
}

/// Accepts exactly one certificate, by fingerprint (the handshake signature is still
/// verified against it, so only the holder of its key passes).
#[derive(Debug)]
struct Pinned {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Sha256::digest(end_entity.as_ref()).as_slice() == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_in_the_forms_people_paste() {
        let s = self_signed(&["gw.local".into(), "192.168.4.1".into()], 30).expect("cert");
        let a = parse_pin(&s.fingerprint).expect("colons");
        let b = parse_pin(&format!(
            "sha256:{}",
            s.fingerprint.replace(':', "").to_lowercase()
        ))
        .expect("prefix, lower case");
        assert_eq!(a, b);
        for bad in ["", "AB:CD", &"x".repeat(64), &"é".repeat(32)] {
            assert!(parse_pin(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_self_signed_pair_loads_as_a_server_config_and_a_ca_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = self_signed(&["127.0.0.1".into()], 1).expect("cert");
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, &s.cert_pem).expect("write");
        std::fs::write(&key, &s.key_pem).expect("write");
        server_config(&cert, &key).expect("server config");
        assert_eq!(
            fingerprint(&certs_from_pem(&cert).expect("pem")[0]),
            s.fingerprint
        );
        client_config(&Trust::CaFile(cert.clone())).expect("the cert as a CA file");
        assert!(matches!(
            server_config(&cert, &cert),
            Err(TlsError::NoKey(_))
        ));
        assert!(matches!(
            server_config(&key, &key),
            Err(TlsError::NoCerts(_))
        ));
    }
}
