//! Where the media proxy may fetch from.
//!
//! A provider hands us the media URL (in a webhook, or from its API), and the gateway then
//! fetches it from inside the operator's network. Without a check, a forged or compromised
//! source could make us read `http://169.254.169.254/` (cloud metadata) or an internal
//! admin page and serve it back under a signed URL. So every target host is resolved
//! first, every address it resolves to must be public, and the connection is pinned to
//! the addresses we checked (no second DNS lookup that could answer differently).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Whether an address is one the gateway must never fetch from on a provider's say-so:
/// loopback, private ranges, link-local (cloud metadata), CGNAT, multicast, unspecified,
/// documentation and benchmarking ranges, and their IPv6 equivalents (including
/// IPv4-mapped addresses, which would otherwise smuggle `::ffff:127.0.0.1` through).
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            forbidden_v6(v6)
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_unspecified()
        || ip.is_documentation()
        || o[0] == 0
        // 100.64.0.0/10, carrier-grade NAT
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
        // 192.0.0.0/24, IETF protocol assignments
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        // 198.18.0.0/15, benchmarking
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
        // 240.0.0.0/4, reserved
        || o[0] >= 240
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // fc00::/7, unique local
        || (s[0] & 0xfe00) == 0xfc00
        // fe80::/10, link-local
        || (s[0] & 0xffc0) == 0xfe80
        // 2001:db8::/32, documentation
        || (s[0] == 0x2001 && s[1] == 0x0db8)
        // 64:ff9b::/96 NAT64 could reach any IPv4 address, private ones included
        || (s[0] == 0x64 && s[1] == 0xff9b)
}

/// Resolves `host:port` and returns the addresses to connect to, refusing the whole host
/// if any address is forbidden (a host that resolves to one public and one private address
/// is not trusted with either). `allow_private` is for tests against loopback stand-ins.
pub async fn resolve_public(
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("cannot resolve media host {host}: {e}"))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("media host {host} has no address"));
    }
    if !allow_private && let Some(bad) = addrs.iter().find(|a| is_forbidden(a.ip())) {
        return Err(format!(
            "media host {host} resolves to a non-public address ({}); refused",
            bad.ip()
        ));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_ranges() {
        let bad = [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2001:db8::1",
        ];
        for a in bad {
            assert!(is_forbidden(a.parse().unwrap()), "{a} must be refused");
        }
        let good = [
            "1.1.1.1",
            "8.8.8.8",
            "149.154.167.220",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ];
        for a in good {
            assert!(!is_forbidden(a.parse().unwrap()), "{a} is public");
        }
    }

    #[tokio::test]
    async fn resolve_refuses_loopback_unless_allowed() {
        let err = resolve_public("127.0.0.1", 80, false).await.unwrap_err();
        assert!(err.contains("non-public"), "{err}");
        let err = resolve_public("localhost", 80, false).await.unwrap_err();
        assert!(err.contains("non-public"), "{err}");
        let ok = resolve_public("127.0.0.1", 8080, true).await.unwrap();
        assert_eq!(ok, vec!["127.0.0.1:8080".parse().unwrap()]);
    }
}
