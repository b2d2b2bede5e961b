//! The kernel's links, addresses, routes and neighbours, through rtnetlink: the pod bridge,
//! each pod's veth pair, the VXLAN device and what it knows of its peers. Behind a trait so
//! the pod network and the overlay are tested with a recording fake.
//!
//! Configuring inside a pod's network namespace needs a netlink socket opened there: a
//! thread of its own joins the namespace (setns), opens one and does the work.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures::TryStreamExt;
use rtnetlink::packet_route::neighbour::NeighbourFlags;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("opening a netlink socket failed (the agent needs root, or CAP_NET_ADMIN)")]
    Socket(#[source] std::io::Error),
    #[error("{what} failed")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("entering the network namespace {path} failed")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("link {name} is missing")]
    Missing { name: String },
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let what = what.into();
    move |source| LinkError::Netlink { what, source }
}

/// Another node's end of the overlay.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    /// The node's pod CIDR (routed to it).
    pub cidr: berth_core::net::Cidr,
    /// The node's address on the underlay, where its VXLAN packets go.
    pub vtep: Ipv4Addr,
    /// The MAC of the node's VXLAN device.
    pub mac: [u8; 6],
}

#[async_trait::async_trait]
pub trait Links: Send + Sync {
    /// A bridge named `name`, up, holding `gateway/prefix` (made if missing).
    async fn bridge(&self, name: &str, gateway: Ipv4Addr, prefix: u8) -> Result<(), LinkError>;

    /// A veth pair of `mtu`: `host_if` on `bridge`, its peer as `eth0` in the namespace at
    /// `netns` with `ip/prefix` and a default route through `gateway`.
    #[allow(clippy::too_many_arguments)]
    async fn attach(
        &self,
        netns: &Path,
        bridge: &str,
        host_if: &str,
        ip: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
        mtu: u32,
    ) -> Result<(), LinkError>;

    /// The MTU of the link holding `address`, if one does.
    async fn mtu_of(&self, address: Ipv4Addr) -> Result<Option<u32>, LinkError>;

    /// A VXLAN device (made if missing, no learning, `mtu`) sending from `local` to `port`,
    /// holding `address/32`; returns its MAC.
    async fn vxlan(
        &self,
        name: &str,
        vni: u32,
        local: Ipv4Addr,
        port: u16,
        address: Ipv4Addr,
        mtu: u32,
    ) -> Result<[u8; 6], LinkError>;

    /// Make the VXLAN device know exactly `peers`: for each its FDB entry (MAC to VTEP),
    /// its neighbour entry (its device's address to MAC) and an onlink route to its pod
    /// CIDR; entries of peers no longer listed go.
    async fn peers(&self, vxlan: &str, peers: &[Peer]) -> Result<(), LinkError>;

    /// Remove a link if it is there.
    async fn delete(&self, name: &str) -> Result<(), LinkError>;
}

/// The kernel, through rtnetlink.
pub struct Kernel {
    handle: Handle,
}

impl Kernel {
    /// A netlink connection in this thread's namespace, driven on the current runtime.
    pub fn connect() -> Result<Kernel, LinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(LinkError::Socket)?;
        tokio::spawn(conn);
        Ok(Kernel { handle })
    }
}

async fn index(handle: &Handle, name: &str) -> Result<Option<u32>, LinkError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(l) => Ok(l.map(|l| l.header.index)),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl(format!("looking up link {name}"))(e)),
    }
}

async fn must(handle: &Handle, name: &str) -> Result<u32, LinkError> {
    index(handle, name)
        .await?
        .ok_or_else(|| LinkError::Missing { name: name.into() })
}

async fn add_address(
    handle: &Handle,
    idx: u32,
    ip: Ipv4Addr,
    prefix: u8,
    on: &str,
) -> Result<(), LinkError> {
    handle
        .address()
        .add(idx, IpAddr::V4(ip), prefix)
        .replace()
        .execute()
        .await
        .map_err(nl(format!("adding {ip}/{prefix} to {on}")))
}

async fn up(handle: &Handle, idx: u32, name: &str) -> Result<(), LinkError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(nl(format!("setting {name} up")))
}

#[async_trait::async_trait]
impl Links for Kernel {
    async fn bridge(&self, name: &str, gateway: Ipv4Addr, prefix: u8) -> Result<(), LinkError> {
        let h = &self.handle;
        if index(h, name).await?.is_none() {
            h.link()
                .add(LinkBridge::new(name).build())
                .execute()
                .await
                .map_err(nl(format!("creating bridge {name}")))?;
        }
        let idx = must(h, name).await?;
        add_address(h, idx, gateway, prefix, name).await?;
        up(h, idx, name).await
    }

    async fn attach(
        &self,
        netns: &Path,
        bridge: &str,
        host_if: &str,
        ip: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
        mtu: u32,
    ) -> Result<(), LinkError> {
        let h = &self.handle;
        // A pair left from an attempt that failed half way goes first.
        if let Some(old) = index(h, host_if).await? {
            h.link()
                .del(old)
                .execute()
                .await
                .map_err(nl(format!("removing {host_if}")))?;
        }
        let peer = format!("{host_if}p");
        h.link()
            .add(LinkVeth::new(host_if, &peer).mtu(mtu).build())
            .execute()
            .await
            .map_err(nl(format!("creating veth {host_if}")))?;
        let ns = std::fs::File::open(netns).map_err(|source| LinkError::Netns {
            path: netns.to_path_buf(),
            source,
        })?;
        let peer_idx = must(h, &peer).await?;
        use std::os::fd::AsRawFd;
        h.link()
            .set(
                LinkUnspec::new_with_index(peer_idx)
                    .setns_by_fd(ns.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!("moving {peer} into {}", netns.display())))?;
        let bridge_idx = must(h, bridge).await?;
        let host_idx = must(h, host_if).await?;
        h.link()
            .set(
                LinkUnspec::new_with_index(host_idx)
                    .controller(bridge_idx)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!("putting {host_if} on {bridge}")))?;
        inside(netns, ns, move |h| async move {
            let idx = must(&h, &peer).await?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(idx)
                        .name("eth0".to_string())
                        .build(),
                )
                .execute()
                .await
                .map_err(nl("naming the pod's interface eth0"))?;
            add_address(&h, idx, ip, prefix, "eth0").await?;
            up(&h, idx, "eth0").await?;
            let lo = must(&h, "lo").await?;
            up(&h, lo, "lo").await?;
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gateway)
                .output_interface(idx)
                .build();
            h.route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(nl(format!("adding the default route through {gateway}")))
        })
        .await
    }

    async fn mtu_of(&self, address: Ipv4Addr) -> Result<Option<u32>, LinkError> {
        use rtnetlink::packet_route::address::AddressAttribute;
        use rtnetlink::packet_route::link::LinkAttribute;
        let h = &self.handle;
        let mut addrs = h.address().get().execute();
        let mut found = None;
        while let Some(a) = addrs.try_next().await.map_err(nl("listing addresses"))? {
            let holds = a.attributes.iter().any(|x| {
                matches!(x, AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) if *ip == address)
            });
            if holds {
                found = Some(a.header.index);
                break;
            }
        }
        let Some(idx) = found else {
            return Ok(None);
        };
        let mut links = h.link().get().match_index(idx).execute();
        let link = links.try_next().await.map_err(nl("reading a link"))?;
        Ok(link.and_then(|l| {
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
        }))
    }

    async fn vxlan(
        &self,
        name: &str,
        vni: u32,
        local: Ipv4Addr,
        port: u16,
        address: Ipv4Addr,
        mtu: u32,
    ) -> Result<[u8; 6], LinkError> {
        let h = &self.handle;
        if index(h, name).await?.is_none() {
            h.link()
                .add(
                    LinkVxlan::new(name, vni)
                        .local(local)
                        .port(port)
                        .learning(false)
                        .mtu(mtu)
                        .build(),
                )
                .execute()
                .await
                .map_err(nl(format!("creating vxlan {name}")))?;
        }
        let idx = must(h, name).await?;
        add_address(h, idx, address, 32, name).await?;
        up(h, idx, name).await?;
        let mut links = h.link().get().match_index(idx).execute();
        let link = links
            .try_next()
            .await
            .map_err(nl(format!("reading {name}")))?
            .ok_or_else(|| LinkError::Missing { name: name.into() })?;
        use rtnetlink::packet_route::link::LinkAttribute;
        let mac = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(m) if m.len() == 6 => {
                    Some([m[0], m[1], m[2], m[3], m[4], m[5]])
                }
                _ => None,
            })
            .unwrap_or_default();
        Ok(mac)
    }

    async fn peers(&self, vxlan: &str, peers: &[Peer]) -> Result<(), LinkError> {
        use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
        let h = &self.handle;
        let idx = must(h, vxlan).await?;
        for p in peers {
            h.neighbours()
                .add_bridge(idx, &p.mac)
                .destination(IpAddr::V4(p.vtep))
                .flags(NeighbourFlags::Own)
                .replace()
                .execute()
                .await
                .map_err(nl(format!("adding the FDB entry of {}", p.vtep)))?;
            h.neighbours()
                .add(idx, IpAddr::V4(p.cidr.base))
                .link_layer_address(&p.mac)
                .replace()
                .execute()
                .await
                .map_err(nl(format!("adding the neighbour entry of {}", p.cidr.base)))?;
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(p.cidr.base, p.cidr.bits)
                .gateway(p.cidr.base)
                .output_interface(idx)
                .onlink()
                .build();
            h.route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(nl(format!("routing {} through {vxlan}", p.cidr)))?;
        }
        // Routes through the device to CIDRs no peer holds any more go; their neighbour
        // and FDB entries are harmless without a route and are replaced when reused.
        let mut routes = h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut stale = Vec::new();
        while let Some(r) = routes.try_next().await.map_err(nl("listing routes"))? {
            // Only the main table's unicast routes are the overlay's: the device's own
            // address has a local route that must stay.
            if r.header.table != rtnetlink::packet_route::route::RouteHeader::RT_TABLE_MAIN
                || r.header.kind != rtnetlink::packet_route::route::RouteType::Unicast
            {
                continue;
            }
            let through = r
                .attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == idx));
            let dst = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let Some(dst) = dst.filter(|_| through) else {
                continue;
            };
            let bits = r.header.destination_prefix_length;
            if !peers
                .iter()
                .any(|p| p.cidr.base == dst && p.cidr.bits == bits)
            {
                stale.push(r);
            }
        }
        for r in stale {
            h.route()
                .del(r)
                .execute()
                .await
                .map_err(nl("removing a stale overlay route"))?;
        }
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<(), LinkError> {
        if let Some(idx) = index(&self.handle, name).await? {
            self.handle
                .link()
                .del(idx)
                .execute()
                .await
                .map_err(nl(format!("removing {name}")))?;
        }
        Ok(())
    }
}

/// Run `work` with a netlink handle opened inside the namespace `ns` (at `path`), on a
/// thread of its own that joins the namespace and dies with it.
async fn inside<F, Fut>(path: &Path, ns: std::fs::File, work: F) -> Result<(), LinkError>
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), LinkError>>,
{
    let path = path.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let result = (|| {
            // SAFETY: setns on this thread alone, with a namespace file we hold open.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(LinkError::Netns {
                    path: path.clone(),
                    source: std::io::Error::last_os_error(),
                });
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(LinkError::Socket)?;
            rt.block_on(async {
                let (conn, handle, _) = rtnetlink::new_connection().map_err(LinkError::Socket)?;
                tokio::spawn(conn);
                work(handle).await
            })
        })();
        let _ = tx.send(result);
    });
    rx.await.unwrap_or_else(|_| {
        Err(LinkError::Missing {
            name: "the namespace thread".into(),
        })
    })
}

/// A fake that records what it is asked, and holds the bridge and devices it made.
#[derive(Default)]
pub struct Recording {
    pub calls: Mutex<Vec<String>>,
}

impl Recording {
    fn note(&self, s: String) {
        self.calls.lock().expect("calls").push(s);
    }
}

#[async_trait::async_trait]
impl Links for Recording {
    async fn bridge(&self, name: &str, gateway: Ipv4Addr, prefix: u8) -> Result<(), LinkError> {
        self.note(format!("bridge {name} {gateway}/{prefix}"));
        Ok(())
    }

    async fn attach(
        &self,
        netns: &Path,
        bridge: &str,
        host_if: &str,
        ip: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
        _mtu: u32,
    ) -> Result<(), LinkError> {
        self.note(format!(
            "attach {} {bridge} {host_if} {ip}/{prefix} via {gateway}",
            netns.display()
        ));
        Ok(())
    }

    async fn mtu_of(&self, _address: Ipv4Addr) -> Result<Option<u32>, LinkError> {
        Ok(Some(1500))
    }

    async fn vxlan(
        &self,
        name: &str,
        vni: u32,
        local: Ipv4Addr,
        port: u16,
        address: Ipv4Addr,
        _mtu: u32,
    ) -> Result<[u8; 6], LinkError> {
        self.note(format!("vxlan {name} {vni} {local}:{port} {address}"));
        Ok([2, 0, 0, 0, 0, 1])
    }

    async fn peers(&self, vxlan: &str, peers: &[Peer]) -> Result<(), LinkError> {
        let list: Vec<String> = peers
            .iter()
            .map(|p| format!("{}@{}", p.cidr, p.vtep))
            .collect();
        self.note(format!("peers {vxlan} {}", list.join(",")));
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<(), LinkError> {
        self.note(format!("delete {name}"));
        Ok(())
    }
}
