//! A client certificate for a test: a fresh RSA key and a self-signed certificate, the way
//! `o365-relay cert new` makes one, registered with the simulator and given to the relay; and
//! [`Pki`], a private CA with server and client certificates for the TLS tests.

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::{X509Builder, X509NameBuilder};
use std::path::Path;

/// A fresh 2048-bit RSA key (PKCS#8 PEM) and a self-signed certificate (PEM) valid `days`:
/// `(key_pem, cert_pem)`.
pub fn generate(common_name: &str, days: u32) -> (Vec<u8>, Vec<u8>) {
    let build = || -> Result<(Vec<u8>, Vec<u8>), openssl::error::ErrorStack> {
        let key: PKey<Private> = PKey::from_rsa(Rsa::generate(2048)?)?;
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_text("CN", common_name)?;
        let name = name.build();
        let mut b = X509Builder::new()?;
        b.set_version(2)?;
        let mut serial = BigNum::new()?;
        serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
        b.set_serial_number(serial.to_asn1_integer()?.as_ref())?;
        b.set_subject_name(&name)?;
        b.set_issuer_name(&name)?;
        b.set_pubkey(&key)?;
        b.set_not_before(Asn1Time::days_from_now(0)?.as_ref())?;
        b.set_not_after(Asn1Time::days_from_now(days)?.as_ref())?;
        b.sign(&key, MessageDigest::sha256())?;
        Ok((key.private_key_to_pem_pkcs8()?, b.build().to_pem()?))
    };
    build().expect("OpenSSL makes a key and a certificate")
}

/// A fresh key and certificate (valid a year) written to `dir` as `client.crt` and
/// `client.key`: `(cert_pem, cert_path, key_path)`.
pub fn write_cert(dir: &Path) -> (Vec<u8>, String, String) {
    let (key, cert) = generate("o365-relay tests", 365);
    std::fs::create_dir_all(dir).expect("create the test directory");
    let cert_path = dir.join("client.crt");
    let key_path = dir.join("client.key");
    std::fs::write(&cert_path, &cert).expect("write the certificate");
    std::fs::write(&key_path, &key).expect("write the key");
    (
        cert,
        cert_path.display().to_string(),
        key_path.display().to_string(),
    )
}

/// A private PKI for TLS tests, written to a directory: a CA, a server certificate it signed for
/// `127.0.0.1` and `localhost`, a client certificate it signed, and an unrelated second CA (the
/// "wrong CA"). Every file is PEM; keys are PKCS#8.
#[derive(Clone, Debug)]
pub struct Pki {
    pub dir: std::path::PathBuf,
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
    pub other_ca: String,
}

impl Pki {
    /// Makes the certificates (valid a day) under `dir` (created).
    pub fn new(dir: &Path) -> Pki {
        Pki::build(dir).expect("OpenSSL makes the test PKI")
    }

    fn build(dir: &Path) -> Result<Pki, Box<dyn std::error::Error>> {
        use openssl::x509::extension::{
            BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
        };
        std::fs::create_dir_all(dir)?;
        let write = |name: &str, pem: &[u8]| -> std::io::Result<String> {
            let path = dir.join(name);
            std::fs::write(&path, pem)?;
            Ok(path.display().to_string())
        };
        let name = |cn: &str| -> Result<openssl::x509::X509Name, openssl::error::ErrorStack> {
            let mut n = X509NameBuilder::new()?;
            n.append_entry_by_text("CN", cn)?;
            Ok(n.build())
        };
        let builder = |subject: &openssl::x509::X509NameRef,
                       issuer: &openssl::x509::X509NameRef,
                       key: &PKey<Private>|
         -> Result<X509Builder, openssl::error::ErrorStack> {
            let mut b = X509Builder::new()?;
            b.set_version(2)?;
            let mut serial = BigNum::new()?;
            serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
            b.set_serial_number(serial.to_asn1_integer()?.as_ref())?;
            b.set_subject_name(subject)?;
            b.set_issuer_name(issuer)?;
            b.set_pubkey(key)?;
            b.set_not_before(Asn1Time::days_from_now(0)?.as_ref())?;
            b.set_not_after(Asn1Time::days_from_now(1)?.as_ref())?;
            Ok(b)
        };
        let ca =
            |cn: &str| -> Result<(PKey<Private>, openssl::x509::X509), openssl::error::ErrorStack> {
                let key = PKey::from_rsa(Rsa::generate(2048)?)?;
                let n = name(cn)?;
                let mut b = builder(&n, &n, &key)?;
                b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
                b.append_extension(
                    KeyUsage::new()
                        .critical()
                        .key_cert_sign()
                        .crl_sign()
                        .build()?,
                )?;
                b.sign(&key, MessageDigest::sha256())?;
                Ok((key, b.build()))
            };
        let (ca_key, ca_cert) = ca("o365-relay test CA")?;
        let (_, other_ca) = ca("o365-relay wrong CA")?;
        let leaf = |cn: &str,
                    server: bool|
         -> Result<(PKey<Private>, openssl::x509::X509), openssl::error::ErrorStack> {
            let key = PKey::from_rsa(Rsa::generate(2048)?)?;
            let mut b = builder(&*name(cn)?, ca_cert.subject_name(), &key)?;
            b.append_extension(BasicConstraints::new().build()?)?;
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .digital_signature()
                    .key_encipherment()
                    .build()?,
            )?;
            if server {
                b.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
                let san = SubjectAlternativeName::new()
                    .ip("127.0.0.1")
                    .dns("localhost")
                    .build(&b.x509v3_context(Some(&ca_cert), None))?;
                b.append_extension(san)?;
            } else {
                b.append_extension(ExtendedKeyUsage::new().client_auth().build()?)?;
            }
            b.sign(&ca_key, MessageDigest::sha256())?;
            Ok((key, b.build()))
        };
        let (server_key, server_cert) = leaf("127.0.0.1", true)?;
        let (client_key, client_cert) = leaf("o365-relay test client", false)?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            ca: write("ca.crt", &ca_cert.to_pem()?)?,
            server_cert: write("server.crt", &server_cert.to_pem()?)?,
            server_key: write("server.key", &server_key.private_key_to_pem_pkcs8()?)?,
            client_cert: write("client-tls.crt", &client_cert.to_pem()?)?,
            client_key: write("client-tls.key", &client_key.private_key_to_pem_pkcs8()?)?,
            other_ca: write("other-ca.crt", &other_ca.to_pem()?)?,
        })
    }
}
