//! The reference deployment, end to end: `deploy/scenario/up.sh` builds
//! lb, s1..s3 (uploads on quizfs, `mount -t quizfs`), nas1..nas3 and
//! client in network namespaces behind an nftables firewall;
//! `demo.sh --short` uploads and fetches images through HAProxy while
//! nas2 and then the Raft leader are cut off the network, waits for heal,
//! and checks every image on every node's disk and through every web
//! server; `down.sh` removes everything. Fails on any failed upload or
//! fetch, a missing image, or anything left behind.

use std::path::PathBuf;
use std::process::Command;

use quizfs_tests::bin;

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/scenario")
        .join(name)
}

fn run(name: &str, args: &[&str], dir: &str) -> (bool, String) {
    let bin_dir = bin("storaged").parent().unwrap().to_path_buf();
    // Output to a file, not a pipe: the daemons the scripts start must not
    // keep the test waiting for the pipe's end.
    let log = PathBuf::from(format!("{dir}.{name}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let status = Command::new("bash")
        .arg(script(name))
        .args(args)
        .env("SCENARIO_DIR", dir)
        .env("QUIZFS_BIN_DIR", bin_dir)
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .status()
        .unwrap_or_else(|e| panic!("run {name}: {e}"));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    println!("----- {name} -----\n{text}");
    (status.success(), text)
}

/// Runs down.sh when dropped, so a failing test leaves nothing behind.
struct Down(&'static str);

impl Drop for Down {
    fn drop(&mut self) {
        run("down.sh", &[], self.0);
    }
}

fn leftovers() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let names = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut left: Vec<String> = names
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| ["lb", "nas1", "nas2", "nas3", "s1", "s2", "s3", "client"].contains(n))
        .map(String::from)
        .collect();
    if Command::new("ip")
        .args(["link", "show", "qzdemo0"])
        .output()
        .unwrap()
        .status
        .success()
    {
        left.push("bridge qzdemo0".into());
    }
    left
}

#[test]
fn the_reference_deployment_survives_a_cut_storage_node() {
    const DIR: &str = "/var/tmp/quizfs-scenario-test";
    let down = Down(DIR);
    let (ok, out) = run("up.sh", &[], DIR);
    assert!(ok, "up.sh failed:\n{out}");
    let (ok, out) = run("demo.sh", &["--short"], DIR);
    let last = out
        .lines()
        .rev()
        .find(|l| l.starts_with("uploads "))
        .unwrap_or("");
    assert!(ok, "demo.sh failed: {last}\n{out}");
    let fields: Vec<&str> = last.split_whitespace().collect();
    assert_eq!(fields.get(4..6), Some(&["failed", "0"][..]), "{last}");
    assert!(out.contains("refused, as it must be"), "{out}");
    assert!(
        out.contains("prometheus saw nas2 go down and come back"),
        "{out}"
    );
    assert!(
        out.contains("every mount's metrics show nas2 down during the cut"),
        "{out}"
    );
    drop(down);
    assert_eq!(leftovers(), Vec::<String>::new(), "left behind");
    assert!(!std::path::Path::new(DIR).exists(), "{DIR} left behind");
}
