//! TLS to PostgreSQL, as libpq's `sslmode` and `sslrootcert` describe it,
//! through rustls: managed PostgreSQL services require TLS, and a network
//! between livedesk and its database may not be trusted.
//!
//! tokio-postgres understands `sslmode=disable|prefer|require` only and
//! never checks a certificate; this module reads `verify-ca`, `verify-full`
//! and `sslrootcert` from `DATABASE_URL` itself and builds the rustls
//! configuration that checks what they ask for:
//!
//! | sslmode | encrypted | certificate checked against `sslrootcert` | host name checked |
//! | --- | --- | --- | --- |
//! | `disable` | no | — | — |
//! | `allow`, `prefer` (default) | if the server offers it | no | no |
//! | `require` | yes | only if `sslrootcert` is given (as libpq) | no |
//! | `verify-ca` | yes | yes | no |
//! | `verify-full` | yes | yes | yes |

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::Socket;

use super::DbError;

/// What opens TLS sessions for every connection to the database (pool,
/// LISTEN, tools); cheap to clone.
#[derive(Clone)]
pub struct Connector(tokio_postgres_rustls::MakeRustlsConnect, CertCheck);

/// What is checked of the server's certificate, for connections that do not
/// go through this connector (the logical bus's replication connection,
/// `realtime::stream`), so they check the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertCheck {
    /// Nothing (`prefer`, `require` without `sslrootcert`, unix sockets).
    Nothing,
    /// Issued by this PEM file's authority (`verify-ca`, `require` with it).
    Issuer(std::path::PathBuf),
    /// And for the host name (`verify-full`).
    IssuerAndName(std::path::PathBuf),
}

impl Connector {
    fn new(config: ClientConfig, check: CertCheck) -> Self {
        Connector(tokio_postgres_rustls::MakeRustlsConnect::new(config), check)
    }

    /// What this connector checks of the server's certificate.
    pub fn check(&self) -> &CertCheck {
        &self.1
    }
}

/// tokio-postgres asks for a TLS session for every host, unix sockets
/// included (with their path, or nothing, as the name), though it never
/// negotiates TLS on them: such a name is not a DNS name, so it is replaced
/// by one that is, for a session that will not be used.
impl MakeTlsConnect<Socket> for Connector {
    type Stream = <tokio_postgres_rustls::MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;
    type TlsConnect =
        <tokio_postgres_rustls::MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect;
    type Error = <tokio_postgres_rustls::MakeRustlsConnect as MakeTlsConnect<Socket>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        let domain = if ServerName::try_from(domain).is_ok() {
            domain
        } else {
            "localhost"
        };
        <tokio_postgres_rustls::MakeRustlsConnect as MakeTlsConnect<Socket>>::make_tls_connect(
            &mut self.0,
            domain,
        )
    }
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Issuer,
    IssuerAndName,
}

/// Parse a `DATABASE_URL` (URL or `key=value` form) with libpq's TLS
/// parameters; the settings tokio-postgres takes, and the connector.
pub fn parse(url: &str) -> Result<(tokio_postgres::Config, Connector), DbError> {
    let (rest, sslmode, rootcert) = take_tls_params(url);
    let mut config: tokio_postgres::Config = rest.parse().map_err(DbError::Url)?;
    let check = match (sslmode.as_deref(), rootcert.is_some()) {
        (None | Some("prefer") | Some("allow"), _) => {
            config.ssl_mode(SslMode::Prefer);
            Check::Nothing
        }
        (Some("disable"), _) => {
            config.ssl_mode(SslMode::Disable);
            Check::Nothing
        }
        (Some("require"), false) => {
            config.ssl_mode(SslMode::Require);
            Check::Nothing
        }
        (Some("require"), true) | (Some("verify-ca"), true) => {
            config.ssl_mode(SslMode::Require);
            Check::Issuer
        }
        (Some("verify-full"), true) => {
            config.ssl_mode(SslMode::Require);
            Check::IssuerAndName
        }
        (Some(mode @ ("verify-ca" | "verify-full")), false) => {
            return Err(DbError::Config(format!(
                "sslmode={mode} needs sslrootcert=<file> in DATABASE_URL: the PEM file of the \
                 certificate authority that signed the server's certificate"
            )))
        }
        (Some(other), _) => {
            return Err(DbError::Config(format!(
            "unknown sslmode {other:?} (disable, allow, prefer, require, verify-ca, verify-full)"
        )))
        }
    };
    let connector = match (check, rootcert) {
        (Check::Nothing, _) | (_, None) => unchecked(),
        (check, Some(path)) => checked(&path, check == Check::IssuerAndName)?,
    };
    Ok((config, connector))
}

/// A connector that encrypts without checking the certificate: libpq's
/// `prefer` and `require`. Also what connections without a URL use (unix
/// sockets never negotiate TLS).
pub fn unchecked() -> Connector {
    let provider = provider();
    let verifier = Arc::new(AcceptAny(provider.clone()));
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        // A constant: ring supports TLS 1.2 and 1.3 (not input, not I/O).
        .expect("the ring provider supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Connector::new(config, CertCheck::Nothing)
}

fn checked(rootcert: &str, check_name: bool) -> Result<Connector, DbError> {
    let bad = |why: Box<dyn std::error::Error + Send + Sync>| DbError::RootCert {
        path: rootcert.to_string(),
        source: why,
    };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(rootcert)
        .map_err(|e| bad(e.into()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.into()))?;
    if certs.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    for cert in certs {
        roots.add(cert).map_err(|e| bad(e.into()))?;
    }
    let provider = provider();
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| bad(e.into()))?;
    let verifier: Arc<dyn ServerCertVerifier> = if check_name {
        webpki
    } else {
        Arc::new(IssuerOnly(webpki))
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.into()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let path = std::path::PathBuf::from(rootcert);
    let check = if check_name {
        CertCheck::IssuerAndName(path)
    } else {
        CertCheck::Issuer(path)
    };
    Ok(Connector::new(config, check))
}

/// `sslmode` and `sslrootcert` out of a connection string, and the rest.
fn take_tls_params(url: &str) -> (String, Option<String>, Option<String>) {
    let (mut sslmode, mut rootcert) = (None, None);
    let mut take = |key: &str, value: &str| match key {
        "sslmode" => {
            sslmode = Some(value.to_string());
            true
        }
        "sslrootcert" => {
            rootcert = Some(value.to_string());
            true
        }
        _ => false,
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| {
                        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                        !take(key, &percent_decode(value))
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_string(),
        }
    } else {
        url.split_whitespace()
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                !take(key.trim(), value.trim().trim_matches('\''))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    (rest, sslmode, rootcert)
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(byte) = value
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// libpq's `prefer`/`require` without a root certificate: encrypt, trust
/// whoever answers (signatures are still verified, so the session key is
/// the peer's).
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the root certificate; the name in
/// the certificate is not compared with the host.
#[derive(Debug)]
struct IssuerOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for IssuerOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                ..
            })) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::take_tls_params;

    #[test]
    fn tls_parameters_come_out_of_both_forms() {
        let (rest, mode, root) = take_tls_params(
            "postgresql://u:p@db.example.com:5432/livedesk?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
        );
        assert_eq!(
            rest,
            "postgresql://u:p@db.example.com:5432/livedesk?application_name=x"
        );
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let (rest, mode, root) =
            take_tls_params("host=db port=5432 sslmode=require sslrootcert=/ca.pem user=u");
        assert_eq!(rest, "host=db port=5432 user=u");
        assert_eq!(mode.as_deref(), Some("require"));
        assert_eq!(root.as_deref(), Some("/ca.pem"));
    }
}
