//! `quizfs mount`, `quizfs umount` and the `mount.quizfs` helper of
//! mount(8): option parsing, start-up checks, going to the background, and
//! serving the FUSE session until it is unmounted.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use fuser::{Config, MountOption, Session, SessionACL};
use quizfs::client::{ClientOptions, ClusterClient};
use quizfs::fs::{FsOptions, QuizFs};

/// Environment variable that tells a background mount process to report
/// "ready" or "error: ..." on its standard output.
const NOTIFY_ENV: &str = "QUIZFS_MOUNT_NOTIFY";
/// How long `quizfs mount` waits for the cluster before giving up.
const CONNECT_BUDGET: Duration = Duration::from_secs(10);

/// Options accepted by `-o`, documented in `quizfs mount --help`.
pub(crate) const OPTIONS_HELP: &str = "\
Mount options (-o, comma-separated):
  ping_timeout=SECS      a node silent this long is treated as down (default 1)
  op_timeout=SECS        how long an operation waits for a majority of nodes before
                         failing with ETIMEDOUT (default 30)
  attr_timeout=SECS      how long the kernel caches attributes (default 1)
  entry_timeout=SECS     how long the kernel caches names (default 1)
  allow_other            let every user use the mount (the default when mounted by root)
  noallow_other          only the user who mounted may use it
  ro | rw                read-only or read-write (default rw)
  backup_servers=H[,H]   more servers to try first contact with (also H:H)
  chunk_cache=MIB        MiB of file data cached for reads (default 64)
  write_buffers=N        4 MiB buffers the mount may fill before uploading (default 16)
  inline_max=KIB         a file's writes up to this many KiB travel inside its commit, not
                         as an uploaded chunk (default 256, the most; 0: never)
  sync_create            open(O_CREAT) waits for the create's commit (default: a create
                         of a new name is answered at once and committed by close)
  log=PATH               write the background process's log to PATH
  metrics=HOST:PORT      serve Prometheus metrics (/metrics) and /health there (HTTP)
  tls_dir=DIR            where ca.crt, client.crt and client.key are (default /etc/quizfs)
  insecure               plaintext without certificates, for local experiments only
  defaults, _netdev, auto, noauto, nofail, user, nouser, exec, noexec, suid, nosuid,
  dev, nodev, atime, noatime, relatime, default_permissions, x-*: accepted, ignored";

/// A parsed mount request.
#[derive(Debug, Clone)]
pub(crate) struct MountRequest {
    /// The servers to try first, the named one first.
    pub(crate) servers: Vec<String>,
    /// The volume.
    pub(crate) volume: String,
    /// The source as given (shown in /proc/mounts).
    pub(crate) spec: String,
    /// Where to mount.
    pub(crate) mountpoint: PathBuf,
    /// Filesystem tunables.
    pub(crate) fs: FsOptions,
    /// Heartbeat timeout.
    pub(crate) ping_timeout: Duration,
    /// Bound on one operation.
    pub(crate) op_timeout: Duration,
    /// Let other users in.
    pub(crate) allow_other: bool,
    /// Log file of the background process.
    pub(crate) log: Option<PathBuf>,
    /// Where to serve the mount's metrics.
    pub(crate) metrics: Option<std::net::SocketAddr>,
    /// The -o options as given, for the background process.
    pub(crate) raw_options: String,
    /// TLS with the client certificate, or plaintext (`insecure`).
    pub(crate) transport: quizfs_proto::tls::Transport,
}

/// Splits `SERVER:/VOLUME` (the server may carry a port).
fn parse_spec(spec: &str) -> Result<(String, String), String> {
    let (server, volume) = spec
        .rsplit_once(":/")
        .ok_or_else(|| format!("{spec:?} is not SERVER:/VOLUME (for example nas1:/nas)"))?;
    if server.is_empty() {
        return Err(format!("{spec:?} names no server"));
    }
    let volume = volume.trim_end_matches('/');
    if volume.is_empty() || volume.contains('/') {
        return Err(format!("{spec:?}: the volume must be one name, like /nas"));
    }
    Ok((server.to_string(), volume.to_string()))
}

fn secs(key: &str, v: &str, min: f64, max: f64) -> Result<Duration, String> {
    let s: f64 = v
        .parse()
        .map_err(|_| format!("{key}={v}: not a number of seconds"))?;
    if !(min..=max).contains(&s) {
        return Err(format!(
            "{key}={v}: must be between {min} and {max} seconds"
        ));
    }
    Ok(Duration::from_secs_f64(s))
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Parses a mount request from its parts.
pub(crate) fn parse(
    spec: &str,
    mountpoint: &Path,
    options: &[String],
) -> Result<MountRequest, String> {
    let (server, volume) = parse_spec(spec)?;
    let mut req = MountRequest {
        servers: vec![server],
        volume,
        spec: spec.to_string(),
        mountpoint: mountpoint.to_path_buf(),
        fs: FsOptions::default(),
        ping_timeout: ClientOptions::default().ping_timeout,
        op_timeout: ClientOptions::default().op_timeout,
        allow_other: running_as_root(),
        log: None,
        metrics: None,
        raw_options: options.join(","),
        transport: quizfs_proto::tls::Transport::Insecure,
    };
    let mut tls_dir = PathBuf::from(quizfs_proto::tls::DEFAULT_TLS_DIR);
    let mut insecure = false;
    let mut in_backup = false;
    for opt in options.iter().flat_map(|o| o.split(',')) {
        let opt = opt.trim();
        if opt.is_empty() {
            continue;
        }
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let need = || value.ok_or_else(|| format!("mount option {key} needs a value ({key}=...)"));
        let was_backup = std::mem::replace(&mut in_backup, false);
        match key {
            "ro" => req.fs.read_only = true,
            "rw" => req.fs.read_only = false,
            "allow_other" => req.allow_other = true,
            "noallow_other" => req.allow_other = false,
            "ping_timeout" => req.ping_timeout = secs(key, need()?, 0.1, 60.0)?,
            "op_timeout" => req.op_timeout = secs(key, need()?, 1.0, 86_400.0)?,
            "attr_timeout" => req.fs.attr_timeout = secs(key, need()?, 0.0, 3600.0)?,
            "entry_timeout" => req.fs.entry_timeout = secs(key, need()?, 0.0, 3600.0)?,
            "chunk_cache" => {
                let mib: usize = need()?.parse().map_err(|_| {
                    format!(
                        "chunk_cache={}: not a number of MiB",
                        need().unwrap_or_default()
                    )
                })?;
                if !(4..=65536).contains(&mib) {
                    return Err(format!(
                        "chunk_cache={mib}: must be between 4 and 65536 MiB"
                    ));
                }
                req.fs.chunk_cache_bytes = mib << 20;
            }
            "write_buffers" => {
                let n: usize = need()?
                    .parse()
                    .map_err(|_| "write_buffers: not a number".to_string())?;
                if !(1..=1024).contains(&n) {
                    return Err(format!("write_buffers={n}: must be between 1 and 1024"));
                }
                req.fs.write_buffers = n;
            }
            "inline_max" => {
                let most = quizfs_proto::MAX_INLINE_BYTES / 1024;
                let kib: usize = need()?
                    .parse()
                    .map_err(|_| "inline_max: not a number of KiB".to_string())?;
                if kib > most {
                    return Err(format!(
                        "inline_max={kib}: must be between 0 and {most} KiB"
                    ));
                }
                req.fs.inline_max = kib * 1024;
            }
            "backup_servers" | "backup-volfile-servers" => {
                for s in need()?.split(':').filter(|s| !s.is_empty()) {
                    req.servers.push(s.to_string());
                }
                in_backup = true;
            }
            "sync_create" => req.fs.early_create = false,
            "log" => req.log = Some(PathBuf::from(need()?)),
            "metrics" => {
                use std::net::ToSocketAddrs;
                let v = need()?;
                let addr = v
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| format!("metrics={v}: expected host:port"))?;
                req.metrics = Some(addr);
            }
            "tls_dir" => tls_dir = PathBuf::from(need()?),
            "insecure" => insecure = true,
            "defaults"
            | "_netdev"
            | "auto"
            | "noauto"
            | "nofail"
            | "user"
            | "users"
            | "nouser"
            | "owner"
            | "group"
            | "exec"
            | "noexec"
            | "suid"
            | "nosuid"
            | "dev"
            | "nodev"
            | "atime"
            | "noatime"
            | "relatime"
            | "strictatime"
            | "nodiratime"
            | "sync"
            | "async"
            | "default_permissions"
            | "loud"
            | "silent" => {}
            k if k.starts_with("x-") || k == "comment" => {}
            // `backup_servers=nas2,nas3`: the comma continues the list.
            host if was_backup && value.is_none() => {
                req.servers.push(host.to_string());
                in_backup = true;
            }
            other => {
                return Err(format!(
                    "unknown mount option {other:?} (see quizfs mount --help)"
                ));
            }
        }
    }
    req.transport = if insecure {
        quizfs_proto::tls::Transport::Insecure
    } else {
        let files = quizfs_proto::tls::TlsFiles::load(
            &tls_dir,
            quizfs_proto::tls::Role::Client,
            "-o insecure",
        )
        .map_err(|e| e.to_string())?;
        quizfs_proto::tls::Transport::Tls(std::sync::Arc::new(files))
    };
    Ok(req)
}

/// Mounts in the background: starts `quizfs mount -f` as a detached
/// process and returns once it reports the volume usable.
pub(crate) fn mount_background(req: &MountRequest) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return fail(&format!("cannot find my own executable: {e}")),
    };
    let stderr = match &req.log {
        Some(p) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(f) => Stdio::from(f),
            Err(e) => return fail(&format!("cannot open log {}: {e}", p.display())),
        },
        None => Stdio::null(),
    };
    let mut cmd = Command::new(exe);
    cmd.arg("mount")
        .arg(&req.spec)
        .arg(&req.mountpoint)
        .arg("-f")
        .env(NOTIFY_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .process_group(0);
    if !req.raw_options.is_empty() {
        cmd.arg("-o").arg(&req.raw_options);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(&format!("cannot start the mount process: {e}")),
    };
    let Some(out) = child.stdout.take() else {
        return fail("the mount process has no output pipe");
    };
    let mut line = String::new();
    let _ = BufReader::new(out).read_line(&mut line);
    match line.trim_end() {
        "ready" => ExitCode::SUCCESS,
        l if l.starts_with("error: ") => fail(&l["error: ".len()..]),
        _ => {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            fail(&format!(
                "the mount process ended before mounting ({status})"
            ))
        }
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("quizfs: mount: {msg}");
    ExitCode::from(1)
}

/// Tells the waiting `quizfs mount` (if any) how the mount went.
fn notify(msg: &str) {
    if std::env::var_os(NOTIFY_ENV).is_some() {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{msg}");
        let _ = out.flush();
    }
}

/// Mounts and serves in this process until unmounted (or SIGTERM/SIGINT).
pub(crate) fn mount_foreground(req: MountRequest) -> ExitCode {
    match serve(req) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            notify(&format!("error: {e}"));
            fail(&e)
        }
    }
}

fn serve(req: MountRequest) -> Result<(), String> {
    match std::fs::metadata(&req.mountpoint) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("{} is not a directory", req.mountpoint.display())),
        Err(e) => return Err(format!("mount point {}: {e}", req.mountpoint.display())),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("quizfs-io")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    if req.transport.is_insecure() {
        tracing::warn!(
            "insecure: plaintext traffic without certificates; anyone on the network can read and change this volume"
        );
    }
    let copts = ClientOptions {
        volume: req.volume.clone(),
        ping_timeout: req.ping_timeout,
        op_timeout: req.op_timeout,
        transport: req.transport.clone(),
        ..ClientOptions::default()
    };
    let client = rt.block_on(async {
        let connect = async {
            let c = ClusterClient::connect(&req.servers, copts).await?;
            c.getattr(quizfs_proto::ROOT_INO).await?;
            Ok::<_, quizfs::client::ClientError>(c)
        };
        match tokio::time::timeout(CONNECT_BUDGET, connect).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "the cluster at {} did not become usable within {}s (is a majority of nodes up?)",
                req.servers.join(","),
                CONNECT_BUDGET.as_secs()
            )),
        }
    })?;
    // Bound before the mount, so that a port in use fails the mount with
    // one line rather than leaving it without metrics.
    let metrics_listener = match req.metrics {
        Some(addr) => Some(
            rt.block_on(tokio::net::TcpListener::bind(addr))
                .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?,
        ),
        None => None,
    };
    let fs = QuizFs::new(client, req.fs.clone(), rt.handle().clone());
    if let Some(l) = metrics_listener {
        let m = fs.metrics();
        rt.spawn(quizfs_proto::metrics_http::serve(
            l,
            move |path| m.answer(path),
            std::future::pending::<()>(),
        ));
    }
    let slot = fs.notifier_slot();
    let mut options = vec![
        MountOption::FSName(req.spec.clone()),
        MountOption::Subtype("quizfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if req.fs.read_only {
        options.push(MountOption::RO);
    }
    let mut config = Config::default();
    config.mount_options = options;
    config.acl = if req.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(2);
    config.clone_fd = true;
    let mut session = Session::new(fs, &req.mountpoint, &config)
        .map_err(|e| format!("cannot mount on {}: {e}", req.mountpoint.display()))?;
    slot.set(session.notifier());
    let mut unmounter = session.unmount_callable();
    let mountpoint = req.mountpoint.clone();
    rt.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received; unmounting");
        if unmounter.unmount().is_err() {
            // Busy: detach now, finish when the last file is closed.
            let _ = Command::new("umount").arg("-l").arg(&mountpoint).status();
        }
    });
    tracing::info!(mountpoint = %req.mountpoint.display(), servers = ?req.servers, "mounted");
    notify("ready");
    let r = session.run();
    tracing::info!("unmounted");
    drop(rt);
    r.map_err(|e| format!("FUSE session failed: {e}"))
}

/// `quizfs umount MOUNTPOINT`: unmounts, with umount(8) or fusermount3.
pub(crate) fn umount(mountpoint: &Path) -> ExitCode {
    let ok = |c: &mut Command| c.stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if ok(Command::new("umount").arg(mountpoint))
        || ok(Command::new("fusermount3").arg("-u").arg(mountpoint))
    {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "quizfs: umount: cannot unmount {} (not a quizfs mount, or busy: see fuser -m)",
        mountpoint.display()
    );
    ExitCode::from(1)
}

/// `mount.quizfs SPEC DIR [-sfnv] [-o OPTIONS]`, as mount(8) calls it.
pub(crate) fn helper(args: &[String]) -> ExitCode {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => match it.next() {
                Some(o) => options.push(o.clone()),
                None => return usage_error("-o needs options"),
            },
            "-t" => {
                it.next();
            }
            s if s.starts_with("-o") => options.push(s[2..].to_string()),
            s if s.starts_with('-') => {} // -s -f -n -v: nothing to do
            s => positional.push(s.to_string()),
        }
    }
    let [spec, dir] = positional.as_slice() else {
        return usage_error("usage: mount.quizfs SERVER:/VOLUME MOUNTPOINT [-o OPTIONS]");
    };
    match parse(spec, Path::new(dir), &options) {
        Ok(req) => mount_background(&req),
        Err(e) => usage_error(&e),
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("quizfs: mount: {msg}");
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_and_options_parse() {
        let r = parse(
            "nas1:/nas",
            Path::new("/mnt/nas"),
            &["ro,backup_servers=nas2,nas3,ping_timeout=0.5,_netdev,insecure".into()],
        )
        .expect("parses");
        assert_eq!(r.servers, ["nas1", "nas2", "nas3"]);
        assert_eq!(r.volume, "nas");
        assert!(r.fs.read_only);
        assert_eq!(r.ping_timeout, Duration::from_millis(500));
        let r = parse(
            "127.0.0.21:7420:/web",
            Path::new("/m"),
            &["insecure".into()],
        )
        .expect("parses");
        assert_eq!(r.servers, ["127.0.0.21:7420"]);
        assert_eq!(r.volume, "web");
        for bad in ["nas1", ":/nas", "nas1:/", "nas1:/a/b"] {
            assert!(parse(bad, Path::new("/m"), &[]).is_err(), "{bad}");
        }
        for bad in [
            "bogus",
            "ping_timeout",
            "ping_timeout=x",
            "chunk_cache=1",
            "inline_max=257",
            "inline_max=-1",
            "ro,nas2",
        ] {
            assert!(
                parse("a:/nas", Path::new("/m"), &[bad.into()]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn without_certificates_the_error_names_the_command_that_makes_them() {
        let dir = std::env::temp_dir().join(format!("quizfs-no-tls-{}", std::process::id()));
        let opt = format!("tls_dir={}", dir.display());
        let err = parse("nas1:/nas", Path::new("/m"), &[opt]).expect_err("no certificates");
        assert!(err.contains("quizfs cert client"), "{err}");
        assert!(err.contains("-o insecure"), "{err}");
    }
}
