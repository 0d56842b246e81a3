//! HTTP GETs from inside a node's netns, for reading agents' endpoints and
//! Prometheus's API from tests. A thread of its own enters the netns (setns
//! changes only the calling thread), so the test process stays where it is.
use std::{
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd,
    path::Path,
    time::Duration,
};

use anyhow::{Context, bail};

/// GET `path` from `addr` as seen from the netns at `netns`; the status
/// code and body.
pub fn get_in(netns: &Path, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    request_in(netns, "GET", addr, path)
}

/// `method` (GET, POST) `path` from `addr` as seen from the netns at `netns`.
pub fn request_in(
    netns: &Path,
    method: &'static str,
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let path = path.to_owned();
    std::thread::spawn(move || -> anyhow::Result<(u16, String)> {
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        request(method, addr, &path)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("HTTP thread panicked"))?
}

/// HTTP/1.0, so the server closes and the body is everything after the head.
fn request(method: &str, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{method} http://{addr}{path}: no HTTP head in {text:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("{method} http://{addr}{path}: bad status line {head:?}"))?;
    Ok((code, body.to_owned()))
}

/// The value of the first sample of `metric` whose labels include every
/// `name="value"` pair given, from a Prometheus text exposition.
pub fn sample(exposition: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(metric)?;
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(r) => {
                let (l, v) = r.split_once("} ")?;
                (l, v)
            }
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.split_whitespace().next()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn sample_matches_labels_and_names_exactly() {
        let text = "a_total{x=\"1\",y=\"2\"} 5\na_total_more{x=\"1\"} 9\nb 3\n";
        assert_eq!(super::sample(text, "a_total", &[("y", "2")]), Some(5.0));
        assert_eq!(super::sample(text, "a_total", &[("y", "3")]), None);
        assert_eq!(super::sample(text, "b", &[]), Some(3.0));
    }
}
