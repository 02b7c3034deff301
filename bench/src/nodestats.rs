//! A node's metrics endpoint read from outside (`storaged
//! --metrics-listen`): an HTTP GET, the samples of the Prometheus text,
//! and the mean of each latency histogram between two readings, so a
//! benchmark can say where the time of a Raft write went on each node.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// `GET path` from `addr` over HTTP/1.0: (status code, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

/// Every sample of a metrics text: `name{labels}` to value.
pub fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The samples of node `addr`'s `/metrics`.
pub fn scrape(addr: &str) -> Result<BTreeMap<String, f64>, String> {
    match http_get(addr, "/metrics") {
        Ok((200, body)) => Ok(samples(&body)),
        Ok((code, body)) => Err(format!("{addr}/metrics: {code} {}", body.trim())),
        Err(e) => Err(format!("{addr}/metrics: {e}")),
    }
}

/// One histogram between two readings: how many observations it gained
/// and their mean.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// The histogram with its labels, e.g.
    /// `quizfs_raft_log_flush_seconds` or
    /// `quizfs_rpc_seconds{method="/quizfs.v1.Meta/Apply"}`.
    pub name: String,
    /// Observations between the readings.
    pub count: f64,
    /// Their mean, in microseconds.
    pub mean_us: f64,
}

/// Every histogram that gained observations from `before` to `after`.
pub fn stages(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> Vec<Stage> {
    let mut out = Vec::new();
    for (key, sum) in after {
        let Some((base, labels)) = split(key, "_sum") else {
            continue;
        };
        let count_key = format!("{base}_count{labels}");
        let count = after.get(&count_key).copied().unwrap_or(0.0)
            - before.get(&count_key).copied().unwrap_or(0.0);
        if count <= 0.0 {
            continue;
        }
        let sum = sum - before.get(key).copied().unwrap_or(0.0);
        out.push(Stage {
            name: format!("{base}{labels}"),
            count,
            mean_us: sum / count * 1e6,
        });
    }
    out
}

/// `name_sum{labels}` to (`name`, `{labels}`).
fn split<'a>(key: &'a str, suffix: &str) -> Option<(&'a str, &'a str)> {
    let (name, labels) = match key.find('{') {
        Some(i) => key.split_at(i),
        None => (key, ""),
    };
    Some((name.strip_suffix(suffix)?, labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_between_two_readings_gives_its_mean() {
        let before = samples(
            "# TYPE x histogram\nquizfs_f_seconds_sum 1.0\nquizfs_f_seconds_count 10\n\
             quizfs_r_seconds_sum{method=\"/a\"} 0.5\nquizfs_r_seconds_count{method=\"/a\"} 5\n",
        );
        let after = samples(
            "quizfs_f_seconds_sum 1.003\nquizfs_f_seconds_count 13\n\
             quizfs_r_seconds_sum{method=\"/a\"} 0.5\nquizfs_r_seconds_count{method=\"/a\"} 5\n\
             quizfs_n_seconds_sum 0.002\nquizfs_n_seconds_count 4\n# EOF\n",
        );
        let s = stages(&before, &after);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0].name, "quizfs_f_seconds");
        assert_eq!(s[0].count, 3.0);
        assert!((s[0].mean_us - 1000.0).abs() < 1e-6, "{}", s[0].mean_us);
        assert_eq!(s[1].name, "quizfs_n_seconds");
        assert!((s[1].mean_us - 500.0).abs() < 1e-6);
    }
}
