//! Cluster DNS, answered on every node by its agent (as NodeLocal DNSCache places a server
//! on each node, but authoritative itself): the agent already watches every Service and
//! EndpointSlice for its proxy, so its answers follow pods as fast as its rules do, need no
//! hop to another host, and keep working while the control plane is away. Pods ask the
//! `kube-system/kube-dns` ClusterIP; the proxy sends that to this node's server.
//!
//! Names, as CoreDNS's kubernetes plugin answers them (zone `cluster.local`):
//!
//! ```text
//!  <svc>.<ns>.svc.<zone>           A: the ClusterIP; headless: each ready endpoint;
//!                                  ExternalName: CNAME to its name
//!  <host>.<svc>.<ns>.svc.<zone>    A: a headless Service's endpoint, by its hostname or its
//!                                  address with dashes (10-42-0-5)
//!  _<port>._<proto>.<svc>.<ns>.svc.<zone>   SRV per named port (headless: per endpoint)
//!  <a-b-c-d>.<ns>.pod.<zone>       A: a.b.c.d
//!  <d>.<c>.<b>.<a>.in-addr.arpa    PTR for ClusterIPs and headless endpoints
//! ```
//!
//! Other names in the zone are NXDOMAIN (names that exist without the asked type: an empty
//! answer), with the zone's SOA for negative caching; everything else is forwarded to the
//! host's resolvers unchanged.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, PTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// CoreDNS's default TTL for cluster names.
const TTL: u32 = 5;
use super::proxy::SERVICE_NAME;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rec {
    A(Ipv4Addr),
    Cname(String),
    /// port, target
    Srv(u16, String),
}

/// Every name the cluster answers, built from Services and EndpointSlices whenever either
/// changes; queries read the latest.
#[derive(Debug, Default)]
pub struct Zone {
    domain: String,
    names: HashMap<String, Vec<Rec>>,
    /// Names that exist without records of their own (`<ns>.svc.<zone>`, ...).
    exist: HashSet<String>,
    ptr: HashMap<Ipv4Addr, String>,
}

fn dashed(ip: &str) -> String {
    ip.replace('.', "-")
}

impl Zone {
    pub fn build(domain: &str, services: &[Arc<Service>], slices: &[Arc<EndpointSlice>]) -> Zone {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut z = Zone {
            exist: HashSet::from([
                domain.clone(),
                format!("svc.{domain}"),
                format!("pod.{domain}"),
            ]),
            domain: domain.clone(),
            ..Default::default()
        };
        let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for s in slices {
            if let Some(svc) = s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME)) {
                let ns = s.metadata.namespace.as_deref().unwrap_or_default();
                by_service.entry((ns, svc.as_str())).or_default().push(s);
            }
        }
        for svc in services {
            let (Some(ns), Some(name), Some(spec)) = (
                svc.metadata.namespace.as_deref(),
                svc.metadata.name.as_deref(),
                svc.spec.as_ref(),
            ) else {
                continue;
            };
            let fqdn = format!("{name}.{ns}.svc.{domain}");
            z.exist.insert(format!("{ns}.svc.{domain}"));
            z.exist.insert(fqdn.clone());
            if spec.type_.as_deref() == Some("ExternalName") {
                if let Some(target) = &spec.external_name {
                    z.add(
                        &fqdn,
                        Rec::Cname(target.trim_end_matches('.').to_ascii_lowercase()),
                    );
                }
                continue;
            }
            let headless = spec.cluster_ip.as_deref() == Some("None");
            if !headless {
                let Some(ip) = spec
                    .cluster_ip
                    .as_deref()
                    .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                else {
                    continue;
                };
                z.add(&fqdn, Rec::A(ip));
                z.ptr.insert(ip, fqdn.clone());
                for p in spec.ports.iter().flatten() {
                    if let Some(pname) = p.name.as_deref().filter(|n| !n.is_empty()) {
                        let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                        let srv = format!("_{pname}._{proto}.{fqdn}");
                        z.add(&srv, Rec::Srv(p.port as u16, fqdn.clone()));
                    }
                }
                continue;
            }
            // Headless: the ready endpoints themselves.
            for slice in by_service.get(&(ns, name)).into_iter().flatten() {
                if slice.address_type != "IPv4" {
                    continue;
                }
                for e in &slice.endpoints {
                    if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                        continue;
                    }
                    for ip in &e.addresses {
                        let Ok(addr) = ip.parse::<Ipv4Addr>() else {
                            continue;
                        };
                        let host = e.hostname.clone().unwrap_or_else(|| dashed(ip));
                        let own = format!("{host}.{fqdn}");
                        if !z
                            .names
                            .get(&fqdn)
                            .is_some_and(|r| r.contains(&Rec::A(addr)))
                        {
                            z.add(&fqdn, Rec::A(addr));
                        }
                        z.add(&own, Rec::A(addr));
                        z.ptr.insert(addr, own.clone());
                        for p in slice.ports.iter().flatten() {
                            let (Some(pname), Some(port)) =
                                (p.name.as_deref().filter(|n| !n.is_empty()), p.port)
                            else {
                                continue;
                            };
                            let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                            z.add(
                                &format!("_{pname}._{proto}.{fqdn}"),
                                Rec::Srv(port as u16, own.clone()),
                            );
                        }
                    }
                }
            }
        }
        z
    }

    fn add(&mut self, name: &str, rec: Rec) {
        self.names.entry(name.to_string()).or_default().push(rec);
    }

    /// Is `name` (lower case, no trailing dot) in this zone?
    fn holds(&self, name: &str) -> bool {
        name == self.domain || name.ends_with(&format!(".{}", self.domain))
    }

    /// `<a-b-c-d>.<ns>.pod.<zone>`'s address.
    fn pod(&self, name: &str) -> Option<Ipv4Addr> {
        let rest = name.strip_suffix(&format!(".pod.{}", self.domain))?;
        let (ip, _ns) = rest.split_once('.')?;
        ip.replace('-', ".").parse().ok()
    }
}

/// What to do with one query.
#[derive(Debug)]
pub enum Answer {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not ours: pass it to the host's resolvers as it came.
    Forward,
    /// Not a DNS query: drop it.
    Drop,
}

fn name_of(s: &str) -> Option<Name> {
    Name::from_str(&format!("{s}.")).ok()
}

fn record(name: &Name, rec: &Rec) -> Option<Record> {
    let data = match rec {
        Rec::A(ip) => RData::A(A(*ip)),
        Rec::Cname(t) => RData::CNAME(CNAME(name_of(t)?)),
        Rec::Srv(port, t) => RData::SRV(SRV::new(0, 100, *port, name_of(t)?)),
    };
    Some(Record::from_rdata(name.clone(), TTL, data))
}

fn reverse(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let mut parts: Vec<&str> = rest.split('.').collect();
    if parts.len() != 4 {
        return None;
    }
    parts.reverse();
    parts.join(".").parse().ok()
}

/// Answer one query from `zone`; `max` is the largest reply the transport carries (UDP:
/// 512 bytes or what the client's EDNS allows; TCP: 65535).
pub fn answer(query: &[u8], zone: &Zone, tcp: bool) -> Answer {
    let Ok(q) = Message::from_vec(query) else {
        return Answer::Drop;
    };
    if q.message_type() != MessageType::Query {
        return Answer::Drop;
    }
    let [question] = q.queries() else {
        return reply_code(&q, ResponseCode::FormErr);
    };
    if q.op_code() != OpCode::Query {
        return reply_code(&q, ResponseCode::NotImp);
    }
    let qname = question
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let qtype = question.query_type();
    let mut r = Message::new();
    r.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(q.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true)
        .add_query(question.clone());
    if let Some(ip) = reverse(&qname) {
        let Some(target) = zone.ptr.get(&ip) else {
            return Answer::Forward;
        };
        if matches!(qtype, RecordType::PTR | RecordType::ANY) {
            if let Some(t) = name_of(target) {
                r.add_answer(Record::from_rdata(
                    question.name().clone(),
                    TTL,
                    RData::PTR(PTR(t)),
                ));
            }
        }
        return finish(r, &q, tcp);
    }
    if !zone.holds(&qname) {
        return Answer::Forward;
    }
    let name = question.name();
    if let Some(recs) = zone.names.get(&qname) {
        let cname = recs.iter().find(|r| matches!(r, Rec::Cname(_)));
        for rec in recs {
            let wanted = match rec {
                Rec::A(_) => matches!(qtype, RecordType::A | RecordType::ANY),
                Rec::Srv(..) => matches!(qtype, RecordType::SRV | RecordType::ANY),
                Rec::Cname(_) => true,
            };
            if wanted && (cname.is_none() || matches!(rec, Rec::Cname(_))) {
                r.add_answers(record(name, rec));
            }
            // The SRV target's address rides along, as CoreDNS sends it.
            if let (Rec::Srv(_, target), RecordType::SRV) = (rec, qtype) {
                let target_recs = zone.names.get(target).into_iter().flatten();
                for a in target_recs.filter(|a| matches!(a, Rec::A(_))) {
                    if let Some(n) = name_of(target) {
                        r.add_additionals(record(&n, a));
                    }
                }
            }
        }
    } else if let Some(ip) = zone.pod(&qname) {
        if matches!(qtype, RecordType::A | RecordType::ANY) {
            r.add_answers(record(name, &Rec::A(ip)));
        }
    } else if !zone.exist.contains(&qname) {
        r.set_response_code(ResponseCode::NXDomain);
    }
    if r.answers().is_empty() {
        if let (Some(mname), Some(rname)) = (
            name_of(&format!("ns.dns.{}", zone.domain)),
            name_of(&format!("hostmaster.{}", zone.domain)),
        ) {
            let soa = SOA::new(mname, rname, 1, 7200, 1800, 86400, TTL);
            if let Some(apex) = name_of(&zone.domain) {
                r.add_name_server(Record::from_rdata(apex, TTL, RData::SOA(soa)));
            }
        }
    }
    finish(r, &q, tcp)
}

fn reply_code(q: &Message, code: ResponseCode) -> Answer {
    let mut r = Message::new();
    r.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_op_code(q.op_code())
        .set_response_code(code);
    r.to_vec().map(Answer::Reply).unwrap_or(Answer::Drop)
}

/// Encode, truncating to what the transport carries.
fn finish(mut r: Message, q: &Message, tcp: bool) -> Answer {
    if let Some(edns) = q.extensions() {
        let mut ours = hickory_proto::op::Edns::new();
        ours.set_max_payload(edns.max_payload().max(512));
        r.set_edns(ours);
    }
    let Ok(bytes) = r.to_vec() else {
        return Answer::Drop;
    };
    let max = if tcp { 65535 } else { q.max_payload() as usize };
    if bytes.len() <= max {
        return Answer::Reply(bytes);
    }
    r.take_answers();
    r.take_additionals();
    r.set_truncated(true);
    r.to_vec().map(Answer::Reply).unwrap_or(Answer::Drop)
}

/// The host's resolvers, from `/etc/resolv.conf` (port 53).
pub fn host_resolvers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The latest zone, shared by the builder and the servers.
pub type Current = tokio::sync::watch::Receiver<Arc<Zone>>;

/// Serve DNS on `udp` and `tcp` from `zone`, forwarding the rest to `upstream`, until the
/// returned future is dropped.
pub async fn serve(udp: UdpSocket, tcp: TcpListener, zone: Current, upstream: Vec<SocketAddr>) {
    let udp = Arc::new(udp);
    let upstream = Arc::new(upstream);
    let udp_loop = {
        let (zone, upstream) = (zone.clone(), upstream.clone());
        async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                let current = zone.borrow().clone();
                match answer(&buf[..n], &current, false) {
                    Answer::Reply(bytes) => {
                        let _ = udp.send_to(&bytes, peer).await;
                    }
                    Answer::Forward => {
                        let (udp, upstream, query) =
                            (udp.clone(), upstream.clone(), buf[..n].to_vec());
                        tokio::spawn(async move {
                            if let Some(reply) = forward_udp(&query, &upstream).await {
                                let _ = udp.send_to(&reply, peer).await;
                            }
                        });
                    }
                    Answer::Drop => {}
                }
            }
        }
    };
    let tcp_loop = async move {
        loop {
            let Ok((conn, _)) = tcp.accept().await else {
                continue;
            };
            let (zone, upstream) = (zone.clone(), upstream.clone());
            tokio::spawn(async move {
                let _ = serve_tcp(conn, zone, upstream).await;
            });
        }
    };
    futures::join!(udp_loop, tcp_loop);
}

/// Length-prefixed queries on one connection, answered in turn.
async fn serve_tcp(
    mut conn: TcpStream,
    zone: Current,
    upstream: Arc<Vec<SocketAddr>>,
) -> std::io::Result<()> {
    loop {
        let len = match tokio::time::timeout(Duration::from_secs(10), conn.read_u16()).await {
            Ok(Ok(n)) => n as usize,
            _ => return Ok(()),
        };
        let mut query = vec![0u8; len];
        conn.read_exact(&mut query).await?;
        let current = zone.borrow().clone();
        let reply = match answer(&query, &current, true) {
            Answer::Reply(bytes) => Some(bytes),
            Answer::Forward => forward_tcp(&query, &upstream).await,
            Answer::Drop => None,
        };
        let Some(reply) = reply else {
            return Ok(());
        };
        conn.write_u16(reply.len() as u16).await?;
        conn.write_all(&reply).await?;
    }
}

/// Ask each upstream in turn (2 s each) over UDP; the first answer.
async fn forward_udp(query: &[u8], upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    for server in upstream {
        let bind: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .ok()?;
        let Ok(sock) = UdpSocket::bind(bind).await else {
            continue;
        };
        if sock.send_to(query, server).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 65535];
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await
        {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

async fn forward_tcp(query: &[u8], upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    for server in upstream {
        let exchange = async {
            let mut s = TcpStream::connect(server).await?;
            s.write_u16(query.len() as u16).await?;
            s.write_all(query).await?;
            let n = s.read_u16().await? as usize;
            let mut buf = vec![0u8; n];
            s.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(2), exchange).await {
            return Some(reply);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn svc(name: &str, cluster_ip: &str, ty: &str) -> Arc<Service> {
        Arc::new(Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some(ty.into()),
                cluster_ip: Some(cluster_ip.into()),
                external_name: (ty == "ExternalName").then(|| "db.example.com".into()),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn slice(svc: &str, eps: &[(&str, Option<&str>, bool)]) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{svc}-x")),
                namespace: Some("default".into()),
                labels: Some([(SERVICE_NAME.to_string(), svc.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps
                .iter()
                .map(|(ip, host, ready)| Endpoint {
                    addresses: vec![ip.to_string()],
                    hostname: host.map(String::from),
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
        })
    }

    fn zone() -> Zone {
        Zone::build(
            "cluster.local",
            &[
                svc("web", "10.96.5.5", "ClusterIP"),
                svc("db", "None", "ClusterIP"),
                svc("ext", "", "ExternalName"),
            ],
            &[slice(
                "db",
                &[
                    ("10.42.0.7", Some("db-0"), true),
                    ("10.42.1.8", None, true),
                    ("10.42.1.9", None, false),
                ],
            )],
        )
    }

    fn ask(name: &str, kind: RecordType) -> Result<Message, Answer> {
        let mut m = Message::new();
        m.set_id(9)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_str(name).unwrap(), kind));
        match answer(&m.to_vec().unwrap(), &zone(), false) {
            Answer::Reply(bytes) => Ok(Message::from_vec(&bytes).unwrap()),
            other => Err(other),
        }
    }

    fn addresses(m: &Message) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = m
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::A(A(ip)) => Some(*ip),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn services_resolve_to_their_cluster_ip_or_ready_endpoints() {
        let r = ask("web.default.svc.cluster.local.", RecordType::A).unwrap();
        assert_eq!((r.id(), r.response_code()), (9, ResponseCode::NoError));
        assert_eq!(addresses(&r), [Ipv4Addr::new(10, 96, 5, 5)]);
        let r = ask("DB.default.svc.cluster.local.", RecordType::A).unwrap();
        assert_eq!(
            addresses(&r),
            [Ipv4Addr::new(10, 42, 0, 7), Ipv4Addr::new(10, 42, 1, 8)]
        );
        let r = ask("db-0.db.default.svc.cluster.local.", RecordType::A).unwrap();
        assert_eq!(addresses(&r), [Ipv4Addr::new(10, 42, 0, 7)]);
        let r = ask("10-42-1-8.db.default.svc.cluster.local.", RecordType::A).unwrap();
        assert_eq!(addresses(&r), [Ipv4Addr::new(10, 42, 1, 8)]);
        // An unready endpoint has no name.
        let r = ask("10-42-1-9.db.default.svc.cluster.local.", RecordType::A).unwrap();
        assert_eq!(r.response_code(), ResponseCode::NXDomain);
        let r = ask("1-2-3-4.default.pod.cluster.local.", RecordType::A).unwrap();
        assert_eq!(addresses(&r), [Ipv4Addr::new(1, 2, 3, 4)]);
    }

    #[test]
    fn srv_ptr_and_cname() {
        let r = ask("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV).unwrap();
        let srv: Vec<(u16, String)> = r
            .answers()
            .iter()
            .filter_map(|a| match a.data() {
                RData::SRV(s) => Some((s.port(), s.target().to_ascii())),
                _ => None,
            })
            .collect();
        assert_eq!(srv, [(80, "web.default.svc.cluster.local.".to_string())]);
        assert_eq!(r.additionals().len(), 1, "the target's address rides along");
        let r = ask("_http._tcp.db.default.svc.cluster.local.", RecordType::SRV).unwrap();
        assert_eq!(r.answers().len(), 2);
        let r = ask("5.5.96.10.in-addr.arpa.", RecordType::PTR).unwrap();
        assert!(
            matches!(r.answers()[0].data(), RData::PTR(PTR(n)) if n.to_ascii() == "web.default.svc.cluster.local.")
        );
        let r = ask("7.0.42.10.in-addr.arpa.", RecordType::PTR).unwrap();
        assert!(
            matches!(r.answers()[0].data(), RData::PTR(PTR(n)) if n.to_ascii() == "db-0.db.default.svc.cluster.local.")
        );
        let r = ask("ext.default.svc.cluster.local.", RecordType::A).unwrap();
        assert!(
            matches!(r.answers()[0].data(), RData::CNAME(CNAME(n)) if n.to_ascii() == "db.example.com.")
        );
    }

    #[test]
    fn negative_answers_and_forwarding() {
        // A name that exists without the type asked: empty, with the SOA.
        let r = ask("web.default.svc.cluster.local.", RecordType::AAAA).unwrap();
        assert_eq!(
            (r.response_code(), r.answers().len(), r.name_servers().len()),
            (ResponseCode::NoError, 0, 1)
        );
        let r = ask("default.svc.cluster.local.", RecordType::A).unwrap();
        assert_eq!(r.response_code(), ResponseCode::NoError);
        // The search path's misses are NXDOMAIN, as they must be for ndots:5 to work.
        for name in [
            "web.svc.cluster.local.",
            "nope.default.svc.cluster.local.",
            "example.com.default.svc.cluster.local.",
        ] {
            assert_eq!(
                ask(name, RecordType::A).unwrap().response_code(),
                ResponseCode::NXDomain,
                "{name}"
            );
        }
        assert!(matches!(
            ask("example.com.", RecordType::A),
            Err(Answer::Forward)
        ));
        assert!(matches!(
            ask("4.3.2.1.in-addr.arpa.", RecordType::PTR),
            Err(Answer::Forward)
        ));
    }

    #[test]
    fn the_host_resolvers_come_from_resolv_conf() {
        let conf = "# x\nnameserver 192.0.2.53\nsearch a b\nnameserver ::1\n";
        assert_eq!(
            host_resolvers(conf),
            [
                "192.0.2.53:53".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }
}
