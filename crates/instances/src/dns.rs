//! Name service for the groups' `dnsNameLabel`s: `<label>.<location>.<zone>` answers (A) with
//! the address the group's Public IP ports are reachable on. A name inside the zone that no
//! running group holds is NXDOMAIN; a name outside it is REFUSED, since this is an
//! authoritative server for one zone, not a resolver. UDP, one datagram per question.

use std::net::Ipv4Addr;
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{rdata::A, RData, Record, RecordType};
use tokio::net::UdpSocket;

use crate::service::Service;

/// How long resolvers may keep an answer: groups come and go in seconds.
const TTL: u32 = 5;

/// Answer DNS questions on `socket` until the task is aborted.
pub fn serve(socket: UdpSocket, svc: Arc<Service>, zone: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, peer) = match socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS receive failed");
                    continue;
                }
            };
            let reply = answer(&buf[..n], &zone, |name| svc.resolve(name));
            if let Some(reply) = reply {
                let _ = socket.send_to(&reply, peer).await;
            }
        }
    })
}

/// The reply to one query message, or `None` for something that is not a query at all.
pub fn answer(
    query: &[u8],
    zone: &str,
    lookup: impl Fn(&str) -> Option<Ipv4Addr>,
) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    if q.message_type() != MessageType::Query {
        return None;
    }
    let mut r = Message::new();
    r.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_op_code(q.op_code())
        .set_recursion_desired(q.recursion_desired())
        .set_recursion_available(false);
    let zone = zone.trim_end_matches('.').to_ascii_lowercase();
    let mut code = ResponseCode::NoError;
    if q.op_code() != OpCode::Query || q.queries().len() != 1 {
        code = ResponseCode::NotImp;
    }
    for question in q.queries() {
        r.add_query(question.clone());
        if code != ResponseCode::NoError {
            continue;
        }
        let name = question
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if name != zone && !name.ends_with(&format!(".{zone}")) {
            code = ResponseCode::Refused;
            continue;
        }
        r.set_authoritative(true);
        match lookup(&name) {
            None => code = ResponseCode::NXDomain,
            Some(ip) => {
                if matches!(question.query_type(), RecordType::A | RecordType::ANY) {
                    r.add_answer(Record::from_rdata(
                        question.name().clone(),
                        TTL,
                        RData::A(A(ip)),
                    ));
                }
            }
        }
    }
    r.set_response_code(code);
    r.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use std::str::FromStr;

    fn ask(name: &str, kind: RecordType) -> Message {
        let mut m = Message::new();
        m.set_id(7)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .add_query(Query::query(Name::from_str(name).unwrap(), kind));
        let lookup = |n: &str| (n == "web.eastus.zone.test").then_some(Ipv4Addr::new(10, 1, 2, 3));
        let reply = answer(&m.to_vec().unwrap(), "zone.test", lookup).expect("a reply");
        Message::from_vec(&reply).unwrap()
    }

    #[test]
    fn labels_resolve_and_the_rest_is_told_apart() {
        let r = ask("Web.EastUS.zone.test.", RecordType::A);
        assert_eq!((r.id(), r.response_code()), (7, ResponseCode::NoError));
        assert!(
            matches!(r.answers()[0].data(), RData::A(A(ip)) if *ip == Ipv4Addr::new(10, 1, 2, 3))
        );
        // The name exists but has no AAAA: an empty answer, not NXDOMAIN.
        let r = ask("web.eastus.zone.test.", RecordType::AAAA);
        assert_eq!(
            (r.response_code(), r.answers().len()),
            (ResponseCode::NoError, 0)
        );
        assert_eq!(
            ask("gone.eastus.zone.test.", RecordType::A).response_code(),
            ResponseCode::NXDomain
        );
        assert_eq!(
            ask("example.com.", RecordType::A).response_code(),
            ResponseCode::Refused
        );
    }
}
