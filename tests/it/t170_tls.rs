//! Mutual TLS and authorization against real nodes: a client without a
//! certificate, with an expired one, one from another CA, one for another
//! volume and one revoked while connected are refused, and each refusal is
//! one line in the node's log; a client certificate cannot call Raft; a
//! read-only certificate reads but cannot write, also through a mount; and
//! an `--insecure` cluster says so in `quizfs status`.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use quizfs::cert::{Ca, Validity};
use quizfs::client::{ClientOptions, ClusterClient, membership};
use quizfs_proto::tls::{Role, TlsFiles, Transport};
use quizfs_proto::{
    self as pb, ROOT_INO, cluster_client::ClusterClient as ClusterRpc,
    raft_transport_client::RaftTransportClient,
};
use quizfs_tests::{Cluster, Mount, bin, wait_until};

fn transport(dir: &std::path::Path) -> Transport {
    Transport::Tls(Arc::new(
        TlsFiles::load(dir, Role::Client, "-o insecure").unwrap(),
    ))
}

/// Asks node `addr` for the members over `transport`: `Err` carries the
/// whole error chain.
async fn members(addr: &str, transport: &Transport) -> Result<pb::MembersReply, String> {
    let ch = membership::channel(addr, transport).map_err(|e| e.to_string())?;
    let mut rpc = ClusterRpc::new(ch);
    let call = rpc.members(pb::MembersRequest {
        volume: "nas".into(),
    });
    match tokio::time::timeout(Duration::from_secs(5), call).await {
        Err(_) => Err("timed out".into()),
        Ok(r) => r
            .map(|r| r.into_inner())
            .map_err(|s| membership::status_detail(&s)),
    }
}

/// Waits until node `i`'s log has a line containing every one of `words`
/// (in any case).
async fn log_line(cluster: &Cluster, i: usize, words: &[&str]) -> String {
    wait_until(
        Duration::from_secs(10),
        &format!("a log line with {words:?}"),
        || async {
            let log = std::fs::read_to_string(&cluster.nodes[i].log).unwrap_or_default();
            log.lines()
                .find(|l| {
                    let l = l.to_lowercase();
                    words.iter().all(|w| l.contains(&w.to_lowercase()))
                })
                .map(str::to_string)
                .ok_or_else(|| "not yet".to_string())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_valid_certificates_get_in_and_each_only_as_far_as_its_role() {
    let cluster = Cluster::start(3, &[]).await;
    let ca = Ca::open(cluster.ca.as_ref().unwrap()).unwrap();
    let addr = cluster.addr(0);
    let nas = ["nas".to_string()];

    // The harness's own client certificate works.
    members(&addr, &cluster.transport()).await.unwrap();

    // Plaintext to a TLS node gets nothing.
    let err = members(&addr, &Transport::Insecure).await.unwrap_err();
    println!("plaintext: {err}");
    println!(
        "{}",
        log_line(&cluster, 0, &["refused", "not a TLS connection"]).await
    );

    // No client certificate: the CA alone.
    let ca_only = tonic::transport::ClientTlsConfig::new().ca_certificate(
        tonic::transport::Certificate::from_pem(std::fs::read(ca.dir().join("ca.crt")).unwrap()),
    );
    let ch = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(ca_only)
        .unwrap()
        .connect_lazy();
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        ClusterRpc::new(ch).members(pb::MembersRequest {
            volume: "nas".into(),
        }),
    )
    .await
    .expect("refused promptly");
    let err = membership::status_detail(&r.unwrap_err());
    println!("no certificate: {err}");
    println!(
        "{}",
        log_line(&cluster, 0, &["refused", "no certificates"]).await
    );

    // Expired.
    let dir = ca
        .issue_client("expired", false, &nas, Validity::expired())
        .unwrap();
    let err = members(&addr, &transport(&dir)).await.unwrap_err();
    println!("expired: {err}");
    println!("{}", log_line(&cluster, 0, &["refused", "Expired"]).await);

    // From another CA (a CA of the same shape, made the same way).
    let other_dir = tempfile::tempdir().unwrap();
    quizfs::cert::init(&other_dir.path().join("ca"), &["127.0.0.21".into()], 1, 1).unwrap();
    let other = Ca::open(&other_dir.path().join("ca")).unwrap();
    let dir = other
        .issue_client("stranger", false, &nas, Validity::days(1))
        .unwrap();
    // It trusts this cluster's nodes, so only its own certificate is wrong.
    std::fs::copy(ca.dir().join("ca.crt"), dir.join("ca.crt")).unwrap();
    let err = members(&addr, &transport(&dir)).await.unwrap_err();
    println!("other CA: {err}");
    println!(
        "{}",
        log_line(&cluster, 0, &["refused", "UnknownIssuer"]).await
    );

    // For another volume.
    let dir = ca
        .issue_client("elsewhere", false, &["photos".into()], Validity::days(1))
        .unwrap();
    let err = members(&addr, &transport(&dir)).await.unwrap_err();
    println!("other volume: {err}");
    println!(
        "{}",
        log_line(&cluster, 0, &["refused", "client elsewhere", "photos"]).await
    );

    // A client certificate cannot call Raft, and the refusal is logged
    // with who and why.
    let mut raft =
        RaftTransportClient::new(membership::channel(&addr, &cluster.transport()).unwrap());
    let status = raft
        .append_entries(pb::RaftBytes { data: Vec::new() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    println!(
        "{}",
        log_line(&cluster, 0, &["refused client test", "storage nodes only"]).await
    );

    // A read-only certificate reads but cannot write.
    let dir = ca
        .issue_client("reader", true, &nas, Validity::days(1))
        .unwrap();
    let writer = cluster.client().await;
    writer.mkdir(ROOT_INO, b"shared", 0o755).await.unwrap();
    let reader = ClusterClient::connect(
        std::slice::from_ref(&addr),
        ClientOptions {
            transport: transport(&dir),
            ..ClientOptions::default()
        },
    )
    .await
    .unwrap();
    reader.lookup(ROOT_INO, b"shared").await.unwrap();
    let err = reader
        .mkdir(ROOT_INO, b"not-allowed", 0o755)
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc::EACCES, "{err}");
    let names = quizfs_tests::names(&writer, ROOT_INO).await;
    assert!(!names.contains(&"not-allowed".to_string()), "state changed");
    // Through a mount: reading works, creating a file fails with EACCES.
    let m = Mount::with_spec(
        &format!("{addr}:/nas"),
        &format!("tls_dir={}", dir.display()),
    )
    .await;
    assert!(m.join("shared").is_dir());
    let e = std::fs::write(m.join("x.jpg"), b"data").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    drop(m);

    // Revoked while connected: the next call on the open connection is
    // refused once the node has reloaded the list, and so is a new one.
    let dir = ca
        .issue_client("leaver", false, &nas, Validity::days(1))
        .unwrap();
    let leaver = transport(&dir);
    let ch = membership::channel(&addr, &leaver).unwrap();
    let mut open = ClusterRpc::new(ch);
    let ask = pb::MembersRequest {
        volume: "nas".into(),
    };
    open.members(ask.clone()).await.unwrap();
    assert_eq!(ca.revoke_client("leaver").unwrap(), 1);
    wait_until(
        Duration::from_secs(10),
        "the open connection refused",
        || {
            let mut open = open.clone();
            let ask = ask.clone();
            async move {
                match open.members(ask).await {
                    Err(s) if s.code() == tonic::Code::PermissionDenied => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    let err = members(&addr, &leaver).await.unwrap_err();
    println!("revoked: {err}");
    println!("{}", log_line(&cluster, 0, &["refused", "Revoked"]).await);

    // The mount reports a refused certificate in one clear line.
    let dir = ca
        .issue_client("late", false, &nas, Validity::expired())
        .unwrap();
    let mp = tempfile::tempdir().unwrap();
    let out = Command::new(bin("quizfs"))
        .args(["mount", &format!("{addr}:/nas")])
        .arg(mp.path())
        .args(["-o", &format!("tls_dir={}", dir.display())])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    println!("mount with an expired certificate: {text}");
    assert!(!out.status.success());
    assert!(text.contains("no quizfs server reachable"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insecure_cluster_warns_in_status_and_log() {
    let cluster = Cluster::start(3, &["--insecure"]).await;
    assert!(cluster.ca.is_none());
    let out = Command::new(bin("quizfs"))
        .args(["status", &cluster.addr(0), "--insecure"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("WARNING: insecure"), "{text}");
    log_line(&cluster, 0, &["WARN", "--insecure"]).await;
    // Without --insecure, status looks for a client certificate and says
    // how to get one.
    let out = Command::new(bin("quizfs"))
        .args([
            "status",
            &cluster.addr(0),
            "--tls-dir",
            "/nonexistent/quizfs",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("quizfs cert client"), "{err}");
}
