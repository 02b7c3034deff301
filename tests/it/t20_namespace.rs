//! Every namespace command returns the errno a kernel would and changes
//! nothing when it fails; link counts and sizes are maintained.

use quizfs::client::meta::{RENAME_EXCHANGE, RENAME_NOREPLACE};
use quizfs_proto::{self as pb, ROOT_INO};
use quizfs_tests::{Cluster, errno, names, pattern};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_commands_follow_posix() {
    let cluster = Cluster::start(3, &[]).await;
    let c = cluster.client().await;

    let d = c.mkdir(ROOT_INO, b"uploads", 0o755).await.unwrap();
    assert_eq!(d.nlink, 2);
    assert_eq!(c.getattr(ROOT_INO).await.unwrap().nlink, 3);
    assert_eq!(
        errno(c.mkdir(ROOT_INO, b"uploads", 0o755).await),
        libc::EEXIST
    );
    let f = c.create(d.ino, b"a.jpg", 0o644, true).await.unwrap();
    assert_eq!(
        errno(c.create(d.ino, b"a.jpg", 0o644, true).await),
        libc::EEXIST
    );
    // O_CREAT without O_EXCL opens the existing file.
    assert_eq!(
        c.create(d.ino, b"a.jpg", 0o644, false).await.unwrap().ino,
        f.ino
    );
    assert_eq!(
        errno(c.create(f.ino, b"x", 0o644, true).await),
        libc::ENOTDIR
    );
    assert_eq!(
        errno(c.create(999_999, b"x", 0o644, true).await),
        libc::ENOENT
    );
    assert_eq!(errno(c.lookup(d.ino, b"missing").await), libc::ENOENT);
    assert_eq!(errno(c.rmdir(ROOT_INO, b"uploads").await), libc::ENOTEMPTY);
    assert_eq!(errno(c.unlink(ROOT_INO, b"uploads").await), libc::EISDIR);
    assert_eq!(errno(c.rmdir(d.ino, b"a.jpg").await), libc::ENOTDIR);

    // Writes, truncation down and up (the cut bytes read back as zeros).
    let data = pattern(7, 5 * 1024 * 1024);
    c.write_bytes(f.ino, &data).await.unwrap();
    let t = c
        .setattr(pb::SetAttr {
            ino: f.ino,
            size: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(t.size, 1000);
    c.setattr(pb::SetAttr {
        ino: f.ino,
        size: Some(3000),
        ..Default::default()
    })
    .await
    .unwrap();
    let back = c.read_file(f.ino).await.unwrap();
    assert_eq!(&back[..1000], &data[..1000]);
    assert!(back[1000..].iter().all(|b| *b == 0) && back.len() == 3000);
    let m = c
        .setattr(pb::SetAttr {
            ino: f.ino,
            mode: Some(0o600),
            uid: Some(33),
            gid: Some(33),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((m.mode & 0o7777, m.uid, m.gid), (0o600, 33, 33));
    assert_eq!(m.mode & libc::S_IFMT, libc::S_IFREG);
    let t = c
        .setattr(pb::SetAttr {
            ino: f.ino,
            mtime: Some(pb::SetTime {
                now: false,
                ns: 1_234_567_891,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(t.mtime_ns, 1_234_567_891);
    assert_eq!(
        errno(
            c.setattr(pb::SetAttr {
                ino: d.ino,
                size: Some(0),
                ..Default::default()
            })
            .await
        ),
        libc::EISDIR
    );

    // Hard links and symlinks.
    let l = c.link(f.ino, ROOT_INO, b"hard").await.unwrap();
    assert_eq!(l.nlink, 2);
    assert_eq!(
        errno(c.link(d.ino, ROOT_INO, b"dirlink").await),
        libc::EPERM
    );
    let s = c.symlink(ROOT_INO, b"sym", b"uploads/a.jpg").await.unwrap();
    assert_eq!(c.readlink(s.ino).await.unwrap(), b"uploads/a.jpg");
    assert_eq!(errno(c.readlink(f.ino).await), libc::EINVAL);
    c.unlink(ROOT_INO, b"hard").await.unwrap();
    assert_eq!(c.getattr(f.ino).await.unwrap().nlink, 1);

    // Renames: over a file, no-replace, exchange, directories, into itself.
    let g = c.create_file(d.ino, b"b.jpg", b"bbb").await.unwrap();
    assert_eq!(
        errno(
            c.rename(d.ino, b"a.jpg", d.ino, b"b.jpg", RENAME_NOREPLACE)
                .await
        ),
        libc::EEXIST
    );
    c.rename(d.ino, b"a.jpg", d.ino, b"b.jpg", RENAME_EXCHANGE)
        .await
        .unwrap();
    assert_eq!(c.lookup(d.ino, b"a.jpg").await.unwrap().ino, g.ino);
    assert_eq!(c.lookup(d.ino, b"b.jpg").await.unwrap().ino, f.ino);
    c.rename(d.ino, b"a.jpg", d.ino, b"b.jpg", 0).await.unwrap();
    assert_eq!(c.lookup(d.ino, b"b.jpg").await.unwrap().ino, g.ino);
    assert_eq!(
        errno(c.getattr(f.ino).await),
        libc::ENOENT,
        "the replaced file is gone"
    );
    assert_eq!(names(&c, d.ino).await, vec!["b.jpg"]);
    let sub = c.mkdir(d.ino, b"sub", 0o755).await.unwrap();
    assert_eq!(
        errno(c.rename(ROOT_INO, b"uploads", sub.ino, b"loop", 0).await),
        libc::EINVAL
    );
    assert_eq!(
        errno(c.rename(ROOT_INO, b"uploads", d.ino, b"self", 0).await),
        libc::EINVAL
    );
    assert_eq!(
        errno(c.rename(d.ino, b"b.jpg", ROOT_INO, b"uploads", 0).await),
        libc::EISDIR
    );
    assert_eq!(
        errno(c.rename(d.ino, b"sub", ROOT_INO, b"sym", 0).await),
        libc::ENOTDIR
    );
    c.rename(d.ino, b"sub", ROOT_INO, b"moved", 0)
        .await
        .unwrap();
    assert_eq!(c.getattr(d.ino).await.unwrap().nlink, 2);
    assert_eq!(c.getattr(ROOT_INO).await.unwrap().nlink, 4);
    c.rmdir(ROOT_INO, b"moved").await.unwrap();
    assert_eq!(c.getattr(ROOT_INO).await.unwrap().nlink, 3);

    // Extended attributes.
    c.setxattr(g.ino, b"user.tag", b"v1", 0).await.unwrap();
    assert_eq!(
        errno(c.setxattr(g.ino, b"user.tag", b"v2", 1).await),
        libc::EEXIST
    );
    assert_eq!(
        errno(c.setxattr(g.ino, b"user.none", b"v2", 2).await),
        libc::ENODATA
    );
    assert_eq!(c.getxattr(g.ino, b"user.tag").await.unwrap(), b"v1");
    assert_eq!(
        c.listxattr(g.ino).await.unwrap(),
        vec![b"user.tag".to_vec()]
    );
    c.removexattr(g.ino, b"user.tag").await.unwrap();
    assert_eq!(errno(c.getxattr(g.ino, b"user.tag").await), libc::ENODATA);

    // A FIFO through mknod; a set-group-id directory passes its group on.
    let fifo = c
        .create(ROOT_INO, b"fifo", libc::S_IFIFO | 0o644, true)
        .await
        .unwrap();
    assert_eq!(fifo.mode & libc::S_IFMT, libc::S_IFIFO);
    let sg = c.mkdir(ROOT_INO, b"shared", 0o2775).await.unwrap();
    c.setattr(pb::SetAttr {
        ino: sg.ino,
        gid: Some(33),
        ..Default::default()
    })
    .await
    .unwrap();
    let inner = c.mkdir(sg.ino, b"inner", 0o755).await.unwrap();
    assert_eq!(inner.gid, 33);
    assert_ne!(inner.mode & libc::S_ISGID, 0);
    let st = c.statfs().await.unwrap();
    assert!(st.total_bytes > 0 && st.files >= 6, "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_directory_lists_in_pages() {
    let cluster = Cluster::start(3, &[]).await;
    let c = cluster.client().await;
    let d = c.mkdir(ROOT_INO, b"many", 0o755).await.unwrap();
    let n = 3000;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8 {
        let c = c.clone();
        tasks.spawn(async move {
            for i in (w..n).step_by(8) {
                c.create(d.ino, format!("f{i:05}").as_bytes(), 0o644, true)
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let (page, more) = c.readdir(d.ino, b"", 1000).await.unwrap();
    assert_eq!(page.len(), 1000);
    assert!(more);
    let all = names(&c, d.ino).await;
    assert_eq!(all.len(), n);
    assert!(all.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(c.getattr(d.ino).await.unwrap().size, 0);
}
