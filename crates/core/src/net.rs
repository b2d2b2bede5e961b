//! IPv4 networks as the cluster cuts them: the cluster CIDR, each node's block of it, the
//! addresses inside a block.

use std::net::Ipv4Addr;

/// The annotation of a node whose pod CIDR lives on another node's host (a virtual node's
/// container groups on a cluster host): that node's name. The other nodes reach the CIDR
/// through that node's overlay endpoint; on that node itself it is local.
pub const VIA_ANNOTATION: &str = "berth.dev/pod-network-via";

/// An IPv4 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub base: Ipv4Addr,
    pub bits: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("{0:?} is not an IPv4 CIDR such as 10.42.0.0/16")]
    Parse(String),
    #[error("{given} has bits set past its /{bits}: did you mean {base}/{bits}?")]
    HostBits {
        given: String,
        base: Ipv4Addr,
        bits: u8,
    },
    #[error("the cluster CIDR {cluster} cannot hold one node's /{node_bits}: give a larger one (a smaller prefix) with --cluster-cidr, or a longer --node-cidr-mask-size")]
    TooSmall { cluster: Cidr, node_bits: u8 },
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.bits)
    }
}

impl std::str::FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let bad = || CidrError::Parse(s.to_string());
        let (ip, bits) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let bits: u8 = bits.parse().ok().filter(|b| *b <= 32).ok_or_else(bad)?;
        let c = Cidr { base: ip, bits };
        if c.network() != ip {
            return Err(CidrError::HostBits {
                given: s.into(),
                base: c.network(),
                bits,
            });
        }
        Ok(c)
    }
}

impl Cidr {
    fn mask(&self) -> u32 {
        if self.bits == 0 {
            0
        } else {
            u32::MAX << (32 - self.bits)
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) & self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.base) & self.mask()
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.base) || other.contains(self.base)
    }

    /// The `n`th block of `/bits` inside this network, if there is one.
    pub fn block(&self, bits: u8, n: u32) -> Option<Cidr> {
        let count = 1u64 << (bits - self.bits);
        (u64::from(n) < count).then(|| Cidr {
            base: Ipv4Addr::from(u32::from(self.base) + (n << (32 - bits))),
            bits,
        })
    }

    /// The `n`th address of the network (0 is the network's own address).
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - self.bits);
        (u64::from(n) < size).then(|| Ipv4Addr::from(u32::from(self.base) + n))
    }

    /// How many addresses the network spans.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.bits)
    }
}
