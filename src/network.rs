//! Outbound destination policy: which resolved addresses the worker may connect to.
//! Loopback, private, link-local, CGNAT, multicast, unspecified and reserved addresses are
//! refused unless `webhook.allowed_networks` opts their range in. Pure Rust.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetworkPolicy {
    allowed: Vec<IpNet>,
}

impl NetworkPolicy {
    /// Parse `webhook.allowed_networks`: comma-separated CIDR ranges (a bare address is a /32 or /128).
    pub fn parse(list: &str) -> Result<NetworkPolicy, String> {
        let mut allowed = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net = item
                .parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!("invalid network \"{item}\": expected CIDR ranges such as 127.0.0.0/8 or ::1/128")
                })?;
            allowed.push(net);
        }
        Ok(NetworkPolicy { allowed })
    }

    /// `Err` names why the address is refused.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        let Some(class) = refused_class(ip) else {
            return Ok(());
        };
        let unmapped = unmap(ip);
        if self
            .allowed
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&unmapped))
        {
            return Ok(());
        }
        Err(format!(
            "destination address {ip} is refused: {class} addresses are not reachable unless webhook.allowed_networks includes them"
        ))
    }
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if a == 100 && (64..128).contains(&b) {
        Some("CGNAT (100.64.0.0/10)")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if a == 0 {
        Some("unspecified (0.0.0.0/8)")
    } else if ip.is_broadcast() || a >= 240 {
        Some("reserved")
    } else {
        None
    }
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if first & 0xfe00 == 0xfc00 {
        Some("private (unique local)")
    } else {
        None
    }
}

/// The class of an address refused by default, or None for a public address.
pub fn refused_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4_class(v4).map(|_| "IPv4-mapped private or loopback"),
            None => v6_class(v6),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refuses_non_public_ranges_by_default() {
        let p = NetworkPolicy::default();
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(p.check(ip(refused)).is_err(), "{refused} should be refused");
        }
        for public in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "100.128.0.1",
        ] {
            assert!(p.check(ip(public)).is_ok(), "{public} should be allowed");
        }
    }

    #[test]
    fn allowed_networks_opt_ranges_in() {
        let p = NetworkPolicy::parse("127.0.0.0/8, ::1/128").unwrap();
        assert!(p.check(ip("127.0.0.1")).is_ok());
        assert!(p.check(ip("::1")).is_ok());
        assert!(p.check(ip("::ffff:127.0.0.1")).is_ok());
        assert!(p.check(ip("10.0.0.1")).is_err());
        let err = p.check(ip("10.0.0.1")).unwrap_err();
        assert!(err.contains("10.0.0.1") && err.contains("private"), "{err}");
    }

    #[test]
    fn bad_lists_name_the_bad_item() {
        assert!(NetworkPolicy::parse("").unwrap().allowed.is_empty());
        assert!(NetworkPolicy::parse("10.0.0.1").is_ok());
        assert!(NetworkPolicy::parse("10.0.0.0/33")
            .unwrap_err()
            .contains("\"10.0.0.0/33\""));
        assert!(NetworkPolicy::parse("localhost")
            .unwrap_err()
            .contains("\"localhost\""));
    }
}
