//! TLS for `mqtts://` brokers: a rustls client config on the ring provider.
//!
//! Trust comes from `ca_file` when configured, otherwise from the system CA bundle (the
//! file `SSL_CERT_FILE` names, or the usual distribution paths). The ring provider is named
//! explicitly, so this works whether or not `main()` installed a process default.

use crate::tls::{TlsError, Trust};
use rumqttc::TlsConfiguration;
use std::path::Path;
use std::sync::Arc;

/// The rustls client config for a broker, trusting `ca_file` or the system roots.
pub fn client_config(ca_file: Option<&Path>) -> Result<TlsConfiguration, TlsError> {
    let trust = ca_file.map_or(Trust::System, |p| Trust::CaFile(p.into()));
    let config = crate::tls::client_config(&trust)?;
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
