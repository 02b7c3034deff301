//! Bad inputs get clear errors and change nothing: bad names, a chunk whose
//! content does not match its hash, a message over the size limit, unknown
//! inodes, bad flags of storaged.

use std::process::Command;
use std::time::{Duration, Instant};

use quizfs_proto::{self as pb, ChunkHash, ROOT_INO, chunks_client::ChunksClient};
use quizfs_tests::{Cluster, bin, errno};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_and_change_nothing() {
    let cluster = Cluster::start(3, &[]).await;
    let c = cluster.client().await;
    c.create_file(ROOT_INO, b"keep.jpg", b"kept").await.unwrap();
    let before = c.readdir_all(ROOT_INO).await.unwrap();
    let long = vec![b'a'; 256];
    for (name, want) in [
        (b"a/b".as_slice(), libc::EINVAL),
        (b"nul\0name", libc::EINVAL),
        (b".", libc::EINVAL),
        (b"..", libc::EINVAL),
        (b"", libc::EINVAL),
        (long.as_slice(), libc::ENAMETOOLONG),
    ] {
        assert_eq!(
            errno(c.create(ROOT_INO, name, 0o644, true).await),
            want,
            "create {name:?}"
        );
        assert_eq!(
            errno(c.mkdir(ROOT_INO, name, 0o755).await),
            want,
            "mkdir {name:?}"
        );
        assert_eq!(
            errno(c.symlink(ROOT_INO, name, b"t").await),
            want,
            "symlink {name:?}"
        );
        assert_eq!(
            errno(c.rename(ROOT_INO, b"keep.jpg", ROOT_INO, name, 0).await),
            want,
            "rename {name:?}"
        );
    }
    // 255 bytes is fine.
    c.create(ROOT_INO, &vec![b'b'; 255], 0o644, true)
        .await
        .unwrap();
    c.unlink(ROOT_INO, &vec![b'b'; 255]).await.unwrap();
    // Unknown inodes.
    assert_eq!(errno(c.getattr(424_242).await), libc::ENOENT);
    assert_eq!(
        errno(
            c.setattr(pb::SetAttr {
                ino: 424_242,
                mode: Some(0o600),
                ..Default::default()
            })
            .await
        ),
        libc::ENOENT
    );
    assert_eq!(
        errno(c.commit_extents(424_242, vec![], 0, None, Vec::new()).await),
        libc::ENOENT
    );
    // Extents that reach past the size or their chunk, overlap, or name a
    // malformed hash; more extents than one commit may carry.
    let keep = c.lookup(ROOT_INO, b"keep.jpg").await.unwrap();
    let ext = |offset, len, at, hash: Vec<u8>| pb::Extent {
        offset,
        len,
        hash,
        at,
    };
    let bad_lists = [
        vec![ext(0, 10, 0, vec![1; 7])],
        vec![ext(0, 11, 0, vec![1; 32])],
        vec![ext(0, 10, (4 << 20) - 4, vec![1; 32])],
        vec![ext(0, 6, 0, vec![1; 32]), ext(5, 4, 0, vec![1; 32])],
        vec![ext(0, 0, 0, vec![1; 32])],
    ];
    for bad in bad_lists {
        assert_eq!(
            errno(
                c.commit_extents(keep.ino, bad.clone(), 10, None, Vec::new())
                    .await
            ),
            libc::EINVAL,
            "{bad:?}"
        );
    }
    let too_many: Vec<pb::Extent> = (0..8193).map(|i| ext(i, 1, 0, vec![1; 32])).collect();
    assert_eq!(
        errno(
            c.commit_extents(keep.ino, too_many, 9000, None, Vec::new())
                .await
        ),
        libc::E2BIG
    );
    // Sizes beyond the largest file, an oversized xattr value.
    let too_big = pb::MAX_FILE_SIZE + 1;
    assert_eq!(
        errno(
            c.setattr(pb::SetAttr {
                ino: keep.ino,
                size: Some(too_big),
                ..Default::default()
            })
            .await
        ),
        libc::EFBIG
    );
    assert_eq!(
        errno(
            c.commit_extents(keep.ino, vec![], too_big, None, Vec::new())
                .await
        ),
        libc::EFBIG
    );
    assert_eq!(
        errno(
            c.commit_extents(keep.ino, vec![], u64::MAX, None, Vec::new())
                .await
        ),
        libc::EFBIG
    );
    // A truncation point past the size the commit sets.
    assert_eq!(
        errno(
            c.commit_extents(keep.ino, vec![], 10, Some(11), Vec::new())
                .await
        ),
        libc::EINVAL
    );
    // More file data inside one commit than it may carry, or an empty
    // carried chunk.
    let over = vec![
        vec![7; pb::MAX_INLINE_BYTES / 2],
        vec![8; pb::MAX_INLINE_BYTES / 2 + 1],
    ];
    assert_eq!(
        errno(c.commit_extents(keep.ino, vec![], 10, None, over).await),
        libc::E2BIG
    );
    assert_eq!(
        errno(
            c.commit_extents(keep.ino, vec![], 10, None, vec![Vec::new()])
                .await
        ),
        libc::EINVAL
    );
    assert_eq!(
        errno(
            c.setxattr(keep.ino, b"user.big", &vec![0; 65 * 1024], 0)
                .await
        ),
        libc::E2BIG
    );
    assert!(c.listxattr(keep.ino).await.unwrap().is_empty());
    assert_eq!(c.getattr(keep.ino).await.unwrap().size, 4);
    assert_eq!(c.read_file(keep.ino).await.unwrap(), b"kept");
    assert_eq!(c.readdir_all(ROOT_INO).await.unwrap(), before);

    // A chunk whose content does not match its hash is refused, not stored.
    let ch = quizfs::client::membership::channel(&cluster.addr(0), &cluster.transport()).unwrap();
    let mut chunks = ChunksClient::new(ch);
    let claimed = ChunkHash::of(b"the real content");
    let lie = tokio_stream::iter(vec![pb::PutPiece {
        hash: claimed.0.to_vec(),
        data: pb::Bytes::from_static(b"something else"),
    }]);
    let err = chunks.put(lie).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("hashes to"), "{}", err.message());
    assert!(!cluster.chunk_path(0, &claimed).exists());
    // A message over the size limit is refused.
    let huge = tokio_stream::iter(vec![pb::PutPiece {
        hash: claimed.0.to_vec(),
        data: vec![0; 2 * pb::MAX_MESSAGE_BYTES].into(),
    }]);
    let err = chunks.put(huge).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::Internal
        ),
        "{err:?}"
    );
    assert!(!cluster.chunk_path(0, &claimed).exists());
    // Asking for a chunk nobody has.
    let err = c
        .get_chunk_from(&cluster.addr(0), ChunkHash::of(b"nowhere"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not stored"), "{err}");
}

fn run_storaged(args: &[&str]) -> (Option<i32>, String, Duration) {
    let start = Instant::now();
    let out = Command::new(bin("storaged"))
        .args(args)
        .output()
        .expect("run storaged");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
        start.elapsed(),
    )
}

#[test]
fn storaged_refuses_bad_flags_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let dir = dir.to_str().unwrap();
    let (code, err, took) = run_storaged(&[
        "--peers",
        "127.0.0.21,127.0.0.22",
        "--listen",
        "127.0.0.29",
        "--data-dir",
        dir,
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("is not in --peers"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(took < Duration::from_secs(5));
    let (code, err, _) = run_storaged(&["--peers", "127.0.0.21,127.0.0.21", "--data-dir", dir]);
    assert_eq!(code, Some(2));
    assert!(err.contains("listed twice"), "{err}");
    let (code, err, _) = run_storaged(&["--peers", "127.0.0.21:notaport", "--data-dir", dir]);
    assert_eq!(code, Some(2));
    assert!(err.contains("invalid peer"), "{err}");
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let (code, err, _) = run_storaged(&[
        "--peers",
        "127.0.0.21",
        "--listen",
        "127.0.0.21",
        "--data-dir",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not writable"), "{err}");
    let (code, err, _) = run_storaged(&["--peers", "127.0.0.21", "--bogus"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--bogus"), "{err}");
    // --join instead of --peers, never both, never neither, never itself.
    let (code, err, _) = run_storaged(&["--peers", "127.0.0.21", "--join", "127.0.0.22"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--join") && err.contains("--peers"), "{err}");
    let (code, err, _) = run_storaged(&["--data-dir", dir]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--peers"), "{err}");
    let (code, err, _) = run_storaged(&[
        "--join",
        "127.0.0.21:7420",
        "--listen",
        "127.0.0.21:7420",
        "--data-dir",
        dir,
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--join names this node itself"), "{err}");
    for flag in ["--scrub-interval", "--session-timeout", "--voters"] {
        for bad in ["7x", "d", "0s", "99999999999999999d"] {
            let (code, err, _) = run_storaged(&["--peers", "127.0.0.21", flag, bad]);
            assert_eq!(code, Some(2), "{flag} {bad}");
            assert!(err.contains(flag), "{flag} {bad}: {err}");
        }
    }
    let (code, err, _) = run_storaged(&[
        "--peers",
        "127.0.0.21",
        "--listen",
        "127.0.0.21",
        "--data-dir",
        dir,
        "--insecure",
        "--metrics-listen",
        "nowhere",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("invalid --metrics-listen"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // A metrics port given but taken stops the start, in one line.
    let taken = std::net::TcpListener::bind("127.0.0.29:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let port = std::net::TcpListener::bind("127.0.0.29:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, err, took) = run_storaged(&[
        "--peers",
        &format!("127.0.0.29:{port}"),
        "--listen",
        &format!("127.0.0.29:{port}"),
        "--data-dir",
        dir,
        "--insecure",
        "--metrics-listen",
        &busy,
    ]);
    assert_ne!(code, Some(0));
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("cannot listen for metrics on") && last.contains(&busy),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    drop(taken);

    // Without certificates a node refuses to start, and says how to make
    // them; with another node's certificate it refuses too.
    let none = tmp.path().join("no-tls");
    let with_tls = |peers: &str, tls: &std::path::Path| {
        let tls = tls.to_str().unwrap();
        run_storaged(&[
            "--peers",
            peers,
            "--listen",
            "127.0.0.21",
            "--data-dir",
            dir,
            "--tls-dir",
            tls,
        ])
    };
    let (code, err, _) = with_tls("127.0.0.21", &none);
    assert_eq!(code, Some(2));
    assert!(err.contains("quizfs cert init"), "{err}");
    assert!(err.contains("--insecure"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let ca = tmp.path().join("ca");
    quizfs::cert::init(&ca, &["127.0.0.21".into(), "127.0.0.22".into()], 1, 1).unwrap();
    let other = ca.join("nodes").join("127.0.0.22");
    let (code, err, _) = with_tls("127.0.0.21,127.0.0.22", &other);
    assert_ne!(code, Some(0));
    assert!(err.contains("node 127.0.0.22's"), "{err}");
}
