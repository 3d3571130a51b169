//! The rustls server configuration a web config's `tls_server_config` describes: its
//! certificate and key (read and matched here, so a wrong pair stops the start, not the
//! first scrape), client-certificate verification, versions, suites and groups.

use std::{path::Path, sync::Arc};

use rustls::{
    crypto::{ring as provider, CryptoProvider},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig, SupportedProtocolVersion,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

use super::web_config::{ClientAuth, TlsSettings, TlsVersion, WebConfigError};

pub fn server_config(t: &TlsSettings) -> Result<Arc<ServerConfig>, WebConfigError> {
    let certs = read_certs(&t.cert_file, "tls_server_config.cert_file")?;
    let key = PrivateKeyDer::from_pem_file(&t.key_file).map_err(|e| {
        WebConfigError::key(
            "tls_server_config.key_file",
            pem_error(&t.key_file, "private key", e),
        )
    })?;
    let provider = Arc::new(crypto_provider(t)?);
    let versions: Vec<&'static SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (t.min_version..=t.max_version).contains(v))
    .map(|(_, v)| v)
    .collect();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| {
            WebConfigError::key(
                "tls_server_config.cipher_suites",
                format!("no suite left for the versions allowed: {e}"),
            )
        })?;
    let builder = match (t.client_auth, &t.client_ca_file) {
        (ClientAuth::NoClientCert, _) | (_, None) => builder.with_no_client_auth(),
        (auth, Some(ca_file)) => {
            let mut roots = RootCertStore::empty();
            for ca in read_certs(ca_file, "tls_server_config.client_ca_file")? {
                roots.add(ca).map_err(|e| {
                    WebConfigError::key(
                        "tls_server_config.client_ca_file",
                        format!("{}: not a usable CA certificate: {e}", ca_file.display()),
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth == ClientAuth::VerifyClientCertIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| WebConfigError::key("tls_server_config.client_ca_file", e))?,
            )
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => WebConfigError::key(
            "tls_server_config.key_file",
            format!(
                "{} is not the key of the certificate in {}",
                t.key_file.display(),
                t.cert_file.display()
            ),
        ),
        e => WebConfigError::key("tls_server_config.key_file", e),
    })?;
    config.ignore_client_order = t.prefer_server_cipher_suites;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// ring's provider, narrowed to the configured TLS 1.2 suites and key exchange groups.
fn crypto_provider(t: &TlsSettings) -> Result<CryptoProvider, WebConfigError> {
    let mut p = provider::default_provider();
    if let Some(names) = &t.cipher_suites {
        let mut kept = Vec::new();
        for name in names {
            // Go (and so exporter-toolkit) also knows the ChaCha20 suites without `_SHA256`.
            let found = p.cipher_suites.iter().find(|s| {
                let iana = format!("{:?}", s.suite());
                s.version() == &rustls::version::TLS12
                    && (iana == *name || iana == format!("{name}_SHA256"))
            });
            match found {
                Some(s) => kept.push(*s),
                None => {
                    return Err(WebConfigError::key(
                        "tls_server_config.cipher_suites",
                        format!(
                            "`{name}` is not a TLS 1.2 suite procmon offers ({}); TLS 1.3 suites are not configurable",
                            tls12_suite_names(&p).join(", ")
                        ),
                    ))
                }
            }
        }
        p.cipher_suites
            .retain(|s| s.version() == &rustls::version::TLS13 || kept.contains(s));
    }
    if let Some(names) = &t.curve_preferences {
        let mut groups = Vec::new();
        for name in names {
            groups.push(match name.as_str() {
                "X25519" => provider::kx_group::X25519,
                "CurveP256" => provider::kx_group::SECP256R1,
                "CurveP384" => provider::kx_group::SECP384R1,
                other => {
                    return Err(WebConfigError::key(
                        "tls_server_config.curve_preferences",
                        format!("`{other}` is not one of X25519, CurveP256, CurveP384"),
                    ))
                }
            });
        }
        p.kx_groups = groups;
    }
    Ok(p)
}

fn tls12_suite_names(p: &CryptoProvider) -> Vec<String> {
    p.cipher_suites
        .iter()
        .filter(|s| s.version() == &rustls::version::TLS12)
        .map(|s| format!("{:?}", s.suite()))
        .collect()
}

fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, WebConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| WebConfigError::key(key, pem_error(path, "certificate", e)))?;
    if certs.is_empty() {
        return Err(WebConfigError::key(
            key,
            format!("{}: no PEM certificate in it", path.display()),
        ));
    }
    Ok(certs)
}

fn pem_error(path: &Path, what: &str, e: rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::Io(e) => format!("cannot read {}: {e}", path.display()),
        Error::NoItemsFound => format!("{}: no PEM {what} in it", path.display()),
        e => format!("{}: not a PEM {what}: {e:?}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(suites: Option<&[&str]>, curves: Option<&[&str]>) -> TlsSettings {
        let names = |l: Option<&[&str]>| l.map(|l| l.iter().map(|s| s.to_string()).collect());
        TlsSettings {
            cert_file: "c".into(),
            key_file: "k".into(),
            client_auth: ClientAuth::NoClientCert,
            client_ca_file: None,
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            cipher_suites: names(suites),
            prefer_server_cipher_suites: false,
            curve_preferences: names(curves),
        }
    }

    #[test]
    fn suites_and_curves_by_exporter_toolkit_names() {
        let p = crypto_provider(&settings(
            Some(&[
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                // Go's name for it, without `_SHA256`.
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
            ]),
            Some(&["CurveP256", "X25519"]),
        ))
        .unwrap();
        assert_eq!(
            tls12_suite_names(&p),
            [
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"
            ]
        );
        // TLS 1.3 suites are kept whatever the list says.
        assert!(p
            .cipher_suites
            .iter()
            .any(|s| s.version() == &rustls::version::TLS13));
        assert_eq!(
            p.kx_groups.iter().map(|g| g.name()).collect::<Vec<_>>(),
            [rustls::NamedGroup::secp256r1, rustls::NamedGroup::X25519]
        );
        // The defaults stay the provider's.
        let all = crypto_provider(&settings(None, None)).unwrap();
        assert_eq!(
            all.cipher_suites.len(),
            provider::default_provider().cipher_suites.len()
        );
        for (suites, curves, needle) in [
            (
                Some(&["TLS_RSA_WITH_RC4_128_SHA"][..]),
                None,
                "`tls_server_config.cipher_suites`: `TLS_RSA_WITH_RC4_128_SHA`",
            ),
            (
                Some(&["TLS13_AES_128_GCM_SHA256"][..]),
                None,
                "TLS 1.3 suites are not configurable",
            ),
            (
                None,
                Some(&["CurveP521"][..]),
                "`tls_server_config.curve_preferences`: `CurveP521`",
            ),
        ] {
            let err = crypto_provider(&settings(suites, curves))
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
