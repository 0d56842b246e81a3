//! Requests to the kernel's routing over NETLINK_ROUTE: a fib rule that
//! sends marked packets to a table, and a `local` default route in that
//! table. A netlink socket acts on the network namespace it was made in,
//! so the caller opens it inside the pod's (`SocketFactory::within`) and
//! talks to it from anywhere. Messages are built and answers read by pure
//! functions; only `RouteSocket` does I/O.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

const NLMSG_HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const FR_ACT_TO_TBL: u8 = 1;
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const RTN_LOCAL: u8 = 2;
const RT_SCOPE_HOST: u8 = 254;
const RTPROT_STATIC: u8 = 4;
/// The table byte of the fixed header when the table is given as an
/// attribute (ids above 255 do not fit in it).
const RT_TABLE_UNSPEC: u8 = 0;
/// How long one request may wait for the kernel's answer; it answers at
/// once, so running into this means something is badly wrong.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// The address family a rule or route is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn af(self) -> u8 {
        match self {
            Family::V4 => libc::AF_INET as u8,
            Family::V6 => libc::AF_INET6 as u8,
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Delete,
}

/// `ip rule add fwmark <mark>/<mask> lookup <table> pref <priority>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkRule {
    pub family: Family,
    pub mark: u32,
    pub mask: u32,
    pub table: u32,
    pub priority: u32,
}

/// `ip route add local default dev <oif> table <table>`: everything looked
/// up in the table is delivered on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalDefaultRoute {
    pub family: Family,
    pub table: u32,
    pub oif: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(io::Error),
    #[error("netlink {what}: {source}")]
    Refused { what: String, source: io::Error },
    #[error("netlink {what}: no answer from the kernel within {}s", ANSWER_WITHIN.as_secs())]
    NoAnswer { what: String },
    #[error("netlink {what}: an answer that is not netlink ({problem})")]
    Garbled { what: String, problem: &'static str },
}

/// A NETLINK_ROUTE socket of the netns it was opened in.
#[derive(Debug)]
pub struct RouteSocket {
    fd: OwnedFd,
    seq: u32,
}

impl RouteSocket {
    /// Opens the socket in the calling thread's netns.
    pub fn open() -> Result<Self, NetlinkError> {
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(NetlinkError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: a descriptor socket() just returned, owned from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let timeout = libc::timeval {
            tv_sec: ANSWER_WITHIN.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(NetlinkError::Socket(io::Error::last_os_error()));
        }
        Ok(Self { fd, seq: 0 })
    }

    /// Adds a rule; one that is there already counts as added.
    pub fn rule(&mut self, op: Op, rule: &MarkRule) -> Result<(), NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let what = format!(
            "{} {} rule fwmark {:#x}/{:#x} lookup {} pref {}",
            op_word(op),
            rule.family,
            rule.mark,
            rule.mask,
            rule.table,
            rule.priority
        );
        self.request(&encode_rule(op, rule, self.seq), op, what)
    }

    /// Adds (or replaces) a route; deleting one that is gone succeeds.
    pub fn route(&mut self, op: Op, route: &LocalDefaultRoute) -> Result<(), NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let what = format!(
            "{} {} route local default dev #{} table {}",
            op_word(op),
            route.family,
            route.oif,
            route.table
        );
        self.request(&encode_route(op, route, self.seq), op, what)
    }

    fn request(&mut self, msg: &[u8], op: Op, what: String) -> Result<(), NetlinkError> {
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(NetlinkError::Refused {
                what,
                source: io::Error::last_os_error(),
            });
        }
        let mut buf = vec![0u8; 8192];
        loop {
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        Err(NetlinkError::NoAnswer { what })
                    }
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(NetlinkError::Refused { what, source: e }),
                };
            }
            match read_answer(&buf[..n as usize], self.seq) {
                Answer::NotOurs => continue,
                Answer::Garbled(problem) => return Err(NetlinkError::Garbled { what, problem }),
                Answer::Errno(errno) => {
                    return if settled(op, errno) {
                        Ok(())
                    } else {
                        Err(NetlinkError::Refused {
                            what,
                            source: io::Error::from_raw_os_error(errno),
                        })
                    };
                }
            }
        }
    }
}

fn op_word(op: Op) -> &'static str {
    match op {
        Op::Add => "add",
        Op::Delete => "delete",
    }
}

/// Whether the kernel's answer `errno` (0: done) leaves things as asked:
/// an added rule that was there already, a deleted one that was gone.
fn settled(op: Op, errno: i32) -> bool {
    match op {
        Op::Add => errno == 0 || errno == libc::EEXIST,
        Op::Delete => errno == 0 || errno == libc::ENOENT || errno == libc::ESRCH,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// The acknowledgement (0) or error (a positive errno) for our request.
    Errno(i32),
    /// A message for another sequence number: read on.
    NotOurs,
    Garbled(&'static str),
}

/// Reads the NLMSG_ERROR answering request `seq` from one datagram.
fn read_answer(buf: &[u8], seq: u32) -> Answer {
    let mut at = 0;
    while at + NLMSG_HDR <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
        if len < NLMSG_HDR || at + len > buf.len() {
            return Answer::Garbled("a message length past the datagram");
        }
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        let msg_seq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().unwrap_or_default());
        if kind == NLMSG_ERROR && msg_seq == seq {
            if len < NLMSG_HDR + 4 {
                return Answer::Garbled("an error message without its code");
            }
            let code = i32::from_ne_bytes(
                buf[at + NLMSG_HDR..at + NLMSG_HDR + 4]
                    .try_into()
                    .unwrap_or_default(),
            );
            return Answer::Errno(code.saturating_neg());
        }
        at += align(len);
    }
    Answer::NotOurs
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// A message: the netlink header, a fixed 12-byte family header, then
/// u32 attributes.
fn message(kind: u16, flags: u16, seq: u32, fixed: [u8; 12], attrs: &[(u16, u32)]) -> Vec<u8> {
    let len = NLMSG_HDR + fixed.len() + attrs.len() * 8;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&fixed);
    for (kind, value) in attrs {
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&value.to_ne_bytes());
    }
    m
}

fn encode_rule(op: Op, rule: &MarkRule, seq: u32) -> Vec<u8> {
    let (kind, flags) = match op {
        // EXCL: without it the kernel adds a second identical rule.
        Op::Add => (RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL),
        Op::Delete => (RTM_DELRULE, 0),
    };
    // struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1,
    // res2, action, flags (u32).
    let fixed = [
        rule.family.af(),
        0,
        0,
        0,
        RT_TABLE_UNSPEC,
        0,
        0,
        FR_ACT_TO_TBL,
        0,
        0,
        0,
        0,
    ];
    message(
        kind,
        NLM_F_REQUEST | NLM_F_ACK | flags,
        seq,
        fixed,
        &[
            (FRA_PRIORITY, rule.priority),
            (FRA_FWMARK, rule.mark),
            (FRA_FWMASK, rule.mask),
            (FRA_TABLE, rule.table),
        ],
    )
}

fn encode_route(op: Op, route: &LocalDefaultRoute, seq: u32) -> Vec<u8> {
    let (kind, flags) = match op {
        Op::Add => (RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE),
        Op::Delete => (RTM_DELROUTE, 0),
    };
    // struct rtmsg: family, dst_len (0: the default route), src_len, tos,
    // table, protocol, scope, type, flags (u32).
    let fixed = [
        route.family.af(),
        0,
        0,
        0,
        RT_TABLE_UNSPEC,
        RTPROT_STATIC,
        RT_SCOPE_HOST,
        RTN_LOCAL,
        0,
        0,
        0,
        0,
    ];
    message(
        kind,
        NLM_F_REQUEST | NLM_F_ACK | flags,
        seq,
        fixed,
        &[(RTA_TABLE, route.table), (RTA_OIF, route.oif)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(m: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(m[at..at + 4].try_into().unwrap())
    }

    fn u16_at(m: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes(m[at..at + 2].try_into().unwrap())
    }

    /// The attributes after the fixed header, as (type, value).
    fn attrs(m: &[u8]) -> Vec<(u16, u32)> {
        m[NLMSG_HDR + 12..]
            .chunks(8)
            .map(|a| {
                assert_eq!(u16_at(a, 0), 8, "attribute length");
                (u16_at(a, 2), u32_at(a, 4))
            })
            .collect()
    }

    #[test]
    fn a_mark_rule_is_a_request_for_its_table_under_its_mask() {
        let rule = MarkRule {
            family: Family::V6,
            mark: 0x6d5,
            mask: 0xfff,
            table: 1749,
            priority: 100,
        };
        let m = encode_rule(Op::Add, &rule, 7);
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(u16_at(&m, 4), RTM_NEWRULE);
        assert_eq!(
            u16_at(&m, 6),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        );
        assert_eq!(u32_at(&m, 8), 7);
        assert_eq!(m[NLMSG_HDR], libc::AF_INET6 as u8);
        assert_eq!(m[NLMSG_HDR + 7], FR_ACT_TO_TBL);
        assert_eq!(
            attrs(&m),
            [
                (FRA_PRIORITY, 100),
                (FRA_FWMARK, 0x6d5),
                (FRA_FWMASK, 0xfff),
                (FRA_TABLE, 1749)
            ]
        );
        let del = encode_rule(Op::Delete, &rule, 8);
        assert_eq!(u16_at(&del, 4), RTM_DELRULE);
        assert_eq!(u16_at(&del, 6), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(attrs(&del), attrs(&m));
    }

    #[test]
    fn the_local_default_route_is_host_scoped_on_its_device() {
        let route = LocalDefaultRoute {
            family: Family::V4,
            table: 1749,
            oif: 1,
        };
        let m = encode_route(Op::Add, &route, 3);
        assert_eq!(u16_at(&m, 4), RTM_NEWROUTE);
        assert_eq!(
            u16_at(&m, 6),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
        );
        let fixed = &m[NLMSG_HDR..NLMSG_HDR + 12];
        assert_eq!(fixed[0], libc::AF_INET as u8);
        assert_eq!(fixed[1], 0, "default route: no prefix");
        assert_eq!(
            (fixed[5], fixed[6], fixed[7]),
            (RTPROT_STATIC, RT_SCOPE_HOST, RTN_LOCAL)
        );
        assert_eq!(attrs(&m), [(RTA_TABLE, 1749), (RTA_OIF, 1)]);
        assert_eq!(
            u16_at(&encode_route(Op::Delete, &route, 4), 4),
            RTM_DELROUTE
        );
    }

    fn error_message(seq: u32, code: i32) -> Vec<u8> {
        let mut m = message(NLMSG_ERROR, 0, seq, [0; 12], &[]);
        m[NLMSG_HDR..NLMSG_HDR + 4].copy_from_slice(&code.to_ne_bytes());
        m
    }

    #[test]
    fn answers_are_matched_to_their_request() {
        assert_eq!(read_answer(&error_message(5, 0), 5), Answer::Errno(0));
        assert_eq!(
            read_answer(&error_message(5, -libc::EPERM), 5),
            Answer::Errno(libc::EPERM)
        );
        assert_eq!(read_answer(&error_message(4, 0), 5), Answer::NotOurs);
        // Two messages in one datagram: the second is ours.
        let mut both = error_message(4, -libc::EEXIST);
        both.extend(error_message(5, -libc::ENOENT));
        assert_eq!(read_answer(&both, 5), Answer::Errno(libc::ENOENT));
        let mut short = error_message(5, 0);
        short[0] = 200;
        assert!(matches!(read_answer(&short, 5), Answer::Garbled(_)));
        assert_eq!(read_answer(&[0; 3], 5), Answer::NotOurs);
    }

    #[test]
    fn adding_what_is_there_and_deleting_what_is_gone_are_settled() {
        assert!(settled(Op::Add, 0));
        assert!(settled(Op::Add, libc::EEXIST));
        assert!(!settled(Op::Add, libc::EPERM));
        assert!(!settled(Op::Add, libc::ENOENT));
        assert!(settled(Op::Delete, libc::ENOENT));
        assert!(settled(Op::Delete, libc::ESRCH));
        assert!(!settled(Op::Delete, libc::EEXIST));
        assert!(!settled(Op::Delete, libc::EPERM));
    }
}
