//! Files for TLS to Redis and RabbitMQ: a private CA (`O365_REDIS_CA_PATH`,
//! `O365_AMQP_CA_PATH`) and RabbitMQ's client certificate (`O365_AMQP_CLIENT_CERT_PATH`,
//! `O365_AMQP_CLIENT_KEY_PATH`). Each file is read and checked at start, so that a wrong path or
//! a file that is not PEM is a configuration error naming its variable (exit 2), not a TLS
//! failure at the first connection. docs/OPERATIONS.md, "Managed Redis and RabbitMQ (TLS)".

use super::parse::Parser;
use crate::domain::secret::Secret;
use openssl::pkey::PKey;
use openssl::x509::X509;
use std::fmt;
use std::path::PathBuf;

/// A PEM file of certificates read at start: where it came from (for messages and `check`) and
/// what it holds.
#[derive(Clone)]
pub struct PemFile {
    pub path: PathBuf,
    pub pem: Vec<u8>,
}

impl fmt::Debug for PemFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemFile").field("path", &self.path).finish()
    }
}

/// A client certificate (PEM, leaf first) and its private key (PKCS#8 PEM; the key is secret).
#[derive(Clone, Debug)]
pub struct ClientIdentity {
    pub cert: PemFile,
    pub key_path: PathBuf,
    pub key_pem: Secret<Vec<u8>>,
}

/// The trimmed value of an optional path variable; unset or blank is `None`.
fn path(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// `O365_{var}`: a readable file holding one or more PEM certificates, or a recorded problem.
pub(super) fn ca_file(p: &mut Parser, var: &str, v: Option<String>) -> Option<PemFile> {
    let path = path(v)?;
    let pem = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            p.fail(var, format!("cannot read '{path}': {e}"));
            return None;
        }
    };
    match X509::stack_from_pem(&pem) {
        Ok(certs) if !certs.is_empty() => Some(PemFile {
            path: path.into(),
            pem,
        }),
        _ => {
            p.fail(
                var,
                format!("'{path}' holds no PEM certificate (expected the CA certificate, -----BEGIN CERTIFICATE-----)"),
            );
            None
        }
    }
}

/// `O365_{cert_var}` and `O365_{key_var}`: both or neither; the key must belong to the
/// certificate.
pub(super) fn client_identity(
    p: &mut Parser,
    (cert_var, cert): (&str, Option<String>),
    (key_var, key): (&str, Option<String>),
) -> Option<ClientIdentity> {
    let (cert_path, key_path) = match (path(cert), path(key)) {
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => {
            p.fail(key_var, format!("is required when O365_{cert_var} is set"));
            return None;
        }
        (None, Some(_)) => {
            p.fail(cert_var, format!("is required when O365_{key_var} is set"));
            return None;
        }
        (None, None) => return None,
    };
    let cert_pem = std::fs::read(&cert_path)
        .map_err(|e| p.fail(cert_var, format!("cannot read '{cert_path}': {e}")))
        .ok();
    let key_bytes = std::fs::read(&key_path)
        .map_err(|e| p.fail(key_var, format!("cannot read '{key_path}': {e}")))
        .ok();
    let cert = cert_pem.as_deref().and_then(|pem| {
        X509::from_pem(pem)
            .map_err(|_| p.fail(cert_var, format!("'{cert_path}' is not a PEM certificate")))
            .ok()
    });
    let key = key_bytes.as_deref().and_then(|pem| {
        PKey::private_key_from_pem(pem)
            .map_err(|_| {
                p.fail(
                    key_var,
                    format!("'{key_path}' is not an unencrypted PEM private key"),
                )
            })
            .ok()
    });
    let (cert, key, cert_pem) = (cert?, key?, cert_pem?);
    let belongs = cert.public_key().is_ok_and(|k| k.public_eq(&key));
    if !belongs {
        p.fail(
            key_var,
            format!("the private key does not belong to the certificate in O365_{cert_var}"),
        );
        return None;
    }
    // rustls reads PKCS#1, SEC1 and PKCS#8 PEM; one form is enough to think about.
    let key_pem = key
        .private_key_to_pem_pkcs8()
        .map_err(|_| p.fail(key_var, "cannot re-encode the private key as PKCS#8"))
        .ok()?;
    Some(ClientIdentity {
        cert: PemFile {
            path: cert_path.into(),
            pem: cert_pem,
        },
        key_path: key_path.into(),
        key_pem: Secret::new(key_pem),
    })
}

/// Whether a connection error is the TLS layer refusing (an unknown issuer, a name mismatch, a
/// handshake alert) rather than the network.
pub fn is_tls_failure(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    ["certificate", "tls", "handshake", "alert", "ssl"]
        .iter()
        .any(|w| e.contains(w))
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;
    use openssl::asn1::Asn1Time;
    use openssl::hash::MessageDigest;
    use openssl::pkey::{PKey, Private};
    use openssl::rsa::Rsa;
    use openssl::x509::{X509Builder, X509NameBuilder};
    use std::path::PathBuf;

    fn base() -> Vec<(String, String)> {
        [
            ("O365_CLIENT_ID", "a6099727-6b7b-482c-b509-1df309acc563"),
            ("O365_CLIENT_SECRET", "s3cret-value-for-tests"),
            ("O365_WEBHOOK_AUTH_ID", "0123456789abcdef0123"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn with(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v = base();
        v.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        v
    }

    fn errors(vars: Vec<(String, String)>) -> Vec<String> {
        match Settings::from_vars(vars) {
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        }
    }

    /// A directory with `a.crt`/`a.key` and `b.crt`/`b.key`: two unrelated self-signed pairs.
    fn pairs() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("o365-tls-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["a", "b"] {
            let key: PKey<Private> = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
            let mut n = X509NameBuilder::new().unwrap();
            n.append_entry_by_text("CN", name).unwrap();
            let n = n.build();
            let mut b = X509Builder::new().unwrap();
            b.set_version(2).unwrap();
            b.set_subject_name(&n).unwrap();
            b.set_issuer_name(&n).unwrap();
            b.set_pubkey(&key).unwrap();
            b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
                .unwrap();
            b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
                .unwrap();
            b.sign(&key, MessageDigest::sha256()).unwrap();
            std::fs::write(dir.join(format!("{name}.crt")), b.build().to_pem().unwrap()).unwrap();
            std::fs::write(
                dir.join(format!("{name}.key")),
                key.rsa().unwrap().private_key_to_pem().unwrap(),
            )
            .unwrap();
        }
        dir
    }

    fn p(dir: &std::path::Path, file: &str) -> String {
        dir.join(file).display().to_string()
    }

    #[test]
    fn private_cas_and_a_client_certificate_are_read_at_start() {
        let d = pairs();
        let s = Settings::from_vars(with(&[
            ("O365_REDIS_URL", "rediss://user:pw@redis.example.com:6380"),
            ("O365_REDIS_CA_PATH", &p(&d, "a.crt")),
            ("O365_AMQP_URL", "amqps://u:pw@mq.example.com:5671/%2f"),
            ("O365_AMQP_CA_PATH", &p(&d, "a.crt")),
            ("O365_AMQP_CLIENT_CERT_PATH", &p(&d, "b.crt")),
            ("O365_AMQP_CLIENT_KEY_PATH", &p(&d, "b.key")),
        ]))
        .unwrap();
        assert_eq!(s.redis.ca.as_ref().unwrap().path, d.join("a.crt"));
        assert_eq!(s.amqp_ca.as_ref().unwrap().path, d.join("a.crt"));
        let client = s.amqp_client.as_ref().unwrap();
        assert!(String::from_utf8_lossy(client.key_pem.expose()).contains("BEGIN PRIVATE KEY"));
        // Neither the key nor the certificates' bytes show in Debug output.
        let debug = format!("{s:?}");
        assert!(!debug.contains("PRIVATE KEY") && !debug.contains("BEGIN CERTIFICATE"));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn without_tls_variables_nothing_changes() {
        let s = Settings::from_vars(base()).unwrap();
        assert!(s.redis.ca.is_none() && s.amqp_ca.is_none() && s.amqp_client.is_none());
    }

    #[test]
    fn every_tls_problem_is_reported_with_its_variable() {
        let d = pairs();
        let missing = p(&d, "missing.pem");
        let e = errors(with(&[
            (
                "O365_REDIS_URL",
                "rediss://redis.example.com:6380/#insecure",
            ),
            ("O365_REDIS_CA_PATH", &missing),
            ("O365_AMQP_URL", "amqps://mq.example.com:5671/%2f"),
            ("O365_AMQP_CA_PATH", &p(&d, "a.key")),
            ("O365_AMQP_CLIENT_CERT_PATH", &p(&d, "a.crt")),
            ("O365_AMQP_CLIENT_KEY_PATH", &p(&d, "b.key")),
        ]));
        assert_eq!(e.len(), 4, "{e:#?}");
        assert!(e[0].starts_with("O365_REDIS_URL: must not have a '#' fragment"));
        assert!(e[1].starts_with(&format!("O365_REDIS_CA_PATH: cannot read '{missing}'")));
        assert!(
            e[2].starts_with("O365_AMQP_CA_PATH: ") && e[2].contains("holds no PEM certificate")
        );
        assert!(e[3].starts_with("O365_AMQP_CLIENT_KEY_PATH: the private key does not belong"));
        // No key material in the messages.
        assert!(e.iter().all(|l| !l.contains("PRIVATE KEY")));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn tls_files_without_a_tls_url_are_refused() {
        let d = pairs();
        let e = errors(with(&[
            ("O365_REDIS_CA_PATH", &p(&d, "a.crt")),
            ("O365_AMQP_CA_PATH", &p(&d, "a.crt")),
            ("O365_AMQP_CLIENT_CERT_PATH", &p(&d, "a.crt")),
        ]));
        assert_eq!(
            e,
            [
                "O365_REDIS_CA_PATH: is set but O365_REDIS_URL is not rediss:// (the CA is only used with TLS)",
                "O365_AMQP_CA_PATH: is set but O365_AMQP_URL is not amqps:// (the CA is only used with TLS)",
                "O365_AMQP_CLIENT_KEY_PATH: is required when O365_AMQP_CLIENT_CERT_PATH is set",
            ]
        );
        let _ = std::fs::remove_dir_all(d);
    }
}
