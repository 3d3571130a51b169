//! `--web-config FILE`: the Prometheus exporters' web configuration file (exporter-toolkit's
//! YAML, <https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md>),
//! so that a fleet's existing TLS and basic-auth files work for procmon too.
//!
//! The whole file is checked, and its certificates, keys and password hashes are loaded,
//! before anything starts (and again on SIGHUP): a key that exporter-toolkit knows but procmon
//! does not implement is refused by name, never silently ignored, since ignoring
//! `client_allowed_sans` or `rate_limit` would leave an endpoint more open than its owner
//! believes.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::http::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::{auth::BasicAuth, tls};

/// Why a web config file was refused: the key (dotted path) and what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WebConfigError(String);

impl WebConfigError {
    pub fn key(key: &str, message: impl std::fmt::Display) -> Self {
        WebConfigError(format!("`{key}`: {message}"))
    }
}

/// The file as written. Keys exporter-toolkit knows that procmon does not implement are read
/// (as `Unsupported`) only to be refused by name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSchema {
    tls_server_config: Option<TlsSchema>,
    http_server_config: Option<HttpSchema>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    rate_limit: Option<Unsupported>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSchema {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    curve_preferences: Option<Vec<String>>,
    cert: Option<Unsupported>,
    key: Option<Unsupported>,
    client_ca: Option<Unsupported>,
    client_allowed_sans: Option<Unsupported>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSchema {
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// Any value: the key's presence is the error.
#[derive(Debug, Deserialize)]
struct Unsupported(#[allow(dead_code)] serde_norway::Value);

/// TLS protocol versions, by exporter-toolkit's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// exporter-toolkit's `client_auth_type` values that rustls can honour. `RequestClientCert`
/// and `RequireAnyClientCert` accept certificates nobody verified, which rustls (rightly)
/// offers no ready verifier for; they are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

/// The `tls_server_config` section, checked; paths are resolved against the config file's
/// directory, as exporter-toolkit does.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_auth: ClientAuth,
    pub client_ca_file: Option<PathBuf>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// TLS 1.2 suites allowed, by IANA name; `None` is the provider's defaults. TLS 1.3
    /// suites are not configurable (as in Go's crypto/tls).
    pub cipher_suites: Option<Vec<String>>,
    pub prefer_server_cipher_suites: bool,
    /// Key exchange groups, by Go's names (`X25519`, `CurveP256`, `CurveP384`).
    pub curve_preferences: Option<Vec<String>>,
}

/// A web config file, checked but not yet loaded (no file besides itself read).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WebConfig {
    pub tls: Option<TlsSettings>,
    pub basic_auth_users: BTreeMap<String, String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// The headers exporter-toolkit lets `http_server_config.headers` set (it refuses others, so
/// a file valid here is valid there).
const SETTABLE_HEADERS: [&str; 5] = [
    "Content-Security-Policy",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "X-XSS-Protection",
    "Strict-Transport-Security",
];

impl WebConfig {
    /// Parses and checks the file's text. `dir` is where relative paths start from.
    pub fn parse(text: &str, dir: &Path) -> Result<Self, WebConfigError> {
        // An empty file is a valid (plain, open) config, as in exporter-toolkit.
        let file: FileSchema = if text.trim().is_empty() {
            FileSchema::default()
        } else {
            // serde_norway's message names the key path and its line and column.
            serde_norway::from_str(text).map_err(|e| WebConfigError(one_line(&e.to_string())))?
        };
        if file.rate_limit.is_some() {
            return Err(unsupported("rate_limit"));
        }
        let tls = file
            .tls_server_config
            .map(|t| TlsSettings::check(t, dir))
            .transpose()?;
        let mut headers = Vec::new();
        if let Some(http) = file.http_server_config {
            if http.http2 == Some(true) {
                return Err(WebConfigError::key(
                    "http_server_config.http2",
                    "procmon serves HTTP/1.1 only (which Prometheus scrapes); remove the key or set it to false",
                ));
            }
            for (name, value) in http.headers.unwrap_or_default() {
                let key = format!("http_server_config.headers.{name}");
                let Some(allowed) = SETTABLE_HEADERS
                    .iter()
                    .find(|h| h.eq_ignore_ascii_case(&name))
                else {
                    return Err(WebConfigError::key(
                        &key,
                        format!(
                            "only these headers can be set: {}",
                            SETTABLE_HEADERS.join(", ")
                        ),
                    ));
                };
                let value = HeaderValue::from_str(&value)
                    .map_err(|_| WebConfigError::key(&key, "not a valid header value"))?;
                headers.push((HeaderName::from_static(allowed_lower(allowed)), value));
            }
        }
        let basic_auth_users = file.basic_auth_users.unwrap_or_default();
        for (user, hash) in &basic_auth_users {
            if user.contains(':') {
                return Err(WebConfigError::key(
                    &format!("basic_auth_users.{user}"),
                    "a user name cannot contain `:` (Basic credentials are user:password)",
                ));
            }
            BasicAuth::check_hash(hash)
                .map_err(|e| WebConfigError::key(&format!("basic_auth_users.{user}"), e))?;
        }
        Ok(WebConfig {
            tls,
            basic_auth_users,
            headers,
        })
    }

    /// Reads, checks and loads the file at `path`: certificates and keys are read and
    /// matched, so that a config that cannot serve is refused now, not at the first scrape.
    pub fn load(path: &Path) -> Result<Loaded, WebConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| WebConfigError(format!("cannot read it: {e}")))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        WebConfig::parse(&text, dir)?.into_loaded()
    }

    fn into_loaded(self) -> Result<Loaded, WebConfigError> {
        let tls = self
            .tls
            .as_ref()
            .map(tls::server_config)
            .transpose()?
            .map(tokio_rustls::TlsAcceptor::from);
        let auth = (!self.basic_auth_users.is_empty())
            .then(|| Arc::new(BasicAuth::new(self.basic_auth_users)));
        Ok(Loaded {
            tls,
            auth,
            headers: self.headers,
        })
    }
}

/// What one reading of the web config serves with: the TLS acceptor, the users, the extra
/// response headers. The default serves plain HTTP to anyone.
#[derive(Default)]
pub struct Loaded {
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub auth: Option<Arc<BasicAuth>>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl TlsSettings {
    fn check(t: TlsSchema, dir: &Path) -> Result<Self, WebConfigError> {
        for (present, key) in [
            (t.cert.is_some(), "cert"),
            (t.key.is_some(), "key"),
            (t.client_ca.is_some(), "client_ca"),
            (t.client_allowed_sans.is_some(), "client_allowed_sans"),
        ] {
            if present {
                return Err(unsupported(&format!("tls_server_config.{key}")));
            }
        }
        let required = |value: Option<PathBuf>, key: &str| {
            value.map(|p| dir.join(p)).ok_or_else(|| {
                WebConfigError::key(
                    &format!("tls_server_config.{key}"),
                    "missing: TLS needs both cert_file and key_file (PEM)",
                )
            })
        };
        let cert_file = required(t.cert_file, "cert_file")?;
        let key_file = required(t.key_file, "key_file")?;
        let client_auth = match t.client_auth_type.as_deref() {
            None | Some("NoClientCert") => ClientAuth::NoClientCert,
            Some("VerifyClientCertIfGiven") => ClientAuth::VerifyClientCertIfGiven,
            Some("RequireAndVerifyClientCert") => ClientAuth::RequireAndVerifyClientCert,
            Some(other @ ("RequestClientCert" | "RequireAnyClientCert")) => {
                return Err(WebConfigError::key(
                    "tls_server_config.client_auth_type",
                    format!("`{other}` accepts client certificates nobody verified and is not supported; use RequireAndVerifyClientCert or VerifyClientCertIfGiven with client_ca_file"),
                ))
            }
            Some(other) => {
                return Err(WebConfigError::key(
                    "tls_server_config.client_auth_type",
                    format!("`{other}` is not one of NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert"),
                ))
            }
        };
        let client_ca_file = t.client_ca_file.map(|p| dir.join(p));
        match (client_auth, &client_ca_file) {
            (ClientAuth::NoClientCert, Some(_)) => {
                return Err(WebConfigError::key(
                    "tls_server_config.client_ca_file",
                    "set, but client_auth_type is NoClientCert: set client_auth_type to RequireAndVerifyClientCert (or remove client_ca_file)",
                ))
            }
            (ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert, None) => {
                return Err(WebConfigError::key(
                    "tls_server_config.client_ca_file",
                    "missing: verifying client certificates needs the CA that signs them (PEM)",
                ))
            }
            _ => {}
        }
        let min_version = version(t.min_version.as_deref(), "min_version", TlsVersion::Tls12)?;
        let max_version = version(t.max_version.as_deref(), "max_version", TlsVersion::Tls13)?;
        if min_version > max_version {
            return Err(WebConfigError::key(
                "tls_server_config.min_version",
                "is above max_version",
            ));
        }
        Ok(TlsSettings {
            cert_file,
            key_file,
            client_auth,
            client_ca_file,
            min_version,
            max_version,
            cipher_suites: t.cipher_suites,
            prefer_server_cipher_suites: t.prefer_server_cipher_suites.unwrap_or(false),
            curve_preferences: t.curve_preferences,
        })
    }
}

fn version(
    value: Option<&str>,
    key: &str,
    default: TlsVersion,
) -> Result<TlsVersion, WebConfigError> {
    match value {
        None => Ok(default),
        Some("TLS12") => Ok(TlsVersion::Tls12),
        Some("TLS13") => Ok(TlsVersion::Tls13),
        Some(v @ ("TLS10" | "TLS11")) => Err(WebConfigError::key(
            &format!("tls_server_config.{key}"),
            format!("`{v}` is obsolete and not supported: use TLS12 or TLS13"),
        )),
        Some(v) => Err(WebConfigError::key(
            &format!("tls_server_config.{key}"),
            format!("`{v}` is not TLS12 or TLS13"),
        )),
    }
}

fn unsupported(key: &str) -> WebConfigError {
    WebConfigError::key(
        key,
        "is an exporter-toolkit setting that procmon does not support; remove it",
    )
}

fn allowed_lower(name: &'static str) -> &'static str {
    match name {
        "Content-Security-Policy" => "content-security-policy",
        "X-Frame-Options" => "x-frame-options",
        "X-Content-Type-Options" => "x-content-type-options",
        "X-XSS-Protection" => "x-xss-protection",
        _ => "strict-transport-security",
    }
}

/// Parser messages can span lines (a snippet of the file); the contract is one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WebConfig, String> {
        WebConfig::parse(text, Path::new("/etc/procmon")).map_err(|e| e.to_string())
    }

    /// A bcrypt hash (cost 4, so tests stay fast).
    fn hash() -> String {
        bcrypt::hash("secret", 4).unwrap()
    }

    #[test]
    fn exporter_toolkit_examples_parse() {
        let hash = hash();
        let c = parse(&format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: /abs/server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  \
             min_version: TLS13\n  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]\n  \
             curve_preferences: [X25519]\n\
             http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n\
             basic_auth_users:\n  alice: {hash}\n"
        ))
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert_file, Path::new("/etc/procmon/server.crt"));
        assert_eq!(tls.key_file, Path::new("/abs/server.key"));
        assert_eq!(tls.client_auth, ClientAuth::RequireAndVerifyClientCert);
        assert_eq!(
            tls.client_ca_file.as_deref(),
            Some(Path::new("/etc/procmon/ca.crt"))
        );
        assert_eq!(
            (tls.min_version, tls.max_version),
            (TlsVersion::Tls13, TlsVersion::Tls13)
        );
        assert_eq!(c.basic_auth_users["alice"], hash);
        assert_eq!(c.headers[0].0.as_str(), "x-frame-options");
        assert_eq!(parse("").unwrap(), WebConfig::default());
        let plain = parse(&format!("basic_auth_users:\n  bob: '{hash}'\n")).unwrap();
        assert!(plain.tls.is_none());
    }

    #[test]
    fn bad_files_name_the_key() {
        for (text, needle) in [
            ("bogus: 1\n", "unknown field `bogus`"),
            ("tls_server_config:\n  cert_fille: a\n", "tls_server_config: unknown field `cert_fille`"),
            ("tls_server_config:\n  key_file: k\n", "`tls_server_config.cert_file`: missing"),
            ("tls_server_config:\n  cert_file: c\n", "`tls_server_config.key_file`: missing"),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS11\n",
                "`tls_server_config.min_version`: `TLS11` is obsolete",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  max_version: SSL3\n",
                "`tls_server_config.max_version`: `SSL3`",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS13\n  max_version: TLS12\n",
                "`tls_server_config.min_version`: is above max_version",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireAnyClientCert\n",
                "`tls_server_config.client_auth_type`: `RequireAnyClientCert`",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: Sometimes\n",
                "`tls_server_config.client_auth_type`: `Sometimes`",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireAndVerifyClientCert\n",
                "`tls_server_config.client_ca_file`: missing",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_ca_file: ca\n",
                "`tls_server_config.client_ca_file`: set, but client_auth_type is NoClientCert",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_allowed_sans: [a]\n",
                "`tls_server_config.client_allowed_sans`: is an exporter-toolkit setting",
            ),
            ("rate_limit:\n  interval: 1s\n", "`rate_limit`: is an exporter-toolkit setting"),
            ("http_server_config:\n  http2: true\n", "`http_server_config.http2`"),
            (
                "http_server_config:\n  headers:\n    Server: x\n",
                "`http_server_config.headers.Server`: only these headers",
            ),
            ("basic_auth_users:\n  alice: secret\n", "`basic_auth_users.alice`: not a bcrypt hash"),
            (
                "basic_auth_users:\n  alice: $2b$04$short\n",
                "`basic_auth_users.alice`: not a bcrypt hash",
            ),
            ("basic_auth_users: [alice]\n", "basic_auth_users: invalid type"),
            ("basic_auth_users:\n  alice: 'x\n", "quoted scalar"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(needle), "{text:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{text:?}: {err}");
        }
    }
}
