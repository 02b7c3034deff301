//! How a client or a node reaches a node: mutual TLS with certificates from
//! the cluster's own CA (the default), or plaintext behind `--insecure`.
//! Also the identity a certificate carries, shared by the tool that issues
//! certificates and the node that checks them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Where `storaged` and `quizfs` look for their certificates by default.
pub const DEFAULT_TLS_DIR: &str = "/etc/quizfs";

/// Where `quizfs cert` keeps the cluster's CA by default.
pub const DEFAULT_CA_DIR: &str = "/etc/quizfs/ca";

/// The cluster CA's certificate, in every TLS directory.
pub const CA_CERT: &str = "ca.crt";
/// The CA's private key: only in the CA directory, never on a node or client.
pub const CA_KEY: &str = "ca.key";
/// A node's certificate, in a node's TLS directory.
pub const NODE_CERT: &str = "node.crt";
/// A node's private key.
pub const NODE_KEY: &str = "node.key";
/// A client's certificate, in a client's TLS directory.
pub const CLIENT_CERT: &str = "client.crt";
/// A client's private key.
pub const CLIENT_KEY: &str = "client.key";
/// The revocation list nodes check client certificates against (optional).
pub const CRL: &str = "crl.pem";

/// Which certificate a process presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A storage node: `node.crt`.
    Node,
    /// A client (mount, status): `client.crt`.
    Client,
}

/// Who a certificate says its holder is: the one URI subject alternative
/// name that `quizfs cert` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertIdentity {
    /// A storage node, by its name in `--peers`.
    Node {
        /// The node's host as in `--peers`.
        name: String,
    },
    /// A client, limited to some volumes.
    Client {
        /// The name given to `quizfs cert client`.
        name: String,
        /// Whether it may only read.
        read_only: bool,
        /// The volumes it may use.
        volumes: Vec<String>,
    },
}

/// Prefix of every identity URI.
const URI_PREFIX: &str = "urn:quizfs:";

impl CertIdentity {
    /// The URI that encodes this identity in a certificate.
    pub fn to_uri(&self) -> String {
        match self {
            Self::Node { name } => format!("{URI_PREFIX}node:{name}"),
            Self::Client {
                name,
                read_only,
                volumes,
            } => format!(
                "{URI_PREFIX}client:{name}:{}:{}",
                if *read_only { "ro" } else { "rw" },
                volumes.join(",")
            ),
        }
    }

    /// Parses a URI written by [`CertIdentity::to_uri`]; `None` for any
    /// other URI.
    pub fn from_uri(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix(URI_PREFIX)?;
        let mut parts = rest.split(':');
        let id = match (parts.next()?, parts.next()?) {
            ("node", name) if valid_label(name) => Self::Node { name: name.into() },
            ("client", name) if valid_label(name) => {
                let read_only = match parts.next()? {
                    "ro" => true,
                    "rw" => false,
                    _ => return None,
                };
                let volumes: Vec<String> = parts.next()?.split(',').map(String::from).collect();
                if !volumes.iter().all(|v| valid_label(v)) {
                    return None;
                }
                Self::Client {
                    name: name.into(),
                    read_only,
                    volumes,
                }
            }
            _ => return None,
        };
        parts.next().is_none().then_some(id)
    }

    /// The holder's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Node { name } | Self::Client { name, .. } => name,
        }
    }
}

/// Whether `s` may be a node, client or volume name in a certificate:
/// 1-63 ASCII letters, digits, `.`, `_` or `-`.
pub fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file is missing: says which command makes it.
    #[error(
        "no {what} at {path}: {hint} (or pass {insecure} for plaintext, for local experiments only)"
    )]
    Missing {
        /// What the file is.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// The command that creates it.
        hint: &'static str,
        /// How plaintext is asked for in this program.
        insecure: &'static str,
    },
    /// A file exists but cannot be read or used.
    #[error("cannot use {path}: {detail}")]
    Bad {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
}

/// The PEM files of one TLS directory.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The directory.
    pub dir: PathBuf,
    /// `ca.crt`.
    pub ca_pem: Vec<u8>,
    /// `node.crt` or `client.crt`.
    pub cert_pem: Vec<u8>,
    /// `node.key` or `client.key`.
    pub key_pem: Vec<u8>,
}

impl TlsFiles {
    /// Reads the CA and the certificate and key of `role` from `dir`.
    /// `insecure` is how this program's user asks for plaintext, for the
    /// error message.
    pub fn load(dir: &Path, role: Role, insecure: &'static str) -> Result<Self, TlsError> {
        let (cert, key, what, hint) = match role {
            Role::Node => (
                NODE_CERT,
                NODE_KEY,
                "node certificate",
                "create the cluster's certificates with `quizfs cert init --peers ...` and copy this node's directory here",
            ),
            Role::Client => (
                CLIENT_CERT,
                CLIENT_KEY,
                "client certificate",
                "issue one with `quizfs cert client NAME` where the cluster's CA is kept and copy it here",
            ),
        };
        let read = |name: &str, what: &'static str| -> Result<Vec<u8>, TlsError> {
            let path = dir.join(name);
            match std::fs::read(&path) {
                Ok(b) => Ok(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(TlsError::Missing {
                    what,
                    path,
                    hint,
                    insecure,
                }),
                Err(e) => Err(TlsError::Bad {
                    path,
                    detail: e.to_string(),
                }),
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            ca_pem: read(CA_CERT, "cluster CA certificate")?,
            cert_pem: read(cert, what)?,
            key_pem: read(key, "private key")?,
        })
    }
}

/// How this process dials nodes; cheap to clone.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Plaintext HTTP/2 (`--insecure`).
    Insecure,
    /// Mutual TLS with these certificates.
    Tls(Arc<TlsFiles>),
}

impl Transport {
    /// Whether traffic is plaintext.
    pub fn is_insecure(&self) -> bool {
        matches!(self, Self::Insecure)
    }

    /// An endpoint for `host:port`, with TLS set up when it is on. The
    /// node's certificate must name `host` (as `quizfs cert init` does for
    /// every peer).
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, tonic::transport::Error> {
        match self {
            Self::Insecure => Endpoint::from_shared(format!("http://{addr}")),
            Self::Tls(files) => {
                let tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&files.ca_pem))
                    .identity(Identity::from_pem(&files.cert_pem, &files.key_pem));
                Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_uris_round_trip() {
        let ids = [
            CertIdentity::Node {
                name: "nas1".into(),
            },
            CertIdentity::Client {
                name: "s1".into(),
                read_only: true,
                volumes: vec!["nas".into(), "photos".into()],
            },
        ];
        for id in ids {
            assert_eq!(CertIdentity::from_uri(&id.to_uri()), Some(id));
        }
    }

    #[test]
    fn foreign_or_malformed_uris_are_no_identity() {
        for uri in [
            "https://example.com",
            "urn:quizfs:node:",
            "urn:quizfs:node:a:b",
            "urn:quizfs:client:s1:rx:nas",
            "urn:quizfs:client:s1:rw",
            "urn:quizfs:client:s1:rw:",
            "urn:quizfs:client:s/1:rw:nas",
            "urn:quizfs:admin:x",
        ] {
            assert_eq!(CertIdentity::from_uri(uri), None, "{uri}");
        }
    }
}
