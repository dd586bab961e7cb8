//! The trust every outgoing TLS connection uses (venue websockets, REST, history sockets):
//! the compiled-in web roots, plus the certificates of `[connection] ca_file` (a private CA,
//! a TLS-inspecting proxy, a test venue). Never the roots alone a user cannot extend.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::config::ConfigError;

/// One client configuration for the run: built once at start-up, shared by every connection.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        for cert in read_certs(path)? {
            roots.add(cert).map_err(|e| {
                ConfigError::new(
                    "connection.ca_file",
                    format!("{}: not a usable CA certificate: {e}", path.display()),
                )
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new("connection.ca_file", format!("TLS set-up: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The PEM certificates in a file: at least one, every block readable.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let err = |m: String| ConfigError::new("connection.ca_file", m);
    let bytes =
        std::fs::read(path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("{}: not PEM certificates: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

/// The websocket connector over that trust (plain `ws://` URLs stay plain).
pub fn connector(tls: &Arc<rustls::ClientConfig>) -> tokio_tungstenite::Connector {
    tokio_tungstenite::Connector::Rustls(tls.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = client_config(Some(&missing)).unwrap_err();
        assert_eq!(e.key, "connection.ca_file");
        assert!(e.message.contains("cannot read"), "{}", e.message);
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(Some(&empty)).unwrap_err();
        assert!(
            e.message.contains("holds no PEM certificate"),
            "{}",
            e.message
        );
        let bad = dir.path().join("bad.pem");
        std::fs::write(
            &bad,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = client_config(Some(&bad)).unwrap_err();
        assert_eq!(e.key, "connection.ca_file");
    }

    #[test]
    fn no_ca_file_is_the_built_in_roots() {
        client_config(None).unwrap();
    }
}
