//! HAProxy as the reference L7 hop: the same job as the waypoint (plain
//! HTTP in, each request balanced round-robin over the backends on
//! keep-alive connections), with no mesh around it and no TLS.
use std::net::Ipv4Addr;

/// Where it listens in its pod: HTTP/1.1 and h2c (prior knowledge), the
/// Service's two ports.
pub const H1_PORT: u16 = 80;
pub const H2C_PORT: u16 = 81;

/// The configuration for backends `servers` (each `ip:port`). HTTP/1.1
/// requests reach the servers over HTTP/1.1, h2c requests over h2c, as
/// the waypoint forwards each in its own protocol. Threads are HAProxy's
/// default (one per CPU), as the waypoint's runtime has one worker per CPU;
/// no log is written.
pub fn config(servers: &[(Ipv4Addr, u16)]) -> String {
    let mut text = format!(
        "global
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 30s

frontend h1
    bind 0.0.0.0:{H1_PORT}
    default_backend web_h1

frontend h2c
    bind 0.0.0.0:{H2C_PORT} proto h2
    default_backend web_h2c
"
    );
    for (backend, proto) in [("web_h1", ""), ("web_h2c", " proto h2")] {
        text += &format!("\nbackend {backend}\n    balance roundrobin\n");
        for (i, (ip, port)) in servers.iter().enumerate() {
            text += &format!("    server s{i} {ip}:{port}{proto}\n");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_frontends_balance_per_request_over_reused_connections_to_every_server() {
        let servers = [
            (Ipv4Addr::new(10, 244, 1, 12), 8080),
            (Ipv4Addr::new(10, 244, 1, 13), 8080),
        ];
        let text = config(&servers);
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for line in [
            "mode http",
            "option http-keep-alive",
            "http-reuse always",
            "bind 0.0.0.0:80",
            "bind 0.0.0.0:81 proto h2",
        ] {
            assert!(lines.contains(&line), "{line} missing:\n{text}");
        }
        assert_eq!(
            lines.iter().filter(|l| **l == "balance roundrobin").count(),
            2
        );
        assert!(lines.contains(&"server s0 10.244.1.12:8080"), "{text}");
        assert!(lines.contains(&"server s1 10.244.1.13:8080"), "{text}");
        assert!(
            lines.contains(&"server s0 10.244.1.12:8080 proto h2"),
            "{text}"
        );
        assert!(
            lines.contains(&"server s1 10.244.1.13:8080 proto h2"),
            "{text}"
        );
        // No mode is left to HAProxy's default (tcp), no timeout unset.
        assert!(!text.contains("mode tcp"));
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("timeout ")).count(),
            5
        );
    }
}
