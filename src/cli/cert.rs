//! `o365-relay cert new | show`: the X.509 certificate the relay authenticates with, and the
//! `keyCredentials` entry to register it with the app (docs/ONBOARDING.md).

use super::{Failure, Outcome};
use anyhow::Context;
use o365_relay::domain::certs::{generate, CertInfo};
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum CertCmd {
    /// Create an RSA key and a self-signed certificate, and print the manifest entry.
    New {
        #[arg(long, default_value = "o365-relay")]
        cn: String,
        #[arg(long, default_value_t = 730)]
        days: u32,
        #[arg(long, default_value_t = 3072, value_parser = parse_bits)]
        bits: u32,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the manifest entry, x5t and expiry of an existing certificate.
    Show { path: PathBuf },
}

fn parse_bits(s: &str) -> Result<u32, String> {
    match s {
        "2048" => Ok(2048),
        "3072" => Ok(3072),
        "4096" => Ok(4096),
        _ => Err("must be 2048, 3072 or 4096".into()),
    }
}

pub fn run(cmd: CertCmd) -> Outcome {
    match cmd {
        CertCmd::New {
            cn,
            days,
            bits,
            out,
        } => {
            let (key, cert) = generate(&cn, days, bits)
                .map_err(|e| anyhow::anyhow!("cannot create the certificate: {e}"))?;
            write_pair(&out, &key, &cert)
                .with_context(|| format!("cannot write to {}", out.display()))?;
            println!(
                "wrote {} and {}",
                out.join("o365-relay.crt").display(),
                out.join("o365-relay.key").display()
            );
            print(&CertInfo::from_pem(&cert).map_err(|e| anyhow::anyhow!(e))?);
            Ok(())
        }
        CertCmd::Show { path } => {
            let info = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|pem| CertInfo::from_pem(&pem))
                .map_err(|e| Failure::Failed(anyhow::anyhow!("{}: {e}", path.display())))?;
            print(&info);
            Ok(())
        }
    }
}

fn print(info: &CertInfo) {
    println!("subject:    {}", info.subject);
    println!("thumbprint: {}", info.thumbprint_hex);
    println!("x5t:        {}", info.x5t);
    println!("not after:  {}", info.not_after);
    println!("keyCredentials entry for the app manifest:");
    println!(
        "{}",
        serde_json::to_string_pretty(&info.key_credential()).unwrap_or_default()
    );
}

/// The key is created with mode 0600 and never overwrites an existing file.
fn write_pair(dir: &Path, key: &[u8], cert: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join("o365-relay.key"))?;
    f.write_all(key)?;
    std::fs::write(dir.join("o365-relay.crt"), cert)?;
    Ok(())
}
