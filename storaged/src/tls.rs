//! The node's side of mutual TLS: accepting connections, checking the
//! peer's certificate against the cluster CA and the revocation list (which
//! is reloaded when its file changes), and authorizing each RPC by the role
//! the certificate gives: node, read-write client or read-only client.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use quizfs_proto::tls::{CRL, CertIdentity, TlsFiles};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;
use tonic::transport::server::Connected;

/// Longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the revocation list's file is checked for changes.
const CRL_POLL: Duration = Duration::from_secs(1);

/// The server's TLS set-up: certificate, CA, revocation list.
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
    verifier: Arc<ReloadingVerifier>,
    volume: String,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("volume", &self.volume)
            .field("crl", &self.verifier.crl_path)
            .finish_non_exhaustive()
    }
}

/// A TLS set-up problem, reported in one line before exiting.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsSetupError(String);

impl ServerTls {
    /// Builds the acceptor from a node's TLS directory; `volume` is the
    /// volume this node serves (client certificates must name it) and `me`
    /// this node's host in `--peers` (its certificate must name it).
    pub fn new(files: &TlsFiles, volume: &str, me: &str) -> Result<Self, TlsSetupError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            TlsSetupError(format!("{what} in {}: {e}", files.dir.display()))
        };
        let certs: Vec<CertificateDer<'static>> =
            rustls_pemfile::certs(&mut files.cert_pem.as_slice())
                .collect::<Result<_, _>>()
                .map_err(|e| bad("node.crt", &e))?;
        if certs.is_empty() {
            return Err(bad("node.crt", &"no certificate"));
        }
        let key: PrivateKeyDer<'static> =
            rustls_pemfile::private_key(&mut files.key_pem.as_slice())
                .map_err(|e| bad("node.key", &e))?
                .ok_or_else(|| bad("node.key", &"no private key"))?;
        let mut roots = RootCertStore::empty();
        for ca in rustls_pemfile::certs(&mut files.ca_pem.as_slice()) {
            roots
                .add(ca.map_err(|e| bad("ca.crt", &e))?)
                .map_err(|e| bad("ca.crt", &e))?;
        }
        if roots.is_empty() {
            return Err(bad("ca.crt", &"no certificate"));
        }
        match identity_of(&certs[0]) {
            Some(CertIdentity::Node { name }) if name == me => {}
            Some(CertIdentity::Node { name }) => {
                return Err(bad(
                    "node.crt",
                    &format!("the certificate is node {name}'s, but this node is {me} in --peers"),
                ));
            }
            _ => return Err(bad("node.crt", &"not a quizfs node certificate")),
        }
        let verifier = Arc::new(ReloadingVerifier::new(
            Arc::new(roots),
            files.dir.join(CRL),
        )?);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError(e.to_string()))?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(certs, key)
            .map_err(|e| bad("node.crt/node.key", &e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            verifier,
            volume: volume.to_string(),
        })
    }

    /// Reloads the revocation list whenever its file changes, until `stop`.
    pub async fn watch_crl(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(CRL_POLL);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.verifier.reload_if_changed(),
            }
        }
    }

    /// Who the holder of `cert` is and its serial number, or why it may not
    /// use this node.
    fn identify(
        &self,
        cert: Option<&CertificateDer<'_>>,
    ) -> Result<(CertIdentity, Vec<u8>), String> {
        let cert = cert.ok_or("no client certificate")?;
        let serial = webpki::EndEntityCert::try_from(cert)
            .map_err(|e| format!("bad certificate: {e}"))?
            .serial()
            .to_vec();
        let id = identity_of(cert).ok_or("certificate carries no quizfs identity")?;
        if let CertIdentity::Client { volumes, .. } = &id {
            if !volumes.contains(&self.volume) {
                return Err(format!(
                    "certificate of client {} is for volumes {volumes:?}, this node serves {:?}",
                    id.name(),
                    self.volume
                ));
            }
        }
        Ok((id, serial))
    }

    /// Whether the revocation list in force revokes `serial`.
    fn is_revoked(&self, serial: &[u8]) -> bool {
        self.verifier.is_revoked(serial)
    }
}

/// The identity a certificate's URI names, if any.
fn identity_of(cert: &CertificateDer<'_>) -> Option<CertIdentity> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    // Bound to a local: the iterator borrows `ee`, which must outlive it.
    let found = ee.valid_uri_names().find_map(CertIdentity::from_uri);
    found
}

/// A client-certificate verifier whose CA is fixed and whose revocation list
/// is replaced when `crl.pem` changes.
#[derive(Debug)]
struct ReloadingVerifier {
    roots: Arc<RootCertStore>,
    hints: Vec<DistinguishedName>,
    crl_path: PathBuf,
    current: RwLock<Current>,
}

/// The revocation list in force: its file's stamp, the verifier built
/// from it, and the serial numbers it revokes.
#[derive(Debug)]
struct Current {
    stamp: Option<(SystemTime, u64)>,
    verifier: Arc<dyn ClientCertVerifier>,
    revoked: HashSet<Vec<u8>>,
}

impl ReloadingVerifier {
    fn new(roots: Arc<RootCertStore>, crl_path: PathBuf) -> Result<Self, TlsSetupError> {
        let stamp = file_stamp(&crl_path);
        let (verifier, revoked) = build_verifier(&roots, &crl_path).map_err(TlsSetupError)?;
        if stamp.is_some() {
            tracing::info!(path = %crl_path.display(), revoked = revoked.len(), "revocation list loaded");
        }
        Ok(Self {
            hints: roots.subjects(),
            roots,
            crl_path,
            current: RwLock::new(Current {
                stamp,
                verifier,
                revoked,
            }),
        })
    }

    fn get(&self) -> Arc<dyn ClientCertVerifier> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .verifier
            .clone()
    }

    /// Whether the list in force revokes the certificate with `serial`.
    fn is_revoked(&self, serial: &[u8]) -> bool {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .revoked
            .contains(serial)
    }

    fn reload_if_changed(&self) {
        let stamp = file_stamp(&self.crl_path);
        let old = self.current.read().unwrap_or_else(|p| p.into_inner()).stamp;
        if stamp == old {
            return;
        }
        match build_verifier(&self.roots, &self.crl_path) {
            Ok((verifier, revoked)) => {
                tracing::info!(path = %self.crl_path.display(), revoked = revoked.len(), "revocation list reloaded");
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Current {
                    stamp,
                    verifier,
                    revoked,
                };
            }
            Err(e) => {
                // Keep the old list, and do not retry until the file changes again.
                self.current
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .stamp = stamp;
                tracing::error!("{e}; keeping the previous revocation list");
            }
        }
    }
}

/// Modification time and length of a file, to notice it changed.
fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Serial numbers of revoked certificates.
type Revoked = HashSet<Vec<u8>>;

/// The verifier for `roots` and the revocation list at `crl_path` (none if
/// the file is absent), and the serial numbers that list revokes.
fn build_verifier(
    roots: &Arc<RootCertStore>,
    crl_path: &Path,
) -> Result<(Arc<dyn ClientCertVerifier>, Revoked), String> {
    let crls: Vec<CertificateRevocationListDer<'static>> = match std::fs::read(crl_path) {
        Ok(pem) => rustls_pemfile::crls(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("cannot parse {}: {e}", crl_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", crl_path.display())),
    };
    let mut revoked = HashSet::new();
    for crl in &crls {
        let list = webpki::BorrowedCertRevocationList::from_der(crl)
            .map_err(|e| format!("cannot parse {}: {e}", crl_path.display()))?;
        for entry in &list {
            let entry = entry.map_err(|e| format!("cannot parse {}: {e}", crl_path.display()))?;
            revoked.insert(entry.serial_number.to_vec());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider)
        .with_crls(crls)
        .only_check_end_entity_revocation()
        .build()
        .map_err(|e| format!("revocation list {}: {e}", crl_path.display()))?;
    Ok((verifier, revoked))
}

impl ClientCertVerifier for ReloadingVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.get()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.get().supported_verify_schemes()
    }
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The peer's address.
    pub remote: Option<SocketAddr>,
    /// What its certificate says; `None` on a plaintext (`--insecure`) node,
    /// where every peer may do everything.
    pub id: Option<CertIdentity>,
    /// The certificate's serial number (empty in plaintext).
    pub serial: Vec<u8>,
}

impl std::fmt::Display for PeerInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.id {
            None => write!(f, "plaintext peer")?,
            Some(CertIdentity::Node { name }) => write!(f, "node {name}")?,
            Some(CertIdentity::Client {
                name, read_only, ..
            }) => write!(
                f,
                "client {name} ({})",
                if *read_only {
                    "read-only"
                } else {
                    "read-write"
                }
            )?,
        }
        if let Some(a) = self.remote {
            write!(f, " at {a}")?;
        }
        Ok(())
    }
}

/// An accepted connection, plaintext or TLS, with who is behind it.
pub struct Conn {
    io: Box<dyn Io>,
    info: PeerInfo,
    /// Notified when the connection is dropped.
    closed: Arc<tokio::sync::Notify>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.closed.notify_one();
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The connections to serve: every accepted TCP connection, after a TLS
/// handshake (each in its own task, so a slow peer delays no one) and the
/// identity check when `tls` is set. A refused peer is logged in one line
/// and dropped.
pub fn incoming(
    tcp: impl tokio_stream::Stream<Item = std::io::Result<TcpStream>> + Send + 'static,
    tls: Option<Arc<ServerTls>>,
    closed: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) -> impl tokio_stream::Stream<Item = std::io::Result<Conn>> {
    use tokio_stream::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Conn>>(64);
    tokio::spawn(async move {
        let mut tcp = std::pin::pin!(tcp);
        loop {
            let conn = tokio::select! {
                _ = stop.cancelled() => return,
                c = tcp.next() => match c {
                    Some(c) => c,
                    None => return,
                },
            };
            let stream = match conn {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "accept");
                    continue;
                }
            };
            let remote = stream.peer_addr().ok();
            let Some(tls) = tls.clone() else {
                let conn = Conn {
                    io: Box::new(stream),
                    info: PeerInfo {
                        remote,
                        id: None,
                        serial: Vec::new(),
                    },
                    closed: closed.clone(),
                };
                if tx.send(Ok(conn)).await.is_err() {
                    return;
                }
                continue;
            };
            let tx = tx.clone();
            let closed = closed.clone();
            tokio::spawn(async move {
                let who = remote.map_or_else(|| "?".to_string(), |a| a.to_string());
                let accepted =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream)).await;
                let stream = match accepted {
                    Err(_) => {
                        tracing::warn!("refused {who}: TLS handshake timed out");
                        return;
                    }
                    Ok(Err(e)) => {
                        let why = e.to_string();
                        if e.kind() == std::io::ErrorKind::UnexpectedEof {
                            // Closed before a byte: a port probe
                            // (raft/leader_gone.rs) or a scanner.
                            tracing::debug!("{who} closed before the TLS handshake");
                        } else if why.contains("InvalidContentType") {
                            tracing::warn!(
                                "refused {who}: not a TLS connection (a client or node run with --insecure?)"
                            );
                        } else {
                            tracing::warn!("refused {who}: {why}");
                        }
                        return;
                    }
                    Ok(Ok(s)) => s,
                };
                let cert = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first());
                match tls.identify(cert) {
                    Ok((id, serial)) => {
                        let conn = Conn {
                            io: Box::new(stream),
                            info: PeerInfo {
                                remote,
                                id: Some(id),
                                serial,
                            },
                            closed,
                        };
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Err(why) => tracing::warn!("refused {who}: {why}"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// What an RPC needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Any certificate this node accepted.
    Read,
    /// A node or a read-write client.
    Write,
    /// A node: Raft, joining.
    Node,
}

/// What calling `path` (`/package.Service/Method`) needs. Unknown paths
/// need a node, so a new RPC is closed until it is listed here.
fn need(path: &str) -> Need {
    let method = path.trim_start_matches('/');
    let (service, method) = method.rsplit_once('/').unwrap_or((method, ""));
    let service = service.rsplit('.').next().unwrap_or(service);
    match (service, method) {
        ("Meta", "Apply")
        | ("Chunks", "Put")
        | ("Cluster", "ScrubStart" | "AddNode" | "RemoveNode" | "ReplaceNode") => Need::Write,
        ("Meta", _) | ("Chunks", "Get" | "GetRange" | "Has") => Need::Read,
        ("Cluster", "Probe" | "Members" | "Ping" | "NodeStatus" | "HealInfo" | "ScrubStatus") => {
            Need::Read
        }
        _ => Need::Node,
    }
}

/// Whether `peer` may call `path`: `Err` says why not.
fn authorize(peer: &PeerInfo, path: &str) -> Result<(), String> {
    let need = need(path);
    let ok = match (&peer.id, need) {
        (None, _) => true,
        (Some(CertIdentity::Node { .. }), _) => true,
        (Some(CertIdentity::Client { .. }), Need::Read) => true,
        (Some(CertIdentity::Client { read_only, .. }), Need::Write) => !read_only,
        (Some(CertIdentity::Client { .. }), Need::Node) => false,
    };
    if ok {
        return Ok(());
    }
    Err(match need {
        Need::Node => format!("{path} is for storage nodes only"),
        _ => format!("{path} needs a read-write certificate"),
    })
}

/// A gRPC service wrapped so that every call is authorized by the caller's
/// certificate first (its role, and that it has not been revoked since the
/// connection opened); a refused call gets PERMISSION_DENIED, and the node
/// logs one line saying who and why.
#[derive(Debug, Clone)]
pub struct Authorized<S> {
    inner: S,
    tls: Option<Arc<ServerTls>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl<S> Authorized<S> {
    /// Wraps `inner`; `tls` is the node's TLS set-up (`None`: plaintext);
    /// every call is timed and counted in `metrics`.
    pub fn new(
        inner: S,
        tls: Option<Arc<ServerTls>>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self {
            inner,
            tls,
            metrics,
        }
    }
}

impl<S: NamedService> NamedService for Authorized<S> {
    const NAME: &'static str = S::NAME;
}

type Response = http::Response<tonic::body::BoxBody>;

impl<S, B> Service<http::Request<B>> for Authorized<S>
where
    S: Service<http::Request<B>, Response = Response, Error = std::convert::Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Response, std::convert::Infallible>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let refused = match req.extensions().get::<PeerInfo>() {
            Some(peer) => {
                let revoked = peer.id.is_some()
                    && self
                        .tls
                        .as_ref()
                        .is_some_and(|t| t.is_revoked(&peer.serial));
                if revoked {
                    Some((peer.to_string(), "certificate Revoked".to_string()))
                } else {
                    authorize(peer, req.uri().path())
                        .err()
                        .map(|why| (peer.to_string(), why))
                }
            }
            None => Some(("unknown peer".to_string(), "no connection info".to_string())),
        };
        if let Some((who, why)) = refused {
            tracing::warn!("refused {who}: {why}");
            self.metrics.tls_refusals.inc();
            let status = tonic::Status::permission_denied(why);
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let method = req.uri().path().to_string();
        let metrics = self.metrics.clone();
        let began = std::time::Instant::now();
        let call = self.inner.call(req);
        Box::pin(async move {
            let r = call.await;
            if let Ok(resp) = &r {
                crate::metrics::observe_call(&metrics, method, began.elapsed(), resp.headers());
            }
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: Option<CertIdentity>) -> PeerInfo {
        PeerInfo {
            remote: None,
            id,
            serial: Vec::new(),
        }
    }

    #[test]
    fn rpcs_need_the_right_role() {
        let node = peer(Some(CertIdentity::Node {
            name: "nas1".into(),
        }));
        let rw = peer(Some(CertIdentity::Client {
            name: "s1".into(),
            read_only: false,
            volumes: vec!["nas".into()],
        }));
        let ro = peer(Some(CertIdentity::Client {
            name: "s2".into(),
            read_only: true,
            volumes: vec!["nas".into()],
        }));
        let plain = peer(None);
        let cases = [
            (
                "/quizfs.v1.RaftTransport/AppendEntries",
                [true, false, false, true],
            ),
            ("/quizfs.v1.Cluster/Join", [true, false, false, true]),
            ("/quizfs.v1.Cluster/Members", [true, true, true, true]),
            ("/quizfs.v1.Meta/Apply", [true, true, false, true]),
            ("/quizfs.v1.Meta/Lookup", [true, true, true, true]),
            ("/quizfs.v1.Chunks/Put", [true, true, false, true]),
            ("/quizfs.v1.Chunks/Get", [true, true, true, true]),
            ("/quizfs.v1.Chunks/GetRange", [true, true, true, true]),
            ("/quizfs.v1.Cluster/ScrubStatus", [true, true, true, true]),
            ("/quizfs.v1.Cluster/ScrubStart", [true, true, false, true]),
            ("/quizfs.v1.Cluster/RemoveNode", [true, true, false, true]),
            ("/quizfs.v1.Chunks/Has", [true, true, true, true]),
            ("/quizfs.v1.Unknown/Thing", [true, false, false, true]),
        ];
        for (path, want) in cases {
            for (p, w) in [&node, &rw, &ro, &plain].into_iter().zip(want) {
                assert_eq!(authorize(p, path).is_ok(), w, "{p} calling {path}");
            }
        }
    }
}
