//! `quizfs cert`: the cluster's own certificate authority. It makes the CA
//! and the node certificates for a peer list, issues client certificates
//! scoped to volumes (read-write or read-only), and revokes them through a
//! revocation list the nodes reload by themselves.
//!
//! A CA directory holds `ca.crt`, `ca.key` (the one secret that can mint
//! identities), `issued` and `revoked` (one line per certificate), `crl.pem`,
//! and one ready-to-copy TLS directory per node (`nodes/NAME/`) and client
//! (`clients/NAME/`).

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use quizfs_proto::tls::{self, CertIdentity};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams,
    SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// A certificate operation that failed, in one line.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read or written.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// rcgen refused to build or sign a certificate.
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A name or argument is not acceptable.
    #[error("{0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, CertError>;

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Start.
    pub not_before: OffsetDateTime,
    /// End.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (some clock skew) for `days` days.
    pub fn days(days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(i64::from(days)),
        }
    }

    /// A window that ended a day ago: an expired certificate, for tests.
    pub fn expired() -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::days(30),
            not_after: now - Duration::days(1),
        }
    }
}

/// The CA, loaded from its directory.
pub struct Ca {
    dir: PathBuf,
    key: KeyPair,
    issuer: Certificate,
}

/// The CA's subject: names the key, so two clusters' CAs never look alike.
fn ca_params(key: &KeyPair) -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let id = blake3::hash(&key.public_key_der());
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, "quizfs");
    p.distinguished_name.push(
        DnType::CommonName,
        format!("quizfs cluster CA {}", &id.to_hex()[..16]),
    );
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(p)
}

/// A fresh positive serial number, unique with overwhelming probability.
fn new_serial(key: &KeyPair) -> SerialNumber {
    let mut h = blake3::Hasher::new();
    h.update(&key.public_key_der());
    h.update(&quizfs_proto::now_ns().to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&h.finalize().as_bytes()[..16]);
    // Positive, and no leading zero byte, so every encoder writes it alike.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn io<T>(path: &Path, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|e| CertError::Io(path.to_path_buf(), e))
}

/// Writes `data` to `path`, readable only by its owner when `secret`.
fn write_file(path: &Path, data: &[u8], secret: bool) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = io(
        &tmp,
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if secret { 0o600 } else { 0o644 })
            .open(&tmp),
    )?;
    io(&tmp, f.write_all(data).and_then(|()| f.sync_all()))?;
    io(path, std::fs::rename(&tmp, path))
}

fn make_dir(path: &Path, mode: u32) -> Result<()> {
    io(path, std::fs::create_dir_all(path))?;
    io(
        path,
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)),
    )
}

fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut f = io(
        path,
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .open(path),
    )?;
    io(path, writeln!(f, "{line}").and_then(|()| f.sync_all()))
}

fn check_name(kind: &str, name: &str) -> Result<()> {
    if tls::valid_label(name) {
        Ok(())
    } else {
        Err(CertError::Invalid(format!(
            "invalid {kind} name {name:?}: use 1-63 letters, digits, '.', '_' or '-'"
        )))
    }
}

/// The host part of a `--peers` entry (`host[:port]`).
pub fn peer_host(peer: &str) -> &str {
    let peer = peer.trim();
    match peer.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => peer,
    }
}

impl Ca {
    /// Creates a new CA in `dir` (which must not hold one yet), with its
    /// certificate valid for `validity`, and an empty revocation list.
    pub fn create(dir: &Path, validity: Validity) -> Result<Self> {
        if dir.join(tls::CA_KEY).exists() {
            return Err(CertError::Invalid(format!(
                "{} already holds a CA ({}); refusing to overwrite it: every certificate it issued would stop working",
                dir.display(),
                tls::CA_KEY
            )));
        }
        make_dir(dir, 0o700)?;
        let key = KeyPair::generate()?;
        let mut params = ca_params(&key)?;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.self_signed(&key)?;
        write_file(&dir.join(tls::CA_KEY), key.serialize_pem().as_bytes(), true)?;
        write_file(&dir.join(tls::CA_CERT), cert.pem().as_bytes(), false)?;
        let ca = Self {
            dir: dir.to_path_buf(),
            issuer: ca_params(&key)?.self_signed(&key)?,
            key,
        };
        ca.write_crl()?;
        Ok(ca)
    }

    /// Loads the CA kept in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(tls::CA_KEY);
        let pem = match std::fs::read_to_string(&path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CertError::Invalid(format!(
                    "no CA at {} (create one with `quizfs cert init --peers ... --out {}`)",
                    path.display(),
                    dir.display()
                )));
            }
            Err(e) => return Err(CertError::Io(path, e)),
        };
        let key = KeyPair::from_pem(&pem)?;
        // Only the subject and key of the issuer go into what it signs, and
        // both follow from the key.
        let issuer = ca_params(&key)?.self_signed(&key)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            key,
            issuer,
        })
    }

    /// The CA directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ca_pem(&self) -> Result<Vec<u8>> {
        let path = self.dir.join(tls::CA_CERT);
        io(&path, std::fs::read(&path))
    }

    /// Issues a certificate for `id` into the TLS directory `out` (with the
    /// CA's certificate and the revocation list beside it) and records it.
    fn issue(
        &self,
        id: &CertIdentity,
        host: Option<&str>,
        out: &Path,
        validity: Validity,
    ) -> Result<()> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(DnType::OrganizationName, "quizfs");
        p.distinguished_name.push(DnType::CommonName, id.name());
        let uri = id
            .to_uri()
            .try_into()
            .map_err(|_| CertError::Invalid(format!("{} is not a valid URI", id.to_uri())))?;
        p.subject_alt_names = vec![SanType::URI(uri)];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let serial = new_serial(&key);
        p.serial_number = Some(serial.clone());
        p.not_before = validity.not_before;
        p.not_after = validity.not_after;
        p.use_authority_key_identifier_extension = true;
        let (cert_file, key_file) = match id {
            CertIdentity::Node { .. } => {
                let host = host.unwrap_or(id.name());
                p.subject_alt_names.push(match host.parse::<IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(host.try_into().map_err(|_| {
                        CertError::Invalid(format!("{host:?} is not a valid host name"))
                    })?),
                });
                p.extended_key_usages = vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ];
                (tls::NODE_CERT, tls::NODE_KEY)
            }
            CertIdentity::Client { .. } => {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                (tls::CLIENT_CERT, tls::CLIENT_KEY)
            }
        };
        let cert = p.signed_by(&key, &self.issuer, &self.key)?;
        make_dir(out, 0o700)?;
        write_file(&out.join(tls::CA_CERT), &self.ca_pem()?, false)?;
        write_file(&out.join(cert_file), cert.pem().as_bytes(), false)?;
        write_file(&out.join(key_file), key.serialize_pem().as_bytes(), true)?;
        let crl = self.dir.join(tls::CRL);
        if let Ok(pem) = std::fs::read(&crl) {
            write_file(&out.join(tls::CRL), &pem, false)?;
        }
        append_line(
            &self.dir.join("issued"),
            &format!("{} {}", hex(serial.as_ref()), id.to_uri()),
        )
    }

    /// Issues the certificate of the node `peer` (`host[:port]` as in
    /// `--peers`) into `nodes/HOST/`; returns that directory.
    pub fn issue_node(&self, peer: &str, validity: Validity) -> Result<PathBuf> {
        let host = peer_host(peer);
        check_name("node", host)?;
        let out = self.dir.join("nodes").join(host);
        self.issue(
            &CertIdentity::Node {
                name: host.to_string(),
            },
            Some(host),
            &out,
            validity,
        )?;
        Ok(out)
    }

    /// Issues a client certificate into `clients/NAME/`; returns that
    /// directory.
    pub fn issue_client(
        &self,
        name: &str,
        read_only: bool,
        volumes: &[String],
        validity: Validity,
    ) -> Result<PathBuf> {
        check_name("client", name)?;
        if volumes.is_empty() {
            return Err(CertError::Invalid(
                "a client needs at least one volume".into(),
            ));
        }
        for v in volumes {
            check_name("volume", v)?;
        }
        let out = self.dir.join("clients").join(name);
        self.issue(
            &CertIdentity::Client {
                name: name.to_string(),
                read_only,
                volumes: volumes.to_vec(),
            },
            None,
            &out,
            validity,
        )?;
        Ok(out)
    }

    /// Revokes every certificate issued to the client `name`, rewrites the
    /// revocation list, and copies it into every node directory under the
    /// CA. Returns how many certificates were revoked.
    pub fn revoke_client(&self, name: &str) -> Result<usize> {
        check_name("client", name)?;
        let issued_path = self.dir.join("issued");
        let issued = std::fs::read_to_string(&issued_path).unwrap_or_default();
        let revoked_path = self.dir.join("revoked");
        let already = std::fs::read_to_string(&revoked_path).unwrap_or_default();
        let mut count = 0;
        let mut found = false;
        for line in issued.lines() {
            let Some((serial, uri)) = line.split_once(' ') else {
                continue;
            };
            match CertIdentity::from_uri(uri) {
                Some(CertIdentity::Client { name: n, .. }) if n == name => found = true,
                _ => continue,
            }
            if already.lines().any(|l| l.split(' ').next() == Some(serial)) {
                continue;
            }
            let now = OffsetDateTime::now_utc().unix_timestamp();
            append_line(&revoked_path, &format!("{serial} {now} {uri}"))?;
            count += 1;
        }
        if !found {
            return Err(CertError::Invalid(format!(
                "no client certificate named {name:?} was issued by the CA in {}",
                self.dir.display()
            )));
        }
        self.write_crl()?;
        Ok(count)
    }

    /// Writes `crl.pem` from `revoked`, into the CA directory and every
    /// node directory under it; returns the files written.
    pub fn write_crl(&self) -> Result<Vec<PathBuf>> {
        let revoked = std::fs::read_to_string(self.dir.join("revoked")).unwrap_or_default();
        let mut certs = Vec::new();
        for line in revoked.lines() {
            let mut f = line.split(' ');
            let (Some(serial), Some(when)) = (f.next().and_then(unhex), f.next()) else {
                continue;
            };
            let when = when
                .parse::<i64>()
                .ok()
                .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
                .unwrap_or_else(OffsetDateTime::now_utc);
            certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: when,
                reason_code: Some(RevocationReason::CessationOfOperation),
                invalidity_date: None,
            });
        }
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::hours(1),
            next_update: now + Duration::days(3650),
            crl_number: SerialNumber::from(now.unix_timestamp().unsigned_abs()),
            issuing_distribution_point: None,
            revoked_certs: certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let pem = params.signed_by(&self.issuer, &self.key)?.pem()?;
        let mut written = vec![self.dir.join(tls::CRL)];
        if let Ok(nodes) = std::fs::read_dir(self.dir.join("nodes")) {
            written.extend(nodes.flatten().map(|e| e.path().join(tls::CRL)));
        }
        for path in &written {
            write_file(path, pem.as_bytes(), false)?;
        }
        Ok(written)
    }
}

/// `quizfs cert init`: a new CA in `out` and a certificate for every peer.
/// Returns the node directories.
pub fn init(out: &Path, peers: &[String], ca_days: u32, days: u32) -> Result<Vec<PathBuf>> {
    let hosts: Vec<&str> = peers
        .iter()
        .map(|p| peer_host(p))
        .filter(|h| !h.is_empty())
        .collect();
    if hosts.is_empty() {
        return Err(CertError::Invalid("--peers lists no node".into()));
    }
    for h in &hosts {
        check_name("node", h)?;
    }
    let ca = Ca::create(out, Validity::days(ca_days))?;
    let mut dirs = Vec::new();
    for p in peers.iter().filter(|p| !peer_host(p).is_empty()) {
        dirs.push(ca.issue_node(p, Validity::days(days))?);
    }
    ca.write_crl()?;
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_hosts() {
        assert_eq!(peer_host("nas1"), "nas1");
        assert_eq!(peer_host("nas1:7420"), "nas1");
        assert_eq!(peer_host("127.0.0.21:7000"), "127.0.0.21");
    }

    #[test]
    fn init_issue_revoke() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("ca");
        let nodes = init(&ca_dir, &["nas1".into(), "127.0.0.22:7420".into()], 10, 5).expect("init");
        assert_eq!(nodes.len(), 2);
        for n in &nodes {
            for f in [tls::CA_CERT, tls::NODE_CERT, tls::NODE_KEY, tls::CRL] {
                assert!(n.join(f).is_file(), "{}/{f}", n.display());
            }
            let mode = std::fs::metadata(n.join(tls::NODE_KEY))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "node key readable by others");
        }
        assert!(
            init(&ca_dir, &["nas1".into()], 10, 5).is_err(),
            "a second init must not overwrite the CA"
        );
        let ca = Ca::open(&ca_dir).expect("open");
        let c = ca
            .issue_client("s1", true, &["nas".into()], Validity::days(1))
            .expect("client");
        assert!(c.join(tls::CLIENT_CERT).is_file());
        assert!(
            ca.issue_client("s/1", false, &["nas".into()], Validity::days(1))
                .is_err()
        );
        let before = std::fs::read(nodes[0].join(tls::CRL)).expect("crl");
        assert_eq!(ca.revoke_client("s1").expect("revoke"), 1);
        assert_eq!(ca.revoke_client("s1").expect("revoke again"), 0);
        assert_ne!(std::fs::read(nodes[0].join(tls::CRL)).expect("crl"), before);
        assert!(ca.revoke_client("nobody").is_err());
    }
}
