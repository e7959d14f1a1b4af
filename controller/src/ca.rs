//! A private CA for a pilot without a PKI: `wardnet-controller ca init`.
//!
//! Creates a CA certificate and key, and a server certificate for the
//! controller's names/addresses signed by it (ECDSA P-256, ring). Agents are
//! given `ca.crt` (`wardnet-agent enroll --ca-cert ca.crt`) and then accept
//! only a controller whose certificate chains to it. Keys are written with
//! mode 0600 and existing files are never overwritten without `force`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// The files `init` writes into its directory.
#[derive(Debug, Clone)]
pub struct CaFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl CaFiles {
    pub fn in_dir(dir: &Path) -> Self {
        CaFiles {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("controller.crt"),
            server_key: dir.join("controller.key"),
        }
    }
}

/// Create the CA and a server certificate for `hosts` (DNS names or IP
/// addresses) in `dir`, valid for `days`.
pub fn init(dir: &Path, hosts: &[String], days: u32, force: bool) -> Result<CaFiles> {
    if hosts.is_empty() {
        bail!(
            "name at least one --host: the DNS name or IP address agents use in the controller URL"
        );
    }
    if days == 0 {
        bail!("--days must be at least 1");
    }
    let files = CaFiles::in_dir(dir);
    if !force {
        for p in [
            &files.ca_cert,
            &files.ca_key,
            &files.server_cert,
            &files.server_key,
        ] {
            if p.exists() {
                bail!(
                    "{} exists; refusing to overwrite it (pass --force to replace the CA: every agent then needs the new ca.crt)",
                    p.display()
                );
            }
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;

    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::hours(1);

    let ca_key = KeyPair::generate().context("failed to generate the CA key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "wardnet private CA");
    dn.push(DnType::OrganizationName, "wardnet");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before;
    // The CA outlives the server certificates it signs.
    ca.not_after = now + time::Duration::days(i64::from(days) * 2);
    let ca_cert = ca.self_signed(&ca_key).context("failed to sign the CA")?;

    let server_key = KeyPair::generate().context("failed to generate the server key")?;
    let mut server = CertificateParams::new(hosts.to_vec())
        .context("invalid --host: expected a DNS name or an IP address")?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, hosts[0].clone());
    server.distinguished_name = dn;
    server.is_ca = IsCa::ExplicitNoCa;
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.not_before = not_before;
    server.not_after = now + time::Duration::days(i64::from(days));
    let issuer = Issuer::new(ca, ca_key);
    let server_cert = server
        .signed_by(&server_key, &issuer)
        .context("failed to sign the server certificate")?;

    write_file(&files.ca_key, issuer_key_pem(&issuer).as_bytes(), 0o600)?;
    write_file(&files.ca_cert, ca_cert.pem().as_bytes(), 0o644)?;
    write_file(
        &files.server_key,
        server_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    // The chain: server certificate first, then the CA.
    let chain = format!("{}{}", server_cert.pem(), ca_cert.pem());
    write_file(&files.server_cert, chain.as_bytes(), 0o644)?;
    Ok(files)
}

fn issuer_key_pem(issuer: &Issuer<'_, KeyPair>) -> String {
    issuer.key().serialize_pem()
}

/// Write atomically-enough for a one-off command: a new file created with
/// `mode` (so a key is never readable by others, not even briefly).
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("failed to write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_a_ca_and_a_server_chain_with_private_keys_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = init(
            dir.path(),
            &["controller.example".into(), "127.0.0.1".into()],
            30,
            false,
        )
        .expect("init");
        for (p, mode) in [
            (&files.ca_key, 0o600),
            (&files.server_key, 0o600),
            (&files.ca_cert, 0o644),
            (&files.server_cert, 0o644),
        ] {
            let m = std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
            assert_eq!(m, mode, "{}", p.display());
        }
        let chain = std::fs::read_to_string(&files.server_cert).expect("read");
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
        // A second run refuses to replace the CA.
        let e = init(dir.path(), &["x.example".into()], 30, false).expect_err("refused");
        assert!(e.to_string().contains("--force"), "{e}");
        init(dir.path(), &["x.example".into()], 30, true).expect("forced");
    }

    #[test]
    fn needs_a_host() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(init(dir.path(), &[], 30, false).is_err());
    }
}
