//! The SSRF guard: which addresses may not be dialled, and the DNS resolution that vets every
//! address of an API's host before the client connects.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::Egress;
use crate::config::Api;
use crate::error::GatewayError;

/// Why an address may not be dialled, or `None` for a public unicast address.
pub fn blocked_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return blocked_v4(v4);
            }
            let s = v6.segments();
            if v6.is_unspecified() {
                Some("unspecified address")
            } else if v6.is_loopback() {
                Some("loopback address")
            } else if s[0] == 0x0064 && s[1] == 0xff9b {
                // NAT64: judge the embedded IPv4 address; 64:ff9b:1::/48 is local-use.
                if s[2] == 1 {
                    Some("local-use NAT64 address")
                } else {
                    let v4 =
                        Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
                    blocked_v4(v4)
                }
            } else if s[0] == 0x2002 {
                // 6to4 embeds an IPv4 address in bits 16..48.
                let v4 =
                    Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
                blocked_v4(v4)
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some("unique-local (private) address")
            } else if (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xffc0) == 0xfec0 {
                Some("link-local address")
            } else if (s[0] & 0xff00) == 0xff00 {
                Some("multicast address")
            } else if s[0] == 0x2001 && s[1] == 0x0db8 {
                Some("documentation address")
            } else if s[0] == 0x2001 && s[1] == 0 {
                Some("Teredo address")
            } else if s[0] == 0x2001 && s[1] < 0x0200 {
                // 2001::/23: IETF protocol assignments (benchmarking, ORCHID, AMT, ...).
                Some("IETF protocol assignment address")
            } else if s[0] == 0x3fff && s[1] < 0x1000 {
                // 3fff::/20 (RFC 9637).
                Some("documentation address")
            } else if s[0] == 0x5f00 {
                Some("segment-routing (SRv6) address")
            } else if s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0 {
                Some("discard-only address")
            } else if s[..6] == [0, 0, 0, 0, 0, 0] {
                Some("IPv4-compatible address")
            } else {
                None
            }
        }
    }
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_unspecified() || o[0] == 0 {
        Some("'this network' address")
    } else if ip.is_loopback() {
        Some("loopback address")
    } else if ip.is_private() {
        Some("private address")
    } else if ip.is_link_local() {
        Some("link-local or cloud metadata address")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("carrier-grade NAT address")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("IETF protocol assignment address")
    } else if o[0] == 192 && o[1] == 88 && o[2] == 99 {
        Some("6to4 relay anycast address")
    } else if ip.is_documentation() {
        Some("documentation address")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("benchmarking address")
    } else if ip.is_multicast() {
        Some("multicast address")
    } else if o[0] >= 240 {
        Some("reserved or broadcast address")
    } else if o == [168, 63, 129, 16] {
        Some("cloud metadata address")
    } else {
        None
    }
}

impl Egress {
    async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        match &self.resolver {
            Some(r) => {
                let answer = r
                    .lookup_ip(host)
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                Ok(answer.iter().map(|ip| SocketAddr::new(ip, port)).collect())
            }
            None => Ok(tokio::net::lookup_host((host, port)).await?.collect()),
        }
    }

    /// Resolves the API's host and vets every address. A name that resolves to any refused
    /// address is refused as a whole, so a DNS answer mixing public and private records cannot
    /// be used to reach the private one.
    pub async fn resolve(&self, api: &Api) -> Result<SocketAddr, GatewayError> {
        // An address literal is vetted as it is: no lookup (nor its future), no list.
        let literal;
        let looked_up;
        let addrs: &[SocketAddr] = match api.base.host.parse::<IpAddr>() {
            Ok(ip) => {
                literal = SocketAddr::new(ip, api.base.port);
                std::slice::from_ref(&literal)
            }
            Err(_) => {
                let lookup = Box::pin(self.lookup(&api.base.host, api.base.port));
                looked_up = match tokio::time::timeout(api.connect_timeout, lookup).await {
                    Ok(Ok(addrs)) => addrs,
                    Ok(Err(_)) => {
                        return Err(GatewayError::upstream_error(format!(
                            "the host of API {:?} could not be resolved",
                            api.name
                        )))
                    }
                    Err(_) => {
                        return Err(GatewayError::upstream_timeout(format!(
                            "resolving the host of API {:?} timed out",
                            api.name
                        )))
                    }
                };
                &looked_up
            }
        };
        let first = *addrs.first().ok_or_else(|| {
            GatewayError::upstream_error(format!("the host of API {:?} has no addresses", api.name))
        })?;
        if !api.allow_private_network {
            if let Some(reason) = addrs.iter().find_map(|a| blocked_reason(a.ip())) {
                return Err(GatewayError::egress_denied(format!(
                    "the destination of API {:?} resolves to a {reason}, which is blocked; \
                     an operator can set allow_private_network = true on the API to allow it",
                    api.name
                )));
            }
        }
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssrf_classification() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "168.63.129.16",
        ] {
            assert!(
                blocked_reason(ip.parse().unwrap()).is_some(),
                "{ip} not blocked"
            );
        }
        for ip in [
            "93.184.216.34",
            "140.82.112.3",
            "2606:4700::1111",
            "64:ff9b::5db8:d822",
        ] {
            assert_eq!(blocked_reason(ip.parse().unwrap()), None, "{ip} blocked");
        }
    }

    mod properties {
        use super::*;
        use ipnet::IpNet;
        use proptest::prelude::*;

        /// The special-purpose table (RFC 6890 and successors, IANA registries): every
        /// address in these ranges is refused, everything else is dialable.
        const TABLE: &[&str] = &[
            "0.0.0.0/8",
            "10.0.0.0/8",
            "100.64.0.0/10",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "172.16.0.0/12",
            "192.0.0.0/24",
            "192.0.2.0/24",
            "192.88.99.0/24",
            "192.168.0.0/16",
            "198.18.0.0/15",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "224.0.0.0/4",
            "240.0.0.0/4",
            "168.63.129.16/32",
            "::/128",
            "::1/128",
            "::/96",
            "100::/64",
            "2001::/23",
            "2001:db8::/32",
            "3fff::/20",
            "5f00::/16",
            "fc00::/7",
            "fe80::/10",
            "fec0::/10",
            "ff00::/8",
            "64:ff9b:1::/48",
        ];

        /// The oracle: the table, with IPv4 embedded in IPv4-mapped, NAT64 (64:ff9b::/96)
        /// and 6to4 (2002::/16) addresses judged as that IPv4 address.
        fn oracle(ip: IpAddr) -> bool {
            let nets: Vec<IpNet> = TABLE.iter().map(|s| s.parse().unwrap()).collect();
            let ip = match ip {
                IpAddr::V6(v6) => {
                    let s = v6.segments();
                    if let Some(v4) = v6.to_ipv4_mapped() {
                        IpAddr::V4(v4)
                    } else if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                        IpAddr::V4(Ipv4Addr::new(
                            (s[6] >> 8) as u8,
                            s[6] as u8,
                            (s[7] >> 8) as u8,
                            s[7] as u8,
                        ))
                    } else if s[0] == 0x2002 {
                        IpAddr::V4(Ipv4Addr::new(
                            (s[1] >> 8) as u8,
                            s[1] as u8,
                            (s[2] >> 8) as u8,
                            s[2] as u8,
                        ))
                    } else {
                        ip
                    }
                }
                v4 => v4,
            };
            nets.iter().any(|n| n.contains(&ip))
        }

        /// Addresses inside a random table range, inside the embedding prefixes, or anywhere.
        fn address() -> impl Strategy<Value = IpAddr> {
            let in_table = (0..TABLE.len(), any::<u128>()).prop_map(|(i, r)| {
                match TABLE[i].parse::<IpNet>().unwrap() {
                    IpNet::V4(n) => {
                        let host = (r as u32) & !u32::from(n.netmask());
                        IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | host))
                    }
                    IpNet::V6(n) => {
                        let host = r & !u128::from(n.netmask());
                        IpAddr::V6(std::net::Ipv6Addr::from(u128::from(n.network()) | host))
                    }
                }
            });
            let embedded = (any::<u32>(), 0..3u8).prop_map(|(v4, kind)| {
                let v4 = u128::from(v4);
                let v6 = match kind {
                    0 => 0xffff_0000_0000u128 | v4,
                    1 => (0x0064_ff9bu128 << 96) | v4,
                    _ => (0x2002u128 << 112) | (v4 << 80),
                };
                IpAddr::V6(std::net::Ipv6Addr::from(v6))
            });
            prop_oneof![
                in_table,
                embedded,
                any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v))),
                any::<u128>().prop_map(|v| IpAddr::V6(std::net::Ipv6Addr::from(v))),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(20000))]

            #[test]
            fn ip_classifier_matches_the_table(ip in address()) {
                prop_assert_eq!(blocked_reason(ip).is_some(), oracle(ip), "{}", ip);
            }
        }
    }
}
