//! Early creates (`quizfs::client::creates`): a create answered before it
//! is committed keeps this client's order, shows on other clients within
//! its hold, fails at the file's close (not silently) when another client
//! took the name first, and numbers that were not reserved, or are used,
//! are refused by the cluster.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use std::sync::Arc;

use quizfs_proto::{self as pb, ROOT_INO, meta_op::Op};
use quizfs_tests::{Cluster, Mount, errno, names, pattern, wait_until};

fn create(parent: u64, name: &str) -> pb::Create {
    pb::Create {
        parent,
        name: name.as_bytes().to_vec(),
        mode: libc::S_IFREG | 0o640,
        uid: 1000,
        gid: 1000,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_creates_keep_order_and_fail_at_close_when_the_name_was_taken() {
    let cluster = Cluster::start(3, &[]).await;
    let a = cluster.client().await;
    let b = cluster.client().await;
    let d = a.mkdir(ROOT_INO, b"up", 0o755).await.unwrap().ino;

    // This client's own reads and writes see its held create at once.
    let x = a.create_early(create(d, "x")).await.unwrap();
    assert_eq!(a.lookup(d, b"x").await.unwrap().ino, x);
    let y = a.create_early(create(d, "y")).await.unwrap();
    assert_ne!(x, y);
    a.rename(d, b"y", d, b"z", 0).await.unwrap();
    let z = a.getattr(y).await.unwrap();
    assert_eq!(
        (z.mode, z.uid, z.gid, z.nlink),
        (libc::S_IFREG | 0o640, 1000, 1000, 1)
    );
    let mut listed = names(&a, d).await;
    listed.sort();
    assert_eq!(listed, ["x", "z"]);

    // With its first commit: one command makes the file and its content.
    let w = a.create_early(create(d, "w")).await.unwrap();
    let data = pattern(3, 100 * 1024);
    let hash = a.put_chunk(Arc::new(data.clone())).await.unwrap();
    let ext = pb::Extent {
        offset: 0,
        len: data.len() as u64,
        hash: hash.0.to_vec(),
        at: 0,
    };
    let attr = a
        .commit_extents(w, vec![ext.clone()], data.len() as u64, Some(0), Vec::new())
        .await
        .unwrap();
    assert_eq!((attr.ino, attr.size), (w, data.len() as u64));
    a.created(w).await.unwrap();
    assert_eq!(b.lookup(d, b"w").await.unwrap().ino, w);
    assert_eq!(b.read_file(w).await.unwrap(), data);

    // Another client takes the name first: the commit that carries the
    // create fails with EEXIST, and so does every later wait for it; the
    // other client's file is untouched.
    let r = a.create_early(create(d, "race")).await.unwrap();
    let theirs = b.create(d, b"race", 0o644, true).await.unwrap();
    b.write_bytes(theirs.ino, b"theirs").await.unwrap();
    let lost = a
        .commit_extents(r, vec![ext], data.len() as u64, Some(0), Vec::new())
        .await;
    assert_eq!(errno(lost), libc::EEXIST);
    assert_eq!(errno(a.created(r).await), libc::EEXIST);
    assert_eq!(a.lookup(d, b"race").await.unwrap().ino, theirs.ino);
    assert_eq!(a.read_file(theirs.ino).await.unwrap(), b"theirs");
    a.forget_create(r);

    // A create that no commit carries goes alone after its hold, with no
    // further call from its client.
    let held = a.create_early(create(d, "held")).await.unwrap();
    let seen = wait_until(Duration::from_secs(5), "the held create on b", || {
        let b = b.clone();
        async move { b.lookup(d, b"held").await.map_err(|e| e.to_string()) }
    })
    .await;
    assert_eq!(seen.ino, held);

    // The cluster refuses a number used already, one never reserved, and
    // a reservation of nothing.
    let raw = |c: pb::Create| Op::Create(c);
    let again = pb::Create {
        ino: held,
        ..create(d, "again")
    };
    assert_eq!(
        a.apply("create", raw(again)).await.unwrap().errno,
        libc::EINVAL
    );
    let unreserved = pb::Create {
        ino: u64::MAX / 2,
        ..create(d, "unreserved")
    };
    assert_eq!(
        a.apply("create", raw(unreserved)).await.unwrap().errno,
        libc::EINVAL
    );
    let nothing = Op::ReserveInodes(pb::ReserveInodes { count: 0 });
    assert_eq!(
        a.apply("reserve", nothing).await.unwrap().errno,
        libc::EINVAL
    );
    let mut listed = names(&b, d).await;
    listed.sort();
    assert_eq!(listed, ["held", "race", "w", "x", "z"]);
}

/// Through two mounts: a file created and kept open shows on the other
/// mount without a close; the attributes the creating mount answered at
/// once (inode, type, mode, owner, group from a set-group-id directory,
/// links) are the ones the cluster made; the content is whole at close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_created_on_one_mount_is_what_the_cluster_made() {
    let cluster = Cluster::start(3, &[]).await;
    let a = Mount::new(&cluster, 0, "").await;
    let b = Mount::new(&cluster, 1, "").await;
    let dir = a.path.join("shared");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, None, Some(4321)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2775)).unwrap();

    // The directory's attributes right after creates in it come from the
    // mount (the kernel asks after every create); they must show this
    // mount's own changes at once, and the creates' times.
    let before = std::fs::metadata(&dir).unwrap();
    for i in 0..3 {
        std::fs::write(dir.join(format!("f{i}")), b"x").unwrap();
        let m = std::fs::metadata(&dir).unwrap();
        assert!(
            m.mtime_nsec() + m.mtime() * 1_000_000_000
                >= before.mtime_nsec() + before.mtime() * 1_000_000_000
        );
        assert_eq!((m.nlink(), m.mode()), (before.nlink() + i, before.mode()));
        std::fs::create_dir(dir.join(format!("d{i}"))).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().nlink(),
            before.nlink() + i + 1
        );
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2770)).unwrap();
    std::fs::write(dir.join("f9"), b"x").unwrap();
    assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o7777, 0o2770);
    for i in 0..3 {
        std::fs::remove_dir(dir.join(format!("d{i}"))).unwrap();
    }
    std::fs::write(dir.join("f8"), b"x").unwrap();
    assert_eq!(std::fs::metadata(&dir).unwrap().nlink(), before.nlink());

    let path = dir.join("upload.jpg");
    let data = pattern(9, 300 * 1024);
    let (mut f, local) = tokio::task::spawn_blocking({
        let path = path.clone();
        move || {
            let f = std::fs::File::create(&path).unwrap();
            let m = f.metadata().unwrap();
            (f, m)
        }
    })
    .await
    .unwrap();
    assert_eq!(local.gid(), 4321, "the group of a set-group-id directory");

    let other = b.path.join("shared/upload.jpg");
    let seen = wait_until(Duration::from_secs(5), "the open file on mount b", || {
        let other = other.clone();
        async move { std::fs::metadata(&other).map_err(|e| e.to_string()) }
    })
    .await;
    let key = |m: &std::fs::Metadata| (m.ino(), m.mode(), m.uid(), m.gid(), m.nlink());
    assert_eq!(key(&seen), key(&local));

    tokio::task::spawn_blocking(move || {
        f.write_all(&data).unwrap();
        drop(f);
        let mut back = Vec::new();
        std::fs::File::open(&other)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == data, "mount b read {} bytes", back.len());
        assert_eq!(key(&std::fs::metadata(&other).unwrap()), key(&local));
    })
    .await
    .unwrap();
}
