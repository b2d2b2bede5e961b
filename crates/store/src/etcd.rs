//! The etcd backend (`etcd-client`): the store many servers share, as Kubernetes keeps its
//! state. Every operation is one etcd request:
//!
//! - `create` and `update` are transactions comparing the key's `create_revision` with 0
//!   or its `mod_revision` with the one expected; on a failed comparison the same
//!   transaction reads the key, so the error says what is there.
//! - `list` is a range read over the prefix from the key after the last one seen, with
//!   etcd's `limit`, at one revision (the header's).
//! - `watch` is an etcd watch from the revision after the one asked for, with the previous
//!   value on deletes and progress notifications (the API's BOOKMARKs; etcd sends them as
//!   often as its `--experimental-watch-progress-notify-interval`). A start revision that
//!   was compacted is refused at once, as the SQLite store does.
//! - A request that reaches no member, or that a member could not see through while the
//!   cluster chose a new leader, is sent again for up to 10 s (each attempt gets 2 s, a range read 30). A
//!   resent create or update that is then refused looks at the key: holding exactly the
//!   value sent, it was the first attempt that went through, and the write succeeded; a
//!   resent delete that finds the key gone answers with its value at the expected revision.
//! - History is etcd's; [`EtcdStore::keep_history`] compacts it as Kubernetes' API server
//!   does, to what is older than a window, from every server (compacting again is a no-op).
//!
//! Keys are written as they are given (Kubernetes' layout: `/registry/pods/<namespace>/<name>`)
//! and values are the API's JSON, so `etcdctl get --prefix /registry` reads the cluster's
//! objects.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::StreamExt;

use crate::{
    prefix_end, Event, EventKind, KeyValue, ListOptions, ListPage, Revision, Store, StoreError,
    WatchItem, WatchStream,
};

/// How to reach an etcd cluster.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// `host:port` (or `http://`/`https://` URLs) of the members.
    pub endpoints: Vec<String>,
    /// PEM of the CA that signed the members' certificates (TLS when given).
    pub ca: Option<Vec<u8>>,
    /// PEM of a client certificate and its key, for members that ask for one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

pub struct EtcdStore {
    client: Client,
}

fn failed(operation: &'static str) -> impl FnOnce(etcd_client::Error) -> StoreError {
    move |e| classify(operation, e)
}

/// etcd's answers for revisions out of range, as the store's own errors.
fn classify(operation: &'static str, e: etcd_client::Error) -> StoreError {
    if let etcd_client::Error::GRpcStatus(status) = &e {
        let message = status.message();
        if message.contains("required revision has been compacted") {
            return StoreError::Compacted {
                requested: 0,
                oldest: 0,
            };
        }
        if message.contains("required revision is a future revision") {
            return StoreError::FutureRevision {
                requested: 0,
                current: 0,
            };
        }
    }
    StoreError::Etcd {
        operation,
        source: Arc::new(e),
    }
}

/// A request that failed before reaching any member (one is down, or not up yet): safe to
/// send again, to whichever member the client picks next.
fn unreached(e: &etcd_client::Error) -> bool {
    const UNAVAILABLE: i32 = 14;
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if i32::from(s.code()) == UNAVAILABLE && s.message().contains("connect"))
}

/// A request that may or may not have been applied, and will go through when sent again:
/// a member took it but could not see it through while the cluster chose a new leader
/// (`request timed out, possibly due to previous leader failure`, `leader changed`, `no
/// leader`), or the connection to the member broke under it (the member died).
fn interrupted(e: &etcd_client::Error) -> bool {
    const UNKNOWN: i32 = 2;
    const DEADLINE_EXCEEDED: i32 = 4;
    const UNAVAILABLE: i32 = 14;
    match e {
        etcd_client::Error::GRpcStatus(s) => match i32::from(s.code()) {
            DEADLINE_EXCEEDED | UNAVAILABLE => true,
            // The connection under the request broke: tonic and hyper say so in the message.
            UNKNOWN => ["transport error", "h2 protocol error", "connection"]
                .iter()
                .any(|m| s.message().contains(m)),
            _ => false,
        },
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::IoError(io) => io.kind() == std::io::ErrorKind::TimedOut,
        _ => false,
    }
}

/// How long one attempt at a write or a one-key read may take before it is sent again: a
/// request stuck on a dead leader waits out etcd's own timeout (7 s with its defaults)
/// otherwise. A new leader is usually chosen within a second or two.
const ATTEMPT: Duration = Duration::from_secs(2);
/// The same for a range read, which may be long for a large prefix.
const RANGE_ATTEMPT: Duration = Duration::from_secs(30);
/// How long a request keeps being sent again.
const PERSIST: Duration = Duration::from_secs(10);

/// Run `request` with a fresh KV client, again (for up to 10 s, backing off, each attempt
/// given `attempt`) while it fails without reaching a member or is interrupted (a member
/// dies, or the cluster has no leader). Also says whether an attempt may have been applied
/// before the one that answered (`resent`): a write refused after that may be refusing its
/// own first attempt.
async fn kv<T, F, Fut>(
    client: &Client,
    operation: &'static str,
    attempt: Duration,
    request: F,
) -> Result<(T, bool), StoreError>
where
    F: Fn(etcd_client::KvClient) -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + PERSIST;
    let mut wait = Duration::from_millis(20);
    let mut resent = false;
    loop {
        let e = match tokio::time::timeout(attempt, request(client.kv_client())).await {
            Ok(Ok(answer)) => return Ok((answer, resent)),
            Ok(Err(e)) => e,
            Err(_) => etcd_client::Error::IoError(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no etcd member answered within {} s", attempt.as_secs()),
            )),
        };
        let again = unreached(&e) || interrupted(&e);
        if !again || tokio::time::Instant::now() + wait >= deadline {
            return Err(failed(operation)(e));
        }
        if !unreached(&e) {
            tracing::debug!(operation, error = %e, "etcd: sending again");
            resent = true;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(500));
    }
}

/// After a resent write was refused: the key as it stands, if it holds exactly `value`
/// (the first attempt went through: a value carries its object's uid and timestamps, so
/// another writer's is not byte for byte the same).
async fn landed(client: &Client, key: &str, value: &[u8]) -> Result<Option<KeyValue>, StoreError> {
    let (resp, _) = kv(client, "get", ATTEMPT, |mut c| async move {
        c.get(key, None).await
    })
    .await?;
    Ok(resp
        .kvs()
        .first()
        .filter(|kv| kv.value() == value)
        .map(from_etcd))
}

fn key_string(kv: &etcd_client::KeyValue) -> String {
    String::from_utf8_lossy(kv.key()).into_owned()
}

fn from_etcd(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: key_string(kv),
        value: Arc::from(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

/// The key right after `key` in etcd's byte order: where a page after `key` starts.
fn after(key: &str) -> Vec<u8> {
    let mut k = key.as_bytes().to_vec();
    k.push(0);
    k
}

impl EtcdStore {
    /// Connect to the cluster and check that it answers, so a wrong address fails at start.
    pub async fn connect(opts: &EtcdOptions) -> Result<Self, StoreError> {
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            // A member cut off from the others answers Unavailable instead of holding a
            // watch open with nothing in it (a watch then moves to another member).
            .with_require_leader(true);
        let mut endpoints = opts.endpoints.clone();
        if let Some(ca) = &opts.ca {
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
            if let Some((cert, key)) = &opts.identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            connect = connect.with_tls(tls);
            endpoints = endpoints
                .into_iter()
                .map(|e| match e.strip_prefix("http://") {
                    Some(rest) => format!("https://{rest}"),
                    None => e,
                })
                .collect();
        }
        let client = Client::connect(&endpoints, Some(connect))
            .await
            .map_err(failed("connecting"))?;
        let store = EtcdStore { client };
        store.current_revision().await?;
        Ok(store)
    }

    /// Keep about `window` of history: every `window`, compact to the revision seen one
    /// window before (Kubernetes' API server does this every five minutes). Runs until the
    /// returned task is dropped or aborted.
    pub fn keep_history(self: &Arc<Self>, window: Duration) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut previous: Option<Revision> = None;
            loop {
                tokio::time::sleep(window).await;
                if let Some(rev) = previous {
                    if let Err(e) = store.compact(rev).await {
                        tracing::warn!(error = %e, revision = rev, "compacting etcd's history");
                    }
                }
                previous = store.current_revision().await.ok();
            }
        })
    }

    /// Why a transaction found `key` not at revision `expected`: from the key's current
    /// value, which its failure branch read.
    fn refused(key: &str, expected: Revision, responses: Vec<TxnOpResponse>) -> StoreError {
        let found = responses.into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(from_etcd),
            _ => None,
        });
        match found {
            None => StoreError::NotFound { key: key.into() },
            Some(kv) => StoreError::Conflict {
                key: key.into(),
                expected,
                actual: kv.mod_revision,
            },
        }
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let (resp, _) = kv(&self.client, "get", ATTEMPT, |mut c| async move {
            c.get(key, None).await
        })
        .await?;
        Ok(resp.kvs().first().map(from_etcd))
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListPage, StoreError> {
        let start = match &opts.start_after {
            Some(k) if k.as_str() >= prefix => after(k),
            _ => prefix.as_bytes().to_vec(),
        };
        let mut get = GetOptions::new().with_range(prefix_end(prefix));
        if let Some(limit) = opts.limit {
            get = get.with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        let (resp, _) = kv(&self.client, "list", RANGE_ATTEMPT, |mut c| {
            let (start, get) = (start.clone(), get.clone());
            async move { c.get(start, Some(get)).await }
        })
        .await?;
        Ok(ListPage {
            items: resp.kvs().iter().map(from_etcd).collect(),
            revision: resp.header().map_or(0, |h| h.revision()),
            more: resp.more(),
        })
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        let resp = kv(&self.client, "create", ATTEMPT, |mut c| {
            let txn = Txn::new()
                .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key, value.clone(), None)])
                .or_else([TxnOp::get(key, None)]);
            async move { c.txn(txn).await }
        })
        .await?;
        let (resp, resent) = resp;
        if !resp.succeeded() {
            if resent {
                if let Some(kv) = landed(&self.client, key, &value).await? {
                    return Ok(kv);
                }
            }
            return Err(StoreError::AlreadyExists { key: key.into() });
        }
        let rev = resp.header().map_or(0, |h| h.revision());
        Ok(KeyValue {
            key: key.into(),
            value: value.into(),
            create_revision: rev,
            mod_revision: rev,
        })
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<KeyValue, StoreError> {
        let resp = kv(&self.client, "update", ATTEMPT, |mut c| {
            let txn = Txn::new()
                .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
                .and_then([TxnOp::put(
                    key,
                    value.clone(),
                    Some(PutOptions::new().with_prev_key()),
                )])
                .or_else([TxnOp::get(key, None)]);
            async move { c.txn(txn).await }
        })
        .await?;
        let (resp, resent) = resp;
        let rev = resp.header().map_or(0, |h| h.revision());
        let succeeded = resp.succeeded();
        let responses = resp.op_responses();
        if !succeeded {
            if resent {
                if let Some(kv) = landed(&self.client, key, &value).await? {
                    return Ok(kv);
                }
            }
            return Err(Self::refused(key, expected, responses));
        }
        let created = responses
            .iter()
            .find_map(|r| match r {
                TxnOpResponse::Put(p) => p.prev_key().map(|kv| kv.create_revision()),
                _ => None,
            })
            .unwrap_or(rev);
        Ok(KeyValue {
            key: key.into(),
            value: value.into(),
            create_revision: created,
            mod_revision: rev,
        })
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        let resp = kv(&self.client, "delete", ATTEMPT, |mut c| {
            let compare: Vec<Compare> = expected
                .map(|e| Compare::mod_revision(key, CompareOp::Equal, e))
                .into_iter()
                .collect();
            let txn = Txn::new()
                .when(compare)
                .and_then([TxnOp::delete(
                    key,
                    Some(DeleteOptions::new().with_prev_key()),
                )])
                .or_else([TxnOp::get(key, None)]);
            async move { c.txn(txn).await }
        })
        .await?;
        let (resp, resent) = resp;
        let rev = resp.header().map_or(0, |h| h.revision());
        let succeeded = resp.succeeded();
        let responses = resp.op_responses();
        let previous = responses.iter().find_map(|r| match r {
            TxnOpResponse::Delete(d) => d.prev_kvs().first().map(from_etcd),
            _ => None,
        });
        let refusal =
            (!succeeded).then(|| Self::refused(key, expected.unwrap_or_default(), responses));
        match (previous, refusal) {
            (Some(kv), None) => Ok(KeyValue {
                mod_revision: rev,
                ..kv
            }),
            // Gone after a resend: the first attempt deleted what was at `expected` (read
            // back from history for the answer).
            (None, None | Some(StoreError::NotFound { .. })) if resent && expected.is_some() => {
                self.deleted_at(key, expected.unwrap_or_default()).await
            }
            (_, Some(refused)) => Err(refused),
            (None, None) => Err(StoreError::NotFound { key: key.into() }),
        }
    }

    async fn watch(&self, prefix: &str, after_rev: Revision) -> Result<WatchStream, StoreError> {
        // A start revision etcd compacted is refused now, not after the watch is made.
        if after_rev > 0 {
            let probe = GetOptions::new()
                .with_revision(after_rev)
                .with_count_only()
                .with_limit(1);
            match kv(&self.client, "watch", ATTEMPT, |mut c| {
                let probe = probe.clone();
                async move { c.get(prefix, Some(probe)).await }
            })
            .await
            {
                Ok(_) => {}
                Err(e) => match e {
                    StoreError::Compacted { .. } => {
                        let oldest = self.oldest_revision().await?;
                        return Err(StoreError::Compacted {
                            requested: after_rev,
                            oldest,
                        });
                    }
                    // A revision not written yet: the watch waits for it.
                    StoreError::FutureRevision { .. } => {}
                    other => return Err(other),
                },
            }
        }
        let follow = Follow {
            client: self.client.clone(),
            prefix: prefix.to_string(),
            next: after_rev + 1,
            stream: Some(open_watch(&self.client, prefix, after_rev + 1).await?),
            queue: Default::default(),
            done: false,
        };
        Ok(futures::stream::unfold(follow, Follow::next).boxed())
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let (resp, _) = kv(
            &self.client,
            "read the revision",
            ATTEMPT,
            |mut c| async move { c.get("/", Some(GetOptions::new().with_count_only())).await },
        )
        .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        match kv(&self.client, "compact", ATTEMPT, |mut c| async move {
            c.compact(revision, None).await
        })
        .await
        {
            Ok(_) => Ok(()),
            // Compacted there already (by this server or another).
            Err(StoreError::Compacted { .. }) => Ok(()),
            Err(other) => Err(other),
        }
    }
}

/// An etcd watch on `prefix` from revision `from`, opened again (for up to 5 s) while no
/// member can be reached.
async fn open_watch(
    client: &Client,
    prefix: &str,
    from: Revision,
) -> Result<etcd_client::WatchStream, StoreError> {
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(from)
        .with_prev_key()
        .with_progress_notify();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match client
            .watch_client()
            .watch(prefix, Some(opts.clone()))
            .await
        {
            Err(e) if unreached(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other.map_err(failed("watch")),
        }
    }
}

/// A store watch over etcd's: when the member serving it dies, the watch is opened again on
/// another from the revision after the last one delivered (for up to 10 s), so watchers see
/// no gap and no error. It ends at its first error, as the SQLite store's does.
struct Follow {
    client: Client,
    prefix: String,
    /// The first revision not delivered yet.
    next: Revision,
    stream: Option<etcd_client::WatchStream>,
    queue: std::collections::VecDeque<Result<WatchItem, StoreError>>,
    done: bool,
}

impl Follow {
    async fn next(mut self) -> Option<(Result<WatchItem, StoreError>, Follow)> {
        let mut lost: Option<tokio::time::Instant> = None;
        loop {
            if let Some(item) = self.queue.pop_front() {
                match &item {
                    Ok(WatchItem::Event(e)) => self.next = self.next.max(e.revision() + 1),
                    Ok(WatchItem::Progress(rev)) => self.next = self.next.max(rev + 1),
                    Err(_) => self.done = true,
                }
                return Some((item, self));
            }
            if self.done {
                return None;
            }
            let stream = match &mut self.stream {
                Some(s) => s,
                None => match open_watch(&self.client, &self.prefix, self.next).await {
                    Ok(s) => self.stream.insert(s),
                    Err(e) => {
                        self.queue.push_back(Err(e));
                        continue;
                    }
                },
            };
            match stream.message().await {
                Ok(Some(resp)) => {
                    // Only what moves the watch on counts as being back (a reopened watch
                    // first answers that it was made).
                    if !resp.created() {
                        lost = None;
                    }
                    self.queue.extend(items(resp, self.next - 1));
                }
                Err(e) if !(unreached(&e) || interrupted(&e)) => {
                    self.queue.push_back(Err(classify("watch", e)))
                }
                // The member went away (its stream ended or broke): watch again elsewhere.
                ended => {
                    let since = *lost.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() > PERSIST {
                        let e = ended.err().unwrap_or_else(|| {
                            etcd_client::Error::WatchError("the watch kept ending".into())
                        });
                        self.queue.push_back(Err(classify("watch", e)));
                        continue;
                    }
                    tracing::debug!(from = self.next, "etcd: watching again");
                    self.stream = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// What one etcd watch response says, as store watch items (`after`: the revision the watch
/// started after, for a compaction's error).
fn items(r: etcd_client::WatchResponse, after: Revision) -> Vec<Result<WatchItem, StoreError>> {
    if r.canceled() && r.compact_revision() > 0 {
        return vec![Err(StoreError::Compacted {
            requested: after,
            oldest: r.compact_revision(),
        })];
    }
    if r.canceled() {
        return vec![Err(StoreError::Etcd {
            operation: "watch",
            source: Arc::new(etcd_client::Error::WatchError(
                r.cancel_reason().to_string(),
            )),
        })];
    }
    if r.created() {
        return vec![];
    }
    if r.events().is_empty() {
        return r
            .header()
            .map(|h| Ok(WatchItem::Progress(h.revision())))
            .into_iter()
            .collect();
    }
    r.events()
        .iter()
        .filter_map(|e| {
            let kv = e.kv()?;
            Some(Ok(WatchItem::Event(match e.event_type() {
                etcd_client::EventType::Put => Event {
                    kind: EventKind::Put,
                    kv: from_etcd(kv),
                },
                etcd_client::EventType::Delete => {
                    let last = e.prev_kv().map(from_etcd);
                    Event {
                        kind: EventKind::Delete,
                        kv: KeyValue {
                            key: key_string(kv),
                            value: last
                                .as_ref()
                                .map_or_else(|| Arc::from(&[][..]), |l| l.value.clone()),
                            create_revision: last.map_or(0, |l| l.create_revision),
                            mod_revision: kv.mod_revision(),
                        },
                    }
                }
            })))
        })
        .collect()
}

impl EtcdStore {
    /// The key as it was at `revision`, for a delete whose first attempt went through: its
    /// `mod_revision` is the revision read at (at or after the delete's).
    async fn deleted_at(&self, key: &str, revision: Revision) -> Result<KeyValue, StoreError> {
        let at = GetOptions::new().with_revision(revision);
        let (resp, _) = kv(&self.client, "delete", ATTEMPT, |mut c| {
            let at = at.clone();
            async move { c.get(key, Some(at)).await }
        })
        .await?;
        let now = resp.header().map_or(0, |h| h.revision());
        match resp.kvs().first().map(from_etcd) {
            Some(kv) if kv.mod_revision == revision => Ok(KeyValue {
                mod_revision: now,
                ..kv
            }),
            _ => Err(StoreError::NotFound { key: key.into() }),
        }
    }

    /// The oldest revision still readable: found by halving between the compacted revision
    /// etcd refused and the current one (etcd 3.4 does not say which it kept).
    async fn oldest_revision(&self) -> Result<Revision, StoreError> {
        let current = self.current_revision().await?;
        let (mut lo, mut hi) = (0, current);
        while lo + 1 < hi {
            let mid = lo + (hi - lo) / 2;
            let probe = GetOptions::new().with_revision(mid).with_count_only();
            match kv(
                &self.client,
                "find the oldest revision",
                ATTEMPT,
                |mut c| {
                    let probe = probe.clone();
                    async move { c.get("/", Some(probe)).await }
                },
            )
            .await
            {
                Ok(_) => hi = mid,
                Err(StoreError::Compacted { .. }) => lo = mid,
                Err(other) => return Err(other),
            }
        }
        Ok(hi)
    }
}
