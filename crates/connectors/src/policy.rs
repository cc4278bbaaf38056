//! [`NetworkPolicy`]: where serversync may connect on behalf of an organization, decided on
//! the resolved address right before each connect (mail servers and webhooks alike).
//!
//! A tenant chooses the host names of its email server profiles and the URLs of its webhooks.
//! Without a policy, that is a way into the installation's own network: the loopback
//! interface (the database, the admin API), a cloud's metadata service at 169.254.169.254,
//! private ranges. So by default every address that is not public is refused — loopback,
//! private (RFC 1918, IPv6 unique local), link-local, shared (carrier-grade NAT), multicast,
//! reserved and documentation ranges, and IPv4 addresses embedded in IPv6 ones (mapped,
//! NAT64, 6to4) by their IPv4 class — unless the installation lists the range in
//! `network.allow_ranges`. The check is made on the addresses DNS returned, and the connection
//! goes to exactly those addresses: a name that resolves to a public address when a profile is
//! saved and to 127.0.0.1 later (DNS rebinding) is refused at connect time.
//!
//! Connections without TLS (`tls: none`) are allowed only to addresses in
//! `tls.plaintext_ranges` (loopback by default), and never in FIPS mode.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub use ipnet::IpNet;
use serversync_model::{ErrorKind, FailureStep};

use crate::error::ConnectError;

/// Where outbound connections may go. `Default` is the production default: public addresses
/// only, plain text only to loopback, webhooks over HTTPS only, FIPS mode off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicy {
    allow_ranges: Vec<IpNet>,
    plaintext_ranges: Vec<IpNet>,
    allow_http_webhooks: bool,
    fips: bool,
    /// The DNS server asked instead of the system resolver (`[network] nameserver`).
    nameserver: Option<std::net::SocketAddr>,
}

fn loopback() -> Vec<IpNet> {
    vec![
        IpNet::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8).expect("valid prefix"),
        IpNet::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 128).expect("valid prefix"),
    ]
}

impl Default for NetworkPolicy {
    fn default() -> Self {
        Self {
            allow_ranges: Vec::new(),
            plaintext_ranges: loopback(),
            allow_http_webhooks: false,
            fips: false,
            nameserver: None,
        }
    }
}

/// An address range in CIDR form (`10.0.0.0/8`, `fd00::/8`); a single address is its own
/// range.
pub fn parse_range(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| {
            format!("{s:?} is not an address range: use CIDR such as 10.0.0.0/8 or fd00::/8")
        })
}

impl NetworkPolicy {
    /// The default policy plus the loopback ranges (127.0.0.0/8, ::1) as destinations, and
    /// webhooks over plain HTTP: for test set-ups whose servers all run on this machine.
    pub fn loopback_allowed() -> Self {
        Self {
            allow_ranges: loopback(),
            allow_http_webhooks: true,
            ..Self::default()
        }
    }

    /// Non-public ranges that may be reached anyway (`network.allow_ranges`).
    pub fn with_allow_ranges(mut self, ranges: Vec<IpNet>) -> Self {
        self.allow_ranges = ranges;
        self
    }

    /// Where `tls: none` is allowed (`tls.plaintext_ranges`).
    pub fn with_plaintext_ranges(mut self, ranges: Vec<IpNet>) -> Self {
        self.plaintext_ranges = ranges;
        self
    }

    /// Whether webhook URLs may be `http://` (`webhooks.allow_http`).
    pub fn with_http_webhooks(mut self, allow: bool) -> Self {
        self.allow_http_webhooks = allow;
        self
    }

    /// FIPS mode (`tls.fips`): no connection without TLS.
    pub fn with_fips(mut self, fips: bool) -> Self {
        self.fips = fips;
        self
    }

    /// Host names are looked up at `nameserver` (A and AAAA, [`crate::dns`]) instead of
    /// through the system resolver; SRV records are asked there too.
    pub fn with_nameserver(mut self, nameserver: Option<std::net::SocketAddr>) -> Self {
        self.nameserver = nameserver;
        self
    }

    pub fn nameserver(&self) -> Option<std::net::SocketAddr> {
        self.nameserver
    }

    pub fn fips(&self) -> bool {
        self.fips
    }

    pub fn allows_http_webhooks(&self) -> bool {
        self.allow_http_webhooks
    }

    pub fn allow_ranges(&self) -> &[IpNet] {
        &self.allow_ranges
    }

    pub fn plaintext_ranges(&self) -> &[IpNet] {
        &self.plaintext_ranges
    }

    /// Why `ip` may not be reached (`"a loopback address"`, …), or `None` when it may.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        let class = non_public(ip)?;
        let embedded = embedded_v4(ip).map(IpAddr::V4);
        let allowed = self
            .allow_ranges
            .iter()
            .any(|r| r.contains(&ip) || embedded.is_some_and(|v4| r.contains(&v4)));
        (!allowed).then_some(class)
    }

    /// Whether a connection without TLS may go to `ip`.
    pub fn allows_plaintext(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        !self.fips && self.plaintext_ranges.iter().any(|r| r.contains(&ip))
    }

    /// The resolved addresses of `host` that may be connected to, in order; an error at the
    /// TCP step naming the address and the setting when none may. `plaintext`: the
    /// connection will carry no TLS.
    pub fn permitted(
        &self,
        host: &str,
        targets: &[SocketAddr],
        plaintext: bool,
    ) -> Result<Vec<SocketAddr>, ConnectError> {
        let mut refused = None;
        let mut ok = Vec::new();
        for t in targets {
            if let Some(class) = self.refusal(t.ip()) {
                refused.get_or_insert_with(|| destination_refused(host, t.ip(), class));
            } else if plaintext && !self.allows_plaintext(t.ip()) {
                refused.get_or_insert_with(|| self.plaintext_refused(host, t.ip()));
            } else {
                ok.push(*t);
            }
        }
        match (ok.is_empty(), refused) {
            (false, _) => Ok(ok),
            (true, Some(e)) => Err(e),
            (true, None) => Err(ConnectError::new(
                FailureStep::Dns,
                ErrorKind::Config,
                format!("{host} has no IP address: check the server host name"),
            )),
        }
    }

    fn plaintext_refused(&self, host: &str, ip: IpAddr) -> ConnectError {
        let message = if self.fips {
            format!(
                "FIPS mode is on, so connections without TLS are not allowed (to {host}, {ip}): \
                 set the profile's TLS mode to implicit TLS or STARTTLS"
            )
        } else {
            format!(
                "{host} ({ip}) is not an address this installation allows connections without \
                 TLS to (tls.plaintext_ranges; by default only loopback): set the profile's TLS \
                 mode to implicit TLS or STARTTLS"
            )
        };
        ConnectError::new(FailureStep::TcpConnect, ErrorKind::Config, message)
    }
}

fn destination_refused(host: &str, ip: IpAddr, class: &str) -> ConnectError {
    let resolved = if host.parse::<IpAddr>().is_ok() {
        format!("{ip} is {class}")
    } else {
        format!("{host} resolves to {ip}, {class}")
    };
    ConnectError::new(
        FailureStep::TcpConnect,
        ErrorKind::Config,
        format!(
            "{resolved}, and this installation does not connect to loopback, private, link-local \
             or reserved addresses: use the server's public name or address, or ask the \
             installation's administrator to allow the range (network.allow_ranges)"
        ),
    )
}

/// The IPv4 address an IPv6 address carries (mapped, IPv4-compatible, NAT64, 6to4).
fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let s = v6.segments();
    let o = v6.octets();
    let last = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if let Some(v4) = v6.to_ipv4_mapped() {
        Some(v4)
    } else if (s[..6] == [0; 6] && !matches!(u32::from(last), 0 | 1))
        || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
    {
        Some(last) // ::a.b.c.d (deprecated IPv4-compatible), NAT64 well-known prefix
    } else if s[0] == 0x2002 {
        Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])) // 6to4
    } else {
        None
    }
}

/// The class of a non-public address, or `None` for a public one.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    if let Some(v4) = embedded_v4(ip) {
        return non_public_v4(v4);
    }
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unspecified() {
                Some("the unspecified address")
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else if s[0] & 0xfe00 == 0xfc00 || s[0] & 0xffc0 == 0xfec0 {
                Some("a private (unique local) address")
            } else if s[0] & 0xff00 == 0xff00 {
                Some("a multicast address")
            } else if s[0] == 0x2001 && s[1] == 0x0db8 || s[..4] == [0x100, 0, 0, 0] {
                Some("a reserved address")
            } else {
                None
            }
        }
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() {
        Some("a private address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a shared (carrier-grade NAT) address")
    } else if a == 0 {
        Some("the unspecified address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if a >= 240
        || (a, b, c) == (192, 0, 0)
        || (a, b, c) == (192, 0, 2)
        || (a, b, c) == (198, 51, 100)
        || (a, b, c) == (203, 0, 113)
        || (a == 198 && (b == 18 || b == 19))
    {
        Some("a reserved address")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_public_addresses_by_default() {
        let p = NetworkPolicy::default();
        for refused in [
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "fe80::1",
            "fd00::1",
            "100.64.0.1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "255.255.255.255",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
        ] {
            assert!(
                p.refusal(ip(refused)).is_some(),
                "{refused} must be refused"
            );
        }
        for public in ["93.184.216.34", "2606:4700::1111", "::ffff:93.184.216.34"] {
            assert_eq!(p.refusal(ip(public)), None, "{public}");
        }
        assert_eq!(p.refusal(ip("169.254.1.1")), Some("a link-local address"));
    }

    #[test]
    fn allowed_ranges_and_plain_text() {
        let p = NetworkPolicy::default().with_allow_ranges(vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(p.refusal(ip("10.9.9.9")), None);
        assert_eq!(p.refusal(ip("::ffff:10.9.9.9")), None);
        assert!(p.refusal(ip("192.168.0.1")).is_some());
        assert!(p.allows_plaintext(ip("127.0.0.1")));
        assert!(p.allows_plaintext(ip("::ffff:127.0.0.1")));
        assert!(!p.allows_plaintext(ip("10.9.9.9")));
        assert!(!p.clone().with_fips(true).allows_plaintext(ip("127.0.0.1")));
    }

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_range("::1").unwrap().to_string(), "::1/128");
        assert!(parse_range("10.0.0.0/33").is_err());
    }

    #[test]
    fn permitted_keeps_allowed_addresses_and_explains_refusals() {
        let p = NetworkPolicy::default();
        let targets: Vec<SocketAddr> = vec![
            "127.0.0.1:993".parse().unwrap(),
            "93.184.216.34:993".parse().unwrap(),
        ];
        assert_eq!(
            p.permitted("mail.example.com", &targets, false).unwrap(),
            vec![targets[1]]
        );
        let e = p.permitted("localhost", &targets[..1], false).unwrap_err();
        assert_eq!(
            (e.step, e.kind),
            (FailureStep::TcpConnect, ErrorKind::Config)
        );
        assert!(
            e.message
                .starts_with("localhost resolves to 127.0.0.1, a loopback address"),
            "{e}"
        );
        assert!(e.message.contains("network.allow_ranges"), "{e}");
        let e = p
            .permitted("mail.example.com", &targets[1..], true)
            .unwrap_err();
        assert!(e.message.contains("tls.plaintext_ranges"), "{e}");
    }
}
