//! Kubernetes IP and CIDR libraries: `ip()`, `isIP()`, `ip.isCanonical()`, `cidr()`, `isCIDR()`,
//! their methods and `string()` of both, with Go's `net/netip` rules as the API server applies
//! them (no IPv4-mapped IPv6 addresses, no zones, no leading zeros in IPv4 octets).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use cel::common::types::{CelBool, CelInt, CelString};
use cel::{DeclarationError, Env, ExecutionError};

use super::{error, opaque_val};

pub fn register(env: &mut Env) -> Result<(), DeclarationError> {
    cel::add_overload!(env, fn ip: (CelString) -> Result<Ip>)?;
    cel::add_overload!(env, fn is_ip: (CelString) -> CelBool, name = "isIP")?;
    cel::add_overload!(env, fn is_canonical: (CelString) -> Result<CelBool>, name = "ip.isCanonical")?;
    cel::add_overload!(env, fn ip_to_string: (Ip) -> CelString, name = "string")?;
    cel::add_member_overload!(env, fn family: (Ip) -> CelInt)?;
    cel::add_member_overload!(env, fn is_unspecified: (Ip) -> CelBool)?;
    cel::add_member_overload!(env, fn is_loopback: (Ip) -> CelBool)?;
    cel::add_member_overload!(env, fn is_link_local_multicast: (Ip) -> CelBool)?;
    cel::add_member_overload!(env, fn is_link_local_unicast: (Ip) -> CelBool)?;
    cel::add_member_overload!(env, fn is_global_unicast: (Ip) -> CelBool)?;

    cel::add_overload!(env, fn cidr: (CelString) -> Result<Cidr>)?;
    cel::add_overload!(env, fn is_cidr: (CelString) -> CelBool, name = "isCIDR")?;
    cel::add_overload!(env, fn cidr_to_string: (Cidr) -> CelString, name = "string")?;
    cel::add_member_overload!(env, fn contains_ip: (Cidr, Ip) -> CelBool, name = "containsIP")?;
    cel::add_member_overload!(
        env,
        fn contains_ip_string: (Cidr, CelString) -> Result<CelBool>,
        name = "containsIP"
    )?;
    cel::add_member_overload!(env, fn contains_cidr: (Cidr, Cidr) -> CelBool, name = "containsCIDR")?;
    cel::add_member_overload!(
        env,
        fn contains_cidr_string: (Cidr, CelString) -> Result<CelBool>,
        name = "containsCIDR"
    )?;
    cel::add_member_overload!(env, fn cidr_ip: (Cidr) -> Ip, name = "ip")?;
    cel::add_member_overload!(env, fn masked: (Cidr) -> Cidr)?;
    cel::add_member_overload!(env, fn prefix_length: (Cidr) -> CelInt)?;
    Ok(())
}

/// An IPv4 or IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ip(IpAddr);

opaque_val!(Ip, "net.IP");

/// An address with a prefix length (the address keeps its host bits: `masked()` clears them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

opaque_val!(Cidr, "net.CIDR");

/// Go's `netip.ParseAddr` without zones; the message says why not.
fn parse_addr(raw: &str) -> Result<IpAddr, String> {
    if raw.contains('%') {
        return Err(format!("IP address {raw:?} with zone value is not allowed"));
    }
    let addr: IpAddr = raw.parse().map_err(|_| {
        format!("IP Address {raw:?} parse error during conversion from string: ParseAddr({raw:?}): unable to parse IP")
    })?;
    Ok(addr)
}

/// `parseIPAddr` of the Kubernetes library.
fn parse_ip(raw: &str) -> Result<Ip, String> {
    let addr = parse_addr(raw)?;
    if let IpAddr::V6(v6) = addr
        && v6.to_ipv4_mapped().is_some()
    {
        return Err(format!("IPv4-mapped IPv6 address {raw:?} is not allowed"));
    }
    Ok(Ip(addr))
}

/// `parseCIDR` of the Kubernetes library (Go's `netip.ParsePrefix`).
fn parse_cidr(raw: &str) -> Result<Cidr, String> {
    let fail = |why: &str| {
        format!(
            "network address parse error during conversion from string: netip.ParsePrefix({raw:?}): {why}"
        )
    };
    let Some((addr, bits)) = raw.rsplit_once('/') else {
        return Err(fail("no '/'"));
    };
    if addr.contains('%') {
        return Err(fail("IPv6 zones cannot be present in a prefix"));
    }
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| fail(&format!("ParseAddr({addr:?}): unable to parse IP")))?;
    // Go accepts neither a sign nor leading zeros.
    if bits.is_empty()
        || !bits.bytes().all(|b| b.is_ascii_digit())
        || (bits.len() > 1 && bits.starts_with('0'))
    {
        return Err(fail(&format!("bad bits after slash: {bits:?}")));
    }
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let bits = bits
        .parse::<u8>()
        .ok()
        .filter(|b| *b <= max)
        .ok_or_else(|| fail("prefix length out of range"))?;
    if let IpAddr::V6(v6) = addr
        && v6.to_ipv4_mapped().is_some()
    {
        return Err(format!("IPv4-mapped IPv6 address {raw:?} is not allowed"));
    }
    Ok(Cidr { addr, bits })
}

/// `addr` with every bit after the first `bits` cleared.
fn mask(addr: IpAddr, bits: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

fn ip(s: &CelString<'_>) -> Result<Ip, ExecutionError> {
    parse_ip(s.inner()).map_err(|e| error("ip", e))
}

fn is_ip(s: &CelString<'_>) -> CelBool {
    CelBool::from(parse_ip(s.inner()).is_ok())
}

/// Whether the string is the address's one canonical spelling.
fn is_canonical(s: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    let ip = parse_ip(s.inner()).map_err(|e| error("ip.isCanonical", e))?;
    Ok(CelBool::from(ip.0.to_string() == s.inner()))
}

fn ip_to_string(ip: &Ip) -> CelString<'static> {
    CelString::from(ip.0.to_string())
}

fn family(ip: &Ip) -> CelInt {
    CelInt::from(if ip.0.is_ipv4() { 4 } else { 6 })
}

fn is_unspecified(ip: &Ip) -> CelBool {
    CelBool::from(ip.0.is_unspecified())
}

fn is_loopback(ip: &Ip) -> CelBool {
    CelBool::from(ip.0.is_loopback())
}

/// Go: 224.0.0.0/24, or an IPv6 multicast address of link-local scope (ffx2::/16).
fn is_link_local_multicast(ip: &Ip) -> CelBool {
    CelBool::from(match ip.0 {
        IpAddr::V4(v4) => v4.octets()[..3] == [224, 0, 0],
        IpAddr::V6(v6) => v6.segments()[0] & 0xff0f == 0xff02,
    })
}

/// Go: 169.254.0.0/16, or fe80::/10.
fn is_link_local_unicast(ip: &Ip) -> CelBool {
    CelBool::from(link_local_unicast(ip.0))
}

fn link_local_unicast(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.octets()[..2] == [169, 254],
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// Go's `IsGlobalUnicast`: not unspecified, the IPv4 broadcast address, loopback, multicast or
/// link-local unicast (private addresses count as global).
fn is_global_unicast(ip: &Ip) -> CelBool {
    let addr = ip.0;
    let broadcast = addr == IpAddr::V4(Ipv4Addr::BROADCAST);
    CelBool::from(
        !addr.is_unspecified()
            && !broadcast
            && !addr.is_loopback()
            && !addr.is_multicast()
            && !link_local_unicast(addr),
    )
}

fn cidr(s: &CelString<'_>) -> Result<Cidr, ExecutionError> {
    parse_cidr(s.inner()).map_err(|e| error("cidr", e))
}

fn is_cidr(s: &CelString<'_>) -> CelBool {
    CelBool::from(parse_cidr(s.inner()).is_ok())
}

fn cidr_to_string(c: &Cidr) -> CelString<'static> {
    CelString::from(format!("{}/{}", c.addr, c.bits))
}

fn contains_ip(c: &Cidr, ip: &Ip) -> CelBool {
    CelBool::from(c.addr.is_ipv4() == ip.0.is_ipv4() && mask(ip.0, c.bits) == mask(c.addr, c.bits))
}

fn contains_ip_string(c: &Cidr, s: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    Ok(contains_ip(c, &ip(s)?))
}

/// Whether `other` lies inside `c`: same family, its address inside `c`'s network, and its
/// prefix at least as long (`cidr('10.0.0.0/8').containsCIDR('10.1.2.3/24')` is true on the
/// API server too, host bits and all; checked by `tests/policy-library`).
fn contains_cidr(c: &Cidr, other: &Cidr) -> CelBool {
    CelBool::from(
        c.addr.is_ipv4() == other.addr.is_ipv4()
            && mask(other.addr, c.bits) == mask(c.addr, c.bits)
            && c.bits <= other.bits,
    )
}

fn contains_cidr_string(c: &Cidr, s: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    Ok(contains_cidr(c, &cidr(s)?))
}

fn cidr_ip(c: &Cidr) -> Ip {
    Ip(c.addr)
}

fn masked(c: &Cidr) -> Cidr {
    Cidr {
        addr: mask(c.addr, c.bits),
        bits: c.bits,
    }
}

fn prefix_length(c: &Cidr) -> CelInt {
    CelInt::from(i64::from(c.bits))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::check;

    #[test]
    fn ip_addresses() {
        check(
            &[
                "isIP('127.0.0.1') && isIP('::1') && !isIP('127.0.0.256') && !isIP(':::1')",
                "!isIP('01.2.3.4') && !isIP('::ffff:1.2.3.4') && !isIP('fe80::1%eth0')",
                "ip('127.0.0.1').family() == 4 && ip('::1').family() == 6",
                "ip('0.0.0.0').isUnspecified() && ip('::').isUnspecified() && !ip('::1').isUnspecified()",
                "ip('127.0.0.1').isLoopback() && ip('::1').isLoopback() && !ip('192.168.0.1').isLoopback()",
                "ip('224.0.0.1').isLinkLocalMulticast() && !ip('224.0.1.1').isLinkLocalMulticast()",
                "ip('ff02::1').isLinkLocalMulticast() && !ip('fd00::1').isLinkLocalMulticast()",
                "ip('169.254.169.254').isLinkLocalUnicast() && ip('fe80::1').isLinkLocalUnicast()",
                "!ip('fd80::1').isLinkLocalUnicast() && !ip('192.168.0.1').isLinkLocalUnicast()",
                "ip('192.168.0.1').isGlobalUnicast() && ip('2001:db8::abcd').isGlobalUnicast()",
                "!ip('255.255.255.255').isGlobalUnicast() && !ip('ff00::1').isGlobalUnicast()",
                "ip.isCanonical('127.0.0.1') && ip.isCanonical('2001:db8::abcd')",
                "!ip.isCanonical('2001:DB8::ABCD') && !ip.isCanonical('2001:db8::0:0:0:abcd')",
                "string(ip('2001:DB8:0:0:0::1')) == '2001:db8::1'",
                "string(ip('::102:304')) == '::102:304'",
                "ip('10.0.0.1') == ip('10.0.0.1') && ip('10.0.0.1') != ip('10.0.0.2')",
            ],
            &[
                ("ip('::ffff:1.2.3.4')", "IPv4-mapped IPv6 address"),
                ("ip('fe80::1%eth0')", "with zone value is not allowed"),
                (
                    "ip('127.0.0.256')",
                    "parse error during conversion from string",
                ),
            ],
        );
    }

    #[test]
    fn cidrs() {
        check(
            &[
                "isCIDR('192.168.0.0/16') && isCIDR('::1/128') && !isCIDR('192.168.0.0/33')",
                "!isCIDR('::1/129') && !isCIDR('10.0.0.0/08') && !isCIDR('10.0.0.0') && !isCIDR('::ffff:1.2.3.4/120')",
                "isCIDR('192.168.0.1/16')",
                "cidr('192.168.0.0/24').containsIP(ip('192.168.0.1'))",
                "!cidr('192.168.0.0/24').containsIP(ip('192.168.1.1'))",
                "cidr('192.168.0.0/24').containsIP('192.168.0.1') && !cidr('192.168.0.0/24').containsIP('::1')",
                "cidr('192.168.0.0/16').containsCIDR(cidr('192.168.0.0/24'))",
                "!cidr('192.168.1.0/24').containsCIDR('192.168.2.0/24')",
                "!cidr('192.168.0.0/24').containsCIDR('192.168.0.0/16')",
                "cidr('192.168.0.1/24').ip() == ip('192.168.0.1') && cidr('::1/128').ip().family() == 6",
                "cidr('192.168.0.1/24').masked() == cidr('192.168.0.0/24')",
                "cidr('192.168.0.0/24') == cidr('192.168.0.0/24').masked()",
                "cidr('192.168.0.1/24') != cidr('192.168.0.1/24').masked()",
                "cidr('192.168.0.0/16').prefixLength() == 16 && cidr('::1/128').prefixLength() == 128",
                "string(cidr('192.168.0.1/24')) == '192.168.0.1/24' && string(cidr('2001:DB8::/32')) == '2001:db8::/32'",
                "cidr('0.0.0.0/0').containsIP('8.8.8.8') && cidr('::/0').containsCIDR('2001:db8::/32')",
            ],
            &[
                ("cidr('192.168.0.0/33')", "prefix length out of range"),
                ("cidr('10.0.0.0/8').containsIP('x')", "parse error"),
            ],
        );
    }
}
