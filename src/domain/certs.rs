//! X.509 client certificates: loading the relay's credential, the values Entra ID needs
//! (`x5t`, the app manifest's `keyCredentials` entry) and `o365-relay cert new` / `cert show`.

use crate::domain::secret::Secret;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::{X509Builder, X509NameBuilder, X509};

/// The relay's certificate credential: what it signs client assertions with.
#[derive(Clone)]
pub struct ClientCertificate {
    pub cert_der: Vec<u8>,
    /// The private key in PEM, as jsonwebtoken wants it.
    pub key_pem: Secret<Vec<u8>>,
    /// base64url (unpadded) SHA-1 of the DER certificate: the JWT header's `x5t` (27 characters).
    pub x5t: String,
    pub not_after: chrono::DateTime<chrono::Utc>,
    pub subject: String,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("x5t", &self.x5t)
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .field("key_pem", &self.key_pem)
            .finish()
    }
}

impl ClientCertificate {
    /// Loads the PEM files named by `O365_CLIENT_CERT_PATH` / `O365_CLIENT_KEY_PATH`. Errors are
    /// configuration lines naming the variable.
    pub fn load(cert_path: &str, key_path: &str) -> Result<ClientCertificate, String> {
        let cert_pem = std::fs::read(cert_path)
            .map_err(|e| format!("O365_CLIENT_CERT_PATH: cannot read '{cert_path}': {e}"))?;
        let key_pem = std::fs::read(key_path)
            .map_err(|e| format!("O365_CLIENT_KEY_PATH: cannot read '{key_path}': {e}"))?;
        ClientCertificate::from_pem(&cert_pem, &key_pem)
    }

    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<ClientCertificate, String> {
        let cert = X509::from_pem(cert_pem)
            .map_err(|_| "O365_CLIENT_CERT_PATH: not a PEM certificate".to_string())?;
        let key = PKey::private_key_from_pem(key_pem)
            .map_err(|_| "O365_CLIENT_KEY_PATH: not a PEM private key".to_string())?;
        let rsa = key.rsa().map_err(|_| {
            "O365_CLIENT_KEY_PATH: not an RSA key (Entra ID client assertions use RS256)"
                .to_string()
        })?;
        if rsa.size() * 8 < 2048 {
            return Err(format!(
                "O365_CLIENT_KEY_PATH: RSA key has {} bits; at least 2048 are required",
                rsa.size() * 8
            ));
        }
        let cert_key = cert.public_key().map_err(|_| {
            "O365_CLIENT_CERT_PATH: certificate has no readable public key".to_string()
        })?;
        if !cert_key.public_eq(&key) {
            return Err("O365_CLIENT_KEY_PATH: the private key does not belong to the certificate in O365_CLIENT_CERT_PATH".into());
        }
        // jsonwebtoken reads PKCS#1 or PKCS#8 PEM; normalise to PKCS#8.
        let key_pem = key
            .private_key_to_pem_pkcs8()
            .map_err(|_| "O365_CLIENT_KEY_PATH: cannot re-encode the key".to_string())?;
        let info = CertInfo::of(&cert).map_err(|e| format!("O365_CLIENT_CERT_PATH: {e}"))?;
        Ok(ClientCertificate {
            cert_der: info.der.clone(),
            key_pem: Secret::new(key_pem),
            x5t: info.x5t,
            not_after: info.not_after,
            subject: info.subject,
        })
    }

    /// Seconds until the certificate expires (negative once expired).
    pub fn seconds_left(&self) -> i64 {
        (self.not_after - chrono::Utc::now()).num_seconds()
    }
}

/// What an operator needs to know of a certificate to register it with Entra ID.
#[derive(Clone, Debug)]
pub struct CertInfo {
    pub der: Vec<u8>,
    pub x5t: String,
    /// base64 (standard, padded) SHA-1 thumbprint: the manifest's `customKeyIdentifier`.
    pub thumbprint_b64: String,
    pub thumbprint_hex: String,
    pub not_before: chrono::DateTime<chrono::Utc>,
    pub not_after: chrono::DateTime<chrono::Utc>,
    pub subject: String,
}

impl CertInfo {
    pub fn from_pem(pem: &[u8]) -> Result<CertInfo, String> {
        let cert = X509::from_pem(pem).map_err(|_| "not a PEM certificate".to_string())?;
        CertInfo::of(&cert)
    }

    pub fn of(cert: &X509) -> Result<CertInfo, String> {
        let der = cert
            .to_der()
            .map_err(|e| format!("cannot encode certificate: {e}"))?;
        let sha1 = cert
            .digest(MessageDigest::sha1())
            .map_err(|e| format!("cannot hash certificate: {e}"))?;
        let subject = cert
            .subject_name()
            .entries()
            .filter_map(|e| e.data().to_string().ok())
            .collect::<Vec<_>>()
            .join(",");
        Ok(CertInfo {
            x5t: URL_SAFE_NO_PAD.encode(&*sha1),
            thumbprint_b64: STANDARD.encode(&*sha1),
            thumbprint_hex: sha1.iter().map(|b| format!("{b:02X}")).collect(),
            not_before: asn1_to_utc(cert.not_before())?,
            not_after: asn1_to_utc(cert.not_after())?,
            subject,
            der,
        })
    }

    /// The `keyCredentials` entry for the app manifest.
    pub fn key_credential(&self) -> serde_json::Value {
        serde_json::json!({
            "customKeyIdentifier": self.thumbprint_b64,
            "keyId": uuid::Uuid::new_v4().to_string(),
            "type": "AsymmetricX509Cert",
            "usage": "Verify",
            "value": STANDARD.encode(&self.der),
        })
    }
}

fn asn1_to_utc(t: &openssl::asn1::Asn1TimeRef) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let epoch = Asn1Time::from_unix(0).map_err(|e| e.to_string())?;
    let diff = epoch.diff(t).map_err(|e| e.to_string())?;
    let secs = i64::from(diff.days) * 86_400 + i64::from(diff.secs);
    chrono::DateTime::from_timestamp(secs, 0).ok_or_else(|| "certificate time out of range".into())
}

/// A new RSA key and self-signed certificate, both PEM: `(key_pem, cert_pem)`.
pub fn generate(
    common_name: &str,
    days: u32,
    bits: u32,
) -> Result<(Vec<u8>, Vec<u8>), openssl::error::ErrorStack> {
    let rsa = Rsa::generate(bits)?;
    let key: PKey<Private> = PKey::from_rsa(rsa)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("CN", common_name)?;
    let name = name.build();
    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_pubkey(&key)?;
    let not_before = Asn1Time::days_from_now(0)?;
    let not_after = Asn1Time::days_from_now(days)?;
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    b.sign(&key, MessageDigest::sha256())?;
    let cert = b.build();
    Ok((key.private_key_to_pem_pkcs8()?, cert.to_pem()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x5t_is_the_unpadded_base64url_sha1_of_the_der() {
        let (key, cert) = generate("o365-relay test", 30, 2048).unwrap();
        let c = ClientCertificate::from_pem(&cert, &key).unwrap();
        let der = X509::from_pem(&cert).unwrap().to_der().unwrap();
        let sha1 = openssl::sha::sha1(&der);
        assert_eq!(c.x5t, URL_SAFE_NO_PAD.encode(sha1));
        assert_eq!(c.x5t.len(), 27);
        assert!(c.seconds_left() > 29 * 86_400);
    }

    #[test]
    fn small_keys_and_mismatched_keys_are_refused() {
        let (key, cert) = generate("small", 1, 1024).unwrap();
        let err = ClientCertificate::from_pem(&cert, &key).unwrap_err();
        assert!(err.contains("2048"), "{err}");
        let (_, cert_a) = generate("a", 1, 2048).unwrap();
        let (key_b, _) = generate("b", 1, 2048).unwrap();
        let err = ClientCertificate::from_pem(&cert_a, &key_b).unwrap_err();
        assert!(err.contains("does not belong"), "{err}");
    }
}
