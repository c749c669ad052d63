//! Which network addresses anyone on the internet could reach: what a
//! repository may make tidegate contact (values URLs, registries) unless
//! an operator lists more.

use std::net::IpAddr;

/// Whether an address is one anyone on the internet could reach.
pub fn is_public(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                // 100.64.0.0/10: shared address space (carrier NAT, some clusters' services).
                || (a == 100 && (64..128).contains(&b))
                // 192.0.0.0/24, 198.18.0.0/15: protocol assignments, benchmarking.
                || (a == 192 && b == 0 && v4.octets()[2] == 0)
                || (a == 198 && (18..20).contains(&b))
                // 240.0.0.0/4: reserved.
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                IpAddr::V4(std::net::Ipv4Addr::new(
                    (hi >> 8) as u8,
                    hi as u8,
                    (lo >> 8) as u8,
                    lo as u8,
                ))
            };
            // NAT64 (64:ff9b::/96), 6to4 (2002::/16) and IPv4-compatible
            // (::a.b.c.d) addresses reach the IPv4 address inside.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..6] == [0; 6] && s[6] != 0 {
                return is_public(embedded(s[6], s[7]));
            }
            if s[0] == 0x2002 {
                return is_public(embedded(s[1], s[2]));
            }
            let first = s[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fc00::/7 unique local, fe80::/10 link-local.
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// Whether `addr` of `host` is listed: the host's name, a network (CIDR)
/// holding the address, or the address itself.
pub fn listed(allow: &[String], host: &str, addr: IpAddr) -> bool {
    allow.iter().any(|entry| {
        entry.eq_ignore_ascii_case(host)
            || entry
                .parse::<ipnet::IpNet>()
                .is_ok_and(|net| net.contains(&addr))
            || entry.parse::<IpAddr>().is_ok_and(|ip| ip == addr)
    })
}
