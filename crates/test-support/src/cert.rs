//! A client certificate for a test: a fresh RSA key and a self-signed certificate, the way
//! `o365-relay cert new` makes one, registered with the simulator and given to the relay.

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
