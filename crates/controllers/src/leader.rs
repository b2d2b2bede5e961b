//! Leader election: of the servers that share a store, one at a time runs the scheduler and
//! the controllers.
//!
//! The leader holds the Lease `kube-system/berth-control-plane`. Every `retry` it writes the
//! Lease again (holder, renewTime), each write a compare-and-swap on the resourceVersion it
//! read, so two candidates can never both think they won the same round. A candidate takes
//! the Lease when nobody holds it, when it holds it already (a restarted server with the same
//! identity resumes at once), or when the record has not changed for a whole
//! `leaseDurationSeconds` *as this candidate measured it*: expiry is judged by the local
//! monotonic clock from when the candidate last saw the record change, never by comparing
//! `renewTime` with the local wall clock, so clock skew between servers does not matter.
//!
//! A leader that has not renewed for `renew_deadline` (shorter than the lease) stops its work
//! before anyone else may take over, then campaigns again.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use serde_json::json;

pub const NAMESPACE: &str = "kube-system";
pub const LEASE: &str = "berth-control-plane";

#[derive(Debug, Clone)]
pub struct Config {
    /// Who this candidate is; stable across restarts of the same server.
    pub identity: String,
    /// How long a Lease nobody renews stays held (`leaseDurationSeconds`).
    pub lease_duration: Duration,
    /// A leader that could not renew for this long steps down; < `lease_duration`.
    pub renew_deadline: Duration,
    /// How often the leader renews and a candidate tries.
    pub retry: Duration,
}

impl Config {
    /// Timings scaled from a lease duration in the proportions of Kubernetes'
    /// controller-manager (15 s lease, 10 s renew deadline, about 2 s between rounds).
    pub fn with_lease(identity: String, lease: Duration) -> Config {
        Config {
            identity,
            lease_duration: lease,
            renew_deadline: lease * 2 / 3,
            retry: lease / 7,
        }
    }
}

/// What a candidate remembers of the record between rounds.
#[derive(Default)]
struct Observed {
    resource_version: Option<String>,
    since: Option<Instant>,
}

enum Round {
    /// We hold the Lease (just written; its metadata as written).
    Held(Box<ObjectMeta>),
    /// Someone else does, or we lost a race for it.
    Other(String),
}

/// Run `work` whenever this candidate leads, until dropped: campaign, start `work`, renew;
/// on a lost Lease abort `work` and campaign again. Dropping this future aborts `work` too.
pub async fn run<F, Fut>(client: kube::Client, cfg: Config, work: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let api: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let mut observed = Observed::default();
    loop {
        // Campaign.
        loop {
            match round(&api, &cfg, &mut observed).await {
                Ok(Round::Held(lease)) => {
                    crate::events::record(
                        &client,
                        crate::events::involved_in("coordination.k8s.io/v1", "Lease", &lease),
                        "Normal",
                        "LeaderElection",
                        &format!("{} became leader", cfg.identity),
                        "berth-control-plane",
                    );
                    break;
                }
                Ok(Round::Other(holder)) => {
                    tracing::debug!(%holder, "control plane led elsewhere");
                }
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::time::sleep(cfg.retry).await;
        }
        tracing::info!(identity = %cfg.identity, "leading the control plane");
        // A JoinSet, so that `work` goes with this future when it is dropped.
        let mut term = tokio::task::JoinSet::new();
        term.spawn(work());
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(cfg.retry).await;
            match round(&api, &cfg, &mut observed).await {
                Ok(Round::Held(_)) => renewed = Instant::now(),
                Ok(Round::Other(holder)) => {
                    tracing::warn!(%holder, "lost the control plane's Lease; stepping down");
                    break;
                }
                Err(e) if renewed.elapsed() >= cfg.renew_deadline => {
                    tracing::warn!(error = %e, "could not renew the control plane's Lease in time; stepping down");
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "renewing the control plane's Lease"),
            }
        }
        term.shutdown().await;
    }
}

/// One read-decide-write round: take or keep the Lease if we may.
async fn round(
    api: &Api<Lease>,
    cfg: &Config,
    observed: &mut Observed,
) -> Result<Round, kube::Error> {
    let now = berth_core::micro_time(jiff::Timestamp::now());
    let secs = cfg.lease_duration.as_secs().max(1) as i32;
    let Some(current) = api.get_opt(LEASE).await? else {
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": LEASE, "namespace": NAMESPACE},
            "spec": {"holderIdentity": cfg.identity, "leaseDurationSeconds": secs,
                     "acquireTime": now, "renewTime": now, "leaseTransitions": 0},
        }))
        .expect("a valid Lease");
        return match api.create(&PostParams::default(), &lease).await {
            Ok(l) => Ok(Round::Held(Box::new(l.metadata))),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                Ok(Round::Other("a faster candidate".into()))
            }
            Err(e) => Err(e),
        };
    };
    let rv = current.metadata.resource_version.clone();
    if rv != observed.resource_version || observed.since.is_none() {
        observed.resource_version = rv;
        observed.since = Some(Instant::now());
    }
    let spec = current.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let held_by_us = holder == cfg.identity;
    let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(secs).max(0) as u64);
    let expired = observed.since.is_some_and(|t| t.elapsed() >= duration);
    if !held_by_us && !holder.is_empty() && !expired {
        return Ok(Round::Other(holder));
    }
    let mut next = current;
    let mut spec_json = json!({
        "holderIdentity": cfg.identity, "leaseDurationSeconds": secs, "renewTime": now,
        "acquireTime": spec.acquire_time, "leaseTransitions": spec.lease_transitions.unwrap_or(0),
    });
    if !held_by_us {
        spec_json["acquireTime"] = json!(now);
        spec_json["leaseTransitions"] = json!(spec.lease_transitions.unwrap_or(0) + 1);
    }
    next.spec = Some(serde_json::from_value(spec_json).expect("a valid LeaseSpec"));
    // `replace` carries the resourceVersion we read: a write in between makes this a 409.
    match api.replace(LEASE, &PostParams::default(), &next).await {
        Ok(written) => {
            observed.resource_version = written.metadata.resource_version.clone();
            observed.since = Some(Instant::now());
            Ok(Round::Held(Box::new(written.metadata)))
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Round::Other("a faster candidate".into())),
        Err(e) => Err(e),
    }
}
