//! The HorizontalPodAutoscaler controller (autoscaling/v2): every second, for each
//! autoscaler, read its target's `scale`, the usage of the target's pods from
//! `metrics.k8s.io`, and their requests; compute the replica count as Kubernetes does; damp it
//! with `behavior` (stabilization windows, rate policies); write the new scale, the status and
//! an Event.
//!
//! The arithmetic is pure (no IO, no clock): [`resource_replicas`] for one metric,
//! [`Behavior::normalize`] for the damping, each unit tested below. Berth's defaults differ
//! from Kubernetes' so that a load step is answered in seconds:
//!
//! | direction | stabilization | policies (selectPolicy Max) |
//! |---|---|---|
//! | up | 0 s | 4 pods per 1 s, 100 % per 1 s |
//! | down | 30 s | 100 % per 1 s |
//!
//! (Kubernetes: up 0 s, 4 pods or 100 % per 15 s; down 300 s.) A `behavior` in the spec
//! overrides each field it sets. The 30 s window is what keeps it from flapping: a
//! scale-down takes the highest recommendation of the last 30 s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_core::quantity;
use berth_core::selector::Selector;
use k8s_openapi::api::autoscaling::v2::{
    HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerBehavior, MetricSpec,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::runtime::reflector::Store;
use serde_json::{json, Value};

use crate::{Context, Error};

const COMPONENT: &str = "horizontal-pod-autoscaler";
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// Within 10 % of the target, nothing changes (Kubernetes' default tolerance).
const TOLERANCE: f64 = 0.1;

// ---- the arithmetic -------------------------------------------------------------------------

/// One pod's figures for one resource: usage and request in the same unit (millicores or
/// bytes), `None` usage when the metrics API had no sample for it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSample {
    pub usage: Option<f64>,
    pub request: f64,
    pub ready: bool,
}

/// What one metric asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    pub replicas: i32,
    /// Average utilization (percent of request) over the pods with samples, if the target is
    /// a utilization.
    pub utilization: Option<i32>,
    /// Average usage per pod with a sample.
    pub average: f64,
}

/// What a Resource metric targets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Percent of the pods' requests.
    Utilization(i32),
    /// Usage per pod, in the sample's unit.
    AverageValue(f64),
}

/// Kubernetes' replica calculation for a Resource metric. Pods without a sample count as
/// idle when scaling up and as on target when scaling down; for CPU, pods not yet Ready count
/// as idle when scaling up (`unready_idle`). A change that the fill-ins reverse, or that
/// stays within the tolerance, is no change.
pub fn resource_replicas(
    current: i32,
    pods: &[PodSample],
    target: Target,
    unready_idle: bool,
) -> Option<Recommendation> {
    let ratio_of = |samples: &[(f64, f64)]| -> (f64, f64) {
        let usage: f64 = samples.iter().map(|s| s.0).sum();
        let request: f64 = samples.iter().map(|s| s.1).sum();
        let n = samples.len().max(1) as f64;
        match target {
            Target::Utilization(pct) if request > 0.0 => {
                let util = usage * 100.0 / request;
                (util / pct.max(1) as f64, util)
            }
            Target::Utilization(_) => (0.0, 0.0),
            Target::AverageValue(v) => ((usage / n) / v.max(f64::MIN_POSITIVE), usage / n),
        }
    };
    let measured: Vec<(f64, f64)> = pods
        .iter()
        .filter(|p| p.usage.is_some() && (p.ready || !unready_idle))
        .map(|p| (p.usage.unwrap_or(0.0), p.request))
        .collect();
    if measured.is_empty() {
        return None;
    }
    let (ratio, util) = ratio_of(&measured);
    let average = measured.iter().map(|s| s.0).sum::<f64>() / measured.len() as f64;
    let utilization = matches!(target, Target::Utilization(_)).then_some(util.round() as i32);
    let keep = Recommendation {
        replicas: current,
        utilization,
        average,
    };
    let missing: Vec<&PodSample> = pods.iter().filter(|p| p.usage.is_none()).collect();
    let unready: Vec<&PodSample> = pods
        .iter()
        .filter(|p| p.usage.is_some() && !p.ready && unready_idle)
        .collect();
    let scale_up_with_unready = !unready.is_empty() && ratio > 1.0;
    if missing.is_empty() && !scale_up_with_unready {
        if (1.0 - ratio).abs() <= TOLERANCE {
            return Some(keep);
        }
        return Some(Recommendation {
            replicas: (ratio * measured.len() as f64).ceil() as i32,
            ..keep
        });
    }
    // Fill in what is missing the way that argues against the change.
    let mut filled = measured.clone();
    for p in &missing {
        let on_target = match target {
            Target::Utilization(pct) => p.request * pct as f64 / 100.0,
            Target::AverageValue(v) => v,
        };
        filled.push((if ratio < 1.0 { on_target } else { 0.0 }, p.request));
    }
    if scale_up_with_unready {
        filled.extend(unready.iter().map(|p| (0.0, p.request)));
    }
    let (new_ratio, _) = ratio_of(&filled);
    if (1.0 - new_ratio).abs() <= TOLERANCE
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Some(keep);
    }
    let replicas = (new_ratio * filled.len() as f64).ceil() as i32;
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Some(keep);
    }
    Some(Recommendation { replicas, ..keep })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Select {
    Max,
    Min,
    Disabled,
}

#[derive(Debug, Clone, PartialEq)]
struct Policy {
    pods: bool,
    value: i32,
    period: Duration,
}

#[derive(Debug, Clone, PartialEq)]
struct Rules {
    window: Duration,
    policies: Vec<Policy>,
    select: Select,
}

/// `spec.behavior` with Berth's defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Behavior {
    up: Rules,
    down: Rules,
}

/// Recommendations and scale events of one autoscaler, newest last.
#[derive(Debug, Default)]
pub struct History {
    recommendations: Vec<(Instant, i32)>,
    /// (when, change): positive for a scale up.
    events: Vec<(Instant, i32)>,
}

impl History {
    pub fn record_scale(&mut self, now: Instant, change: i32) {
        self.events.push((now, change));
    }
}

fn rules(given: Option<&HPAScalingRules>, default: Rules) -> Rules {
    let Some(g) = given else { return default };
    Rules {
        window: g
            .stabilization_window_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64))
            .unwrap_or(default.window),
        policies: match &g.policies {
            Some(p) if !p.is_empty() => p
                .iter()
                .map(|p| Policy {
                    pods: p.type_ == "Pods",
                    value: p.value,
                    period: Duration::from_secs(p.period_seconds.max(1) as u64),
                })
                .collect(),
            _ => default.policies,
        },
        select: match g.select_policy.as_deref() {
            Some("Min") => Select::Min,
            Some("Disabled") => Select::Disabled,
            Some(_) => Select::Max,
            None => default.select,
        },
    }
}

impl Behavior {
    pub fn from_spec(b: Option<&HorizontalPodAutoscalerBehavior>) -> Behavior {
        let second = Duration::from_secs(1);
        let up = Rules {
            window: Duration::ZERO,
            policies: vec![
                Policy {
                    pods: true,
                    value: 4,
                    period: second,
                },
                Policy {
                    pods: false,
                    value: 100,
                    period: second,
                },
            ],
            select: Select::Max,
        };
        let down = Rules {
            window: Duration::from_secs(30),
            policies: vec![Policy {
                pods: false,
                value: 100,
                period: second,
            }],
            select: Select::Max,
        };
        Behavior {
            up: rules(b.and_then(|b| b.scale_up.as_ref()), up),
            down: rules(b.and_then(|b| b.scale_down.as_ref()), down),
        }
    }

    /// Damp `desired` (already within min and max): stabilize over the windows, then limit the
    /// rate by the policies over past scale events; records the recommendation. Returns the
    /// replica count and, when a rule held it back, the condition reason saying which.
    pub fn normalize(
        &self,
        h: &mut History,
        now: Instant,
        current: i32,
        desired: i32,
        bounds: (i32, i32),
    ) -> (i32, Option<&'static str>) {
        let longest = self.up.window.max(self.down.window);
        h.recommendations
            .retain(|(t, _)| now.duration_since(*t) <= longest);
        let longest_period = self
            .up
            .policies
            .iter()
            .chain(&self.down.policies)
            .map(|p| p.period)
            .max()
            .unwrap_or_default();
        h.events
            .retain(|(t, _)| now.duration_since(*t) <= longest_period);
        let (mut up_rec, mut down_rec) = (desired, desired);
        for (t, r) in &h.recommendations {
            let age = now.duration_since(*t);
            if age <= self.up.window {
                up_rec = up_rec.min(*r);
            }
            if age <= self.down.window {
                down_rec = down_rec.max(*r);
            }
        }
        h.recommendations.push((now, desired));
        let stabilized = current.max(up_rec).min(down_rec);
        let in_period = |p: &Policy, up: bool| -> i32 {
            h.events
                .iter()
                .filter(|(t, c)| now.duration_since(*t) <= p.period && (*c > 0) == up)
                .map(|(_, c)| c.abs())
                .sum()
        };
        if stabilized > current {
            let limit = match self.up.select {
                Select::Disabled => current,
                select => {
                    let proposals = self.up.policies.iter().map(|p| {
                        let start = current - in_period(p, true) + in_period(p, false);
                        if p.pods {
                            start + p.value
                        } else {
                            (start as f64 * (1.0 + p.value as f64 / 100.0)).ceil() as i32
                        }
                    });
                    if select == Select::Max {
                        proposals.max().unwrap_or(current)
                    } else {
                        proposals.min().unwrap_or(current)
                    }
                }
            };
            let limit = limit.min(bounds.1);
            if stabilized > limit {
                return (limit, Some("ScaleUpLimit"));
            }
        } else if stabilized < current {
            let limit = match self.down.select {
                Select::Disabled => current,
                select => {
                    let proposals = self.down.policies.iter().map(|p| {
                        let start = current + in_period(p, false) - in_period(p, true);
                        if p.pods {
                            start - p.value
                        } else {
                            (start as f64 * (1.0 - p.value as f64 / 100.0)) as i32
                        }
                    });
                    if select == Select::Max {
                        proposals.min().unwrap_or(current)
                    } else {
                        proposals.max().unwrap_or(current)
                    }
                }
            };
            let limit = limit.max(bounds.0);
            if stabilized < limit {
                return (limit, Some("ScaleDownLimit"));
            }
        }
        (stabilized, None)
    }
}

// ---- the loop -------------------------------------------------------------------------------

pub async fn run(ctx: Arc<Context>, hpas: Store<HorizontalPodAutoscaler>) {
    if let Err(e) = ctx.synced().await {
        tracing::error!(error = %e, "autoscaler");
        return;
    }
    let _ = hpas.wait_until_ready().await;
    let mut histories: HashMap<String, History> = HashMap::new();
    loop {
        let all = hpas.state();
        histories.retain(|uid, _| all.iter().any(|h| h.metadata.uid.as_deref() == Some(uid)));
        // One metrics read per namespace per pass.
        let mut usage: HashMap<String, Result<HashMap<String, PodUsage>, kube::Error>> =
            HashMap::new();
        for hpa in all
            .iter()
            .filter(|h| h.metadata.deletion_timestamp.is_none())
        {
            let ns = hpa.metadata.namespace.clone().unwrap_or_default();
            if !usage.contains_key(&ns) {
                usage.insert(ns.clone(), pod_metrics(&ctx.client, &ns).await);
            }
            let uid = hpa.metadata.uid.clone().unwrap_or_default();
            let h = histories.entry(uid).or_default();
            if let Err(e) = reconcile(&ctx, hpa, &usage[&ns], h).await {
                tracing::warn!(error = %format!("{e:#}"), "autoscaler");
            }
        }
        tokio::time::sleep(SYNC_EVERY).await;
    }
}

/// Usage per container of one pod: (cpu nanocores, memory bytes) by container name.
type PodUsage = HashMap<String, (f64, f64)>;

async fn pod_metrics(
    client: &kube::Client,
    ns: &str,
) -> Result<HashMap<String, PodUsage>, kube::Error> {
    let req = http::Request::get(format!("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods"))
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    let list: Value = client.request(req).await?;
    let mut out = HashMap::new();
    for item in list["items"].as_array().into_iter().flatten() {
        let name = item.pointer("/metadata/name").and_then(Value::as_str);
        let Some(name) = name else { continue };
        let mut pod = PodUsage::new();
        for c in item["containers"].as_array().into_iter().flatten() {
            let q = |k: &str| c.pointer(&format!("/usage/{k}")).and_then(Value::as_str);
            let cpu = q("cpu").and_then(quantity::cpu_nanos).unwrap_or(0) as f64;
            let mem = q("memory").and_then(quantity::bytes).unwrap_or(0) as f64;
            let cname = c["name"].as_str().unwrap_or_default().to_string();
            pod.insert(cname, (cpu / 1e6, mem));
        }
        out.insert(name.to_string(), pod);
    }
    Ok(out)
}

fn is_ready(p: &Pod) -> bool {
    crate::status::ready_since(p).is_some()
}

/// A container of a pod has no request for the resource a Utilization target is measured
/// against (Kubernetes' wording).
#[derive(Debug, thiserror::Error)]
#[error("missing request for {resource} in container {container} of Pod {pod}")]
struct MissingRequest {
    resource: String,
    container: String,
    pod: String,
}

/// The sum of the pod's container requests for `resource`, in millicores or bytes; `Err`
/// names the first container without one.
fn pod_request(p: &Pod, resource: &str) -> Result<f64, MissingRequest> {
    let mut sum = 0.0;
    for c in p.spec.iter().flat_map(|s| s.containers.iter()) {
        let q = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(resource))
            .map(|q| q.0.as_str());
        let v = match (resource, q) {
            ("cpu", Some(q)) => quantity::cpu_millis(q).map(|m| m as f64),
            (_, Some(q)) => quantity::bytes(q).map(|b| b as f64),
            (_, None) => None,
        };
        match v {
            Some(v) => sum += v,
            None => {
                return Err(MissingRequest {
                    resource: resource.to_string(),
                    container: c.name.clone(),
                    pod: p.metadata.name.clone().unwrap_or_default(),
                })
            }
        }
    }
    Ok(sum)
}

fn describe(resource: &str, target: Target) -> String {
    match target {
        Target::Utilization(_) => {
            format!("{resource} resource utilization (percentage of request)")
        }
        Target::AverageValue(_) => format!("{resource} resource"),
    }
}

/// Why a metric of an autoscaler cannot be used.
#[derive(Debug, thiserror::Error)]
enum MetricError {
    #[error("metrics of type {0} are not served; use Resource")]
    Type(String),
    #[error("a Resource metric needs `resource`")]
    NoResource,
    #[error("cannot read averageValue {0:?}")]
    AverageValue(String),
    #[error("target type {0} is not served for Resource metrics")]
    TargetType(String),
}

/// One Resource metric's target, or why it cannot be used.
fn resource_target(m: &MetricSpec) -> Result<(String, Target), MetricError> {
    if m.type_ != "Resource" {
        return Err(MetricError::Type(m.type_.clone()));
    }
    let r = m.resource.as_ref().ok_or(MetricError::NoResource)?;
    let t = &r.target;
    let target = match t.type_.as_str() {
        "Utilization" => Target::Utilization(t.average_utilization.unwrap_or(80)),
        "AverageValue" => {
            let q = t
                .average_value
                .as_ref()
                .map(|q| q.0.as_str())
                .unwrap_or("0");
            let v = if r.name == "cpu" {
                quantity::cpu_millis(q).map(|m| m as f64)
            } else {
                quantity::bytes(q).map(|b| b as f64)
            };
            Target::AverageValue(v.ok_or_else(|| MetricError::AverageValue(q.to_string()))?)
        }
        other => return Err(MetricError::TargetType(other.to_string())),
    };
    Ok((r.name.clone(), target))
}

fn current_metric(resource: &str, rec: &Recommendation) -> Value {
    let average = if resource == "cpu" {
        format!("{}m", rec.average.round() as i64)
    } else {
        format!("{}", rec.average.round() as i64)
    };
    let mut current = json!({"averageValue": average});
    if let Some(u) = rec.utilization {
        current["averageUtilization"] = json!(u);
    }
    json!({"type": "Resource", "resource": {"name": resource, "current": current}})
}

/// A condition of the autoscaler's status: type, holds, reason, message.
type Condition = (&'static str, bool, &'static str, String);

/// What one pass over an autoscaler decided.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Set the target's replicas.
    pub rescale: Option<Rescale>,
    pub current: Option<i32>,
    pub desired: Option<i32>,
    /// `currentMetrics`.
    pub metrics: Vec<Value>,
    /// The status conditions; with a rescale, AbleToScale follows from how it went.
    pub conditions: Vec<Condition>,
    /// A Warning Event to say: no metric gave a recommendation (reason, message).
    pub warning: Option<(&'static str, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rescale {
    pub from: i32,
    pub to: i32,
    /// The metric that asked for it, for the SuccessfulRescale Event.
    pub why: String,
}

/// Decide one pass over an autoscaler from its target's replicas (or why they could not be
/// read), the target's pods, their usage, and `clock`. No IO; it records its recommendation
/// in `history`, which the stabilization windows read.
pub fn plan(
    hpa: &HorizontalPodAutoscaler,
    scale: Result<i32, String>,
    pods: &[Arc<Pod>],
    usage: &Result<HashMap<String, PodUsage>, kube::Error>,
    history: &mut History,
    clock: Instant,
) -> Plan {
    let Some(spec) = hpa.spec.as_ref() else {
        return Plan::default();
    };
    let mut conditions: Vec<Condition> = Vec::new();
    let current = match scale {
        Ok(c) => c,
        Err(why) => {
            conditions.push((
                "AbleToScale",
                false,
                "FailedGetScale",
                format!("the HPA controller was unable to get the target's current scale: {why}"),
            ));
            return Plan {
                conditions,
                ..Plan::default()
            };
        }
    };
    let able = || {
        (
            "AbleToScale",
            true,
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale".to_string(),
        )
    };
    let (min, max) = (spec.min_replicas.unwrap_or(1), spec.max_replicas);
    if current == 0 {
        conditions.push(able());
        conditions.push((
            "ScalingActive",
            false,
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero".into(),
        ));
        return Plan {
            current: Some(current),
            desired: Some(current),
            conditions,
            ..Plan::default()
        };
    }

    // Each metric's recommendation; the largest wins.
    let mut best: Option<(i32, String)> = None;
    let mut currents = Vec::new();
    let mut failure: Option<(&'static str, String)> = None;
    for m in spec.metrics.iter().flatten() {
        let (resource, target) = match resource_target(m) {
            Ok(t) => t,
            Err(why) => {
                failure = Some(("InvalidMetricSourceType", why.to_string()));
                continue;
            }
        };
        let usage = match usage {
            Ok(u) => u,
            Err(e) => {
                failure = Some((
                    "FailedGetResourceMetric",
                    format!(
                        "unable to get metrics for resource {resource}: {}",
                        berth_core::error::Chain(e)
                    ),
                ));
                continue;
            }
        };
        let mut samples = Vec::with_capacity(pods.len());
        for p in pods {
            let request = match pod_request(p, &resource) {
                Ok(r) => r,
                Err(why) if matches!(target, Target::Utilization(_)) => {
                    failure = Some((
                        "FailedGetResourceMetric",
                        format!("failed to get {resource} utilization: {why}"),
                    ));
                    samples.clear();
                    break;
                }
                Err(_) => 0.0,
            };
            let pod_name = p.metadata.name.as_deref().unwrap_or_default();
            let sample = usage.get(pod_name).map(|c| {
                c.values()
                    .map(|(cpu, mem)| if resource == "cpu" { *cpu } else { *mem })
                    .sum::<f64>()
            });
            samples.push(PodSample {
                usage: sample,
                request,
                ready: is_ready(p),
            });
        }
        if samples.is_empty() {
            continue;
        }
        let Some(rec) = resource_replicas(current, &samples, target, resource == "cpu") else {
            failure = Some(("FailedGetResourceMetric", format!("unable to get metrics for resource {resource}: no metrics returned from resource metrics API")));
            continue;
        };
        currents.push(current_metric(&resource, &rec));
        if best.as_ref().is_none_or(|(r, _)| rec.replicas > *r) {
            best = Some((rec.replicas, describe(&resource, target)));
        }
    }
    let Some((wanted, why)) = best else {
        let (reason, message) = failure.unwrap_or((
            "FailedGetResourceMetric",
            "no metric could be computed".into(),
        ));
        conditions.push(able());
        conditions.push(("ScalingActive", false, reason, message.clone()));
        // Outside its bounds the target is brought to the nearest one whatever the metrics
        // say, as Kubernetes does (a scalable custom kind with no pods to measure included).
        let bound = if current > max {
            Some((
                max,
                "TooManyReplicas",
                "Current number of replicas above Spec.MaxReplicas",
            ))
        } else if current < min {
            Some((
                min,
                "TooFewReplicas",
                "Current number of replicas below Spec.MinReplicas",
            ))
        } else {
            None
        };
        let rescale = bound.map(|(to, limited, why)| {
            conditions.push((
                "ScalingLimited",
                true,
                limited,
                format!("the replica count is brought within {min}..={max}"),
            ));
            Rescale {
                from: current,
                to,
                why: why.to_string(),
            }
        });
        return Plan {
            desired: Some(rescale.as_ref().map_or(current, |r| r.to)),
            rescale,
            current: Some(current),
            conditions,
            warning: Some((reason, message)),
            ..Plan::default()
        };
    };

    let bounded = wanted.clamp(min, max.max(min));
    let (mut desired, mut limited) = if current > max {
        (max, Some("TooManyReplicas"))
    } else if current < min {
        (min, Some("TooFewReplicas"))
    } else {
        Behavior::from_spec(spec.behavior.as_ref()).normalize(
            history,
            clock,
            current,
            bounded,
            (min, max),
        )
    };
    if limited.is_none() && bounded != wanted {
        limited = Some(if wanted > max {
            "TooManyReplicas"
        } else {
            "TooFewReplicas"
        });
    }
    desired = desired.clamp(min, max.max(min));
    conditions.push((
        "ScalingActive",
        true,
        "ValidMetricFound",
        format!("the HPA was able to successfully calculate a replica count from {why}"),
    ));
    conditions.push(match limited {
        Some(r @ "TooManyReplicas") => (
            "ScalingLimited",
            true,
            r,
            "the desired replica count is more than the maximum replica count".into(),
        ),
        Some(r @ "TooFewReplicas") => (
            "ScalingLimited",
            true,
            r,
            "the desired replica count is less than the minimum replica count".into(),
        ),
        Some(r) => (
            "ScalingLimited",
            true,
            r,
            "the desired replica count is held back by the behavior's policies".into(),
        ),
        None => (
            "ScalingLimited",
            false,
            "DesiredWithinRange",
            "the desired count is within the acceptable range".into(),
        ),
    });
    let rescale = (desired != current).then_some(Rescale {
        from: current,
        to: desired,
        why,
    });
    if rescale.is_none() {
        conditions.insert(
            0,
            (
                "AbleToScale",
                true,
                "ReadyForNewScale",
                "recommended size matches current size".into(),
            ),
        );
    }
    Plan {
        rescale,
        current: Some(current),
        desired: Some(desired),
        metrics: currents,
        conditions,
        warning: None,
    }
}

/// The autoscaler's target, through its `scale` subresource, and how to name it.
fn target_of(
    ctx: &Context,
    hpa: &HorizontalPodAutoscaler,
) -> Option<(Api<DynamicObject>, String, String)> {
    let ns = hpa.metadata.namespace.clone().unwrap_or_default();
    let target_ref = &hpa.spec.as_ref()?.scale_target_ref;
    let (group, version) = match target_ref
        .api_version
        .as_deref()
        .unwrap_or("apps/v1")
        .rsplit_once('/')
    {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (
            String::new(),
            target_ref.api_version.clone().unwrap_or("v1".into()),
        ),
    };
    let gvk = GroupVersionKind::gvk(&group, &version, &target_ref.kind);
    let plural = format!("{}s", target_ref.kind.to_lowercase());
    let ar = ApiResource::from_gvk_with_plural(&gvk, &plural);
    let targets: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ar);
    let reference = format!("{}/{}", target_ref.kind, target_ref.name);
    Some((targets, target_ref.name.clone(), reference))
}

async fn reconcile(
    ctx: &Context,
    hpa: &HorizontalPodAutoscaler,
    usage: &Result<HashMap<String, PodUsage>, kube::Error>,
    history: &mut History,
) -> Result<(), Error> {
    let Some((targets, name, reference)) = target_of(ctx, hpa) else {
        return Ok(());
    };
    let ns = hpa.metadata.namespace.clone().unwrap_or_default();
    let scale = targets.get_scale(&name).await;
    let selector = scale
        .as_ref()
        .ok()
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.selector.as_deref())
        .and_then(|s| Selector::parse(s).ok());
    let pods: Vec<Arc<Pod>> = match &selector {
        Some(sel) if !sel.is_empty() => ctx
            .pods
            .state()
            .into_iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(ns.as_str())
                    && crate::status::is_active(p)
                    && sel.matches(p.metadata.labels.as_ref().unwrap_or(&Default::default()))
            })
            .collect(),
        _ => Vec::new(),
    };
    let scale = scale
        .map(|s| s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0))
        .map_err(|e| berth_core::error::Chain(&e).to_string());
    let plan = plan(hpa, scale, &pods, usage, history, Instant::now());
    execute(ctx, hpa, &targets, &name, &reference, plan, history).await
}

/// Carry a plan out: the rescale (its outcome decides AbleToScale and the Event), the
/// warning, then the status.
async fn execute(
    ctx: &Context,
    hpa: &HorizontalPodAutoscaler,
    targets: &Api<DynamicObject>,
    name: &str,
    reference: &str,
    mut plan: Plan,
    history: &mut History,
) -> Result<(), Error> {
    let event = |type_: &str, reason: &str, message: &str| {
        crate::events::record(
            &ctx.client,
            involved(hpa),
            type_,
            reason,
            message,
            COMPONENT,
        )
    };
    if let Some((reason, message)) = &plan.warning {
        event("Warning", reason, message);
    }
    let mut scaled_at = None;
    if let Some(Rescale { from, to, why }) = &plan.rescale {
        let patch = json!({"spec": {"replicas": to}});
        match targets
            .patch_scale(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                history.record_scale(Instant::now(), to - from);
                let direction = if to > from { "above" } else { "below" };
                event(
                    "Normal",
                    "SuccessfulRescale",
                    &format!("New size: {to}; reason: {why} {direction} target"),
                );
                let message =
                    format!("the HPA controller was able to update the target scale to {to}");
                plan.conditions
                    .insert(0, ("AbleToScale", true, "SucceededRescale", message));
                scaled_at = Some(jiff::Timestamp::now().to_string());
            }
            Err(e) => {
                let message = format!(
                    "the HPA controller was unable to update the target scale of {reference}: {}",
                    berth_core::error::Chain(&e)
                );
                event("Warning", "FailedRescale", &message);
                plan.conditions
                    .insert(0, ("AbleToScale", false, "FailedUpdateScale", message));
                plan.desired = Some(*from);
            }
        }
    }
    write_status(
        ctx,
        hpa,
        plan.current,
        plan.desired,
        &plan.metrics,
        &plan.conditions,
        scaled_at,
    )
    .await
}

fn involved(hpa: &HorizontalPodAutoscaler) -> berth_core::events::Involved<'_> {
    crate::events::involved_in("autoscaling/v2", "HorizontalPodAutoscaler", &hpa.metadata)
}

/// Write the status when something a reader sees changed.
async fn write_status(
    ctx: &Context,
    hpa: &HorizontalPodAutoscaler,
    current: Option<i32>,
    desired: Option<i32>,
    metrics: &[Value],
    conditions: &[(&str, bool, &str, String)],
    scaled_at: Option<String>,
) -> Result<(), Error> {
    let now = jiff::Timestamp::now().to_string();
    let old = hpa.status.as_ref();
    let old_conditions = old.and_then(|s| s.conditions.clone()).unwrap_or_default();
    let conditions: Vec<Value> = conditions
        .iter()
        .map(|(type_, ok, reason, message)| {
            let status = if *ok { "True" } else { "False" };
            let since = old_conditions
                .iter()
                .find(|c| c.type_ == *type_ && c.status == status)
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0.to_string())
                .unwrap_or_else(|| now.clone());
            json!({"type": type_, "status": status, "reason": reason, "message": message,
                   "lastTransitionTime": since})
        })
        .collect();
    let mut status = json!({
        "observedGeneration": hpa.metadata.generation,
        "currentReplicas": current.unwrap_or(0),
        "desiredReplicas": desired.unwrap_or(0),
        "currentMetrics": metrics,
        "conditions": conditions,
    });
    match scaled_at {
        Some(t) => status["lastScaleTime"] = json!(t),
        None => {
            if let Some(t) = old.and_then(|s| s.last_scale_time.as_ref()) {
                status["lastScaleTime"] = json!(t.0.to_string());
            }
        }
    }
    let before = old
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .unwrap_or_default();
    let fields = [
        "currentReplicas",
        "desiredReplicas",
        "currentMetrics",
        "observedGeneration",
    ];
    if !crate::status::status_changed(&before, &status, &fields) {
        return Ok(());
    }
    let ns = hpa.metadata.namespace.clone().unwrap_or_default();
    let name = hpa.metadata.name.clone().unwrap_or_default();
    let hpas = Api::<HorizontalPodAutoscaler>::namespaced(ctx.client.clone(), &ns);
    crate::status::write_status(&hpas, &name, status, &format!("autoscaler {ns}/{name}")).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn autoscaler(min: i32, max: i32, target: i32) -> HorizontalPodAutoscaler {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"minReplicas": min, "maxReplicas": max,
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": target}}}]},
        }))
        .unwrap()
    }

    /// A ready pod requesting 100m CPU.
    fn ready_pod(name: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"containers": [{"name": "c",
                    "resources": {"requests": {"cpu": "100m"}}}]},
                "status": {"conditions": [{"type": "Ready", "status": "True",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
            }))
            .unwrap(),
        )
    }

    /// Usage in millicores per pod name.
    fn usage(millis: &[(&str, f64)]) -> Result<HashMap<String, PodUsage>, kube::Error> {
        Ok(millis
            .iter()
            .map(|(p, m)| (p.to_string(), HashMap::from([("c".to_string(), (*m, 0.0))])))
            .collect())
    }

    #[test]
    fn a_plan_rescales_to_the_metrics_recommendation_within_bounds() {
        let hpa = autoscaler(1, 5, 50);
        let pods = [ready_pod("a"), ready_pod("b")];
        let mut history = History::default();
        // 200 % of the request against a 50 % target: 8, held to the maximum of 5.
        let p = plan(
            &hpa,
            Ok(2),
            &pods,
            &usage(&[("a", 200.0), ("b", 200.0)]),
            &mut history,
            Instant::now(),
        );
        assert_eq!(
            p.rescale,
            Some(Rescale {
                from: 2,
                to: 5,
                why: "cpu resource utilization (percentage of request)".into()
            })
        );
        let limited = p
            .conditions
            .iter()
            .find(|c| c.0 == "ScalingLimited")
            .unwrap();
        assert_eq!((limited.1, limited.2), (true, "TooManyReplicas"));
        assert!(
            p.conditions.iter().all(|c| c.0 != "AbleToScale"),
            "the rescale's outcome says that"
        );
    }

    #[test]
    fn a_plan_without_a_metric_warns_and_keeps_the_replicas() {
        let hpa = autoscaler(1, 5, 50);
        let pods = [ready_pod("a")];
        let no_metrics = Err(kube::Error::LinesCodecMaxLineLengthExceeded);
        let p = plan(
            &hpa,
            Ok(3),
            &pods,
            &no_metrics,
            &mut History::default(),
            Instant::now(),
        );
        assert_eq!(p.rescale, None);
        assert_eq!((p.current, p.desired), (Some(3), Some(3)));
        assert!(matches!(p.warning, Some(("FailedGetResourceMetric", _))));
        let active = p
            .conditions
            .iter()
            .find(|c| c.0 == "ScalingActive")
            .unwrap();
        assert!(!active.1);
        let unreadable = plan(
            &hpa,
            Err("no such deployment".into()),
            &pods,
            &usage(&[]),
            &mut History::default(),
            Instant::now(),
        );
        assert_eq!(unreadable.conditions.len(), 1);
        assert_eq!(unreadable.conditions[0].2, "FailedGetScale");
        assert_eq!(unreadable.current, None);
        // Below its minimum, the target is raised to it without any metric.
        let raised = plan(
            &autoscaler(4, 5, 50),
            Ok(1),
            &[],
            &no_metrics,
            &mut History::default(),
            Instant::now(),
        );
        assert_eq!(raised.rescale.map(|r| (r.from, r.to)), Some((1, 4)));
        assert_eq!(raised.desired, Some(4));
    }

    fn pods(usages: &[Option<f64>], request: f64) -> Vec<PodSample> {
        usages
            .iter()
            .map(|u| PodSample {
                usage: *u,
                request,
                ready: true,
            })
            .collect()
    }

    #[test]
    fn utilization_above_target_scales_in_proportion() {
        // Two pods at 200 % of a 100m request, target 50 %: 8 replicas.
        let r = resource_replicas(
            2,
            &pods(&[Some(200.0), Some(200.0)], 100.0),
            Target::Utilization(50),
            true,
        )
        .unwrap();
        assert_eq!(r.replicas, 8);
        assert_eq!(r.utilization, Some(200));
    }

    #[test]
    fn within_tolerance_nothing_changes() {
        let r = resource_replicas(
            3,
            &pods(&[Some(52.0), Some(55.0), Some(53.0)], 100.0),
            Target::Utilization(50),
            true,
        )
        .unwrap();
        assert_eq!(r.replicas, 3);
    }

    #[test]
    fn a_pod_without_samples_argues_against_the_change() {
        // Scaling up: the missing pod counts as idle. 2 of 3 at 100 %, target 50: ratio over
        // three pods is (200/300)/0.5 = 1.33 -> 4, not the 6 the two alone ask for.
        let r = resource_replicas(
            3,
            &pods(&[Some(100.0), Some(100.0), None], 100.0),
            Target::Utilization(50),
            true,
        )
        .unwrap();
        assert_eq!(r.replicas, 4);
        // Scaling down: the missing pod counts as on target, so 2 idle + 1 on target -> 1.
        let r = resource_replicas(
            3,
            &pods(&[Some(0.0), Some(0.0), None], 100.0),
            Target::Utilization(50),
            true,
        )
        .unwrap();
        assert_eq!(r.replicas, 1);
    }

    #[test]
    fn unready_pods_count_as_idle_when_scaling_up_on_cpu() {
        let mut p = pods(&[Some(100.0), Some(100.0)], 100.0);
        p[1].ready = false;
        // Only the ready pod is measured (200 % of target); with the unready one as idle the
        // ratio is 1.0: no change.
        let r = resource_replicas(2, &p, Target::Utilization(50), true).unwrap();
        assert_eq!(r.replicas, 2);
    }

    #[test]
    fn average_value_targets_usage_per_pod() {
        let r = resource_replicas(
            2,
            &pods(&[Some(300.0), Some(300.0)], 0.0),
            Target::AverageValue(200.0),
            false,
        )
        .unwrap();
        assert_eq!(r.replicas, 3);
        assert!(resource_replicas(
            2,
            &pods(&[None, None], 0.0),
            Target::AverageValue(1.0),
            false
        )
        .is_none());
    }

    #[test]
    fn scale_up_is_rate_limited_by_its_policies() {
        let b = Behavior::from_spec(None);
        let mut h = History::default();
        let t0 = Instant::now();
        // From 2, Max(2 + 4 pods, 2 * 200 %) = 6 within one second.
        assert_eq!(
            b.normalize(&mut h, t0, 2, 20, (1, 20)),
            (6, Some("ScaleUpLimit"))
        );
        h.record_scale(t0, 4);
        // Still in the same second: the period started at 2, so the limit stays 6.
        assert_eq!(
            b.normalize(&mut h, t0 + Duration::from_millis(500), 6, 20, (1, 20))
                .0,
            6
        );
        // A second later a new period starts at 6: 12.
        assert_eq!(
            b.normalize(&mut h, t0 + Duration::from_millis(1600), 6, 20, (1, 20))
                .0,
            12
        );
    }

    #[test]
    fn scale_down_waits_out_its_stabilization_window() {
        let b = Behavior::from_spec(None);
        let mut h = History::default();
        let t0 = Instant::now();
        assert_eq!(b.normalize(&mut h, t0, 5, 5, (1, 10)).0, 5);
        // Load drops: the highest recommendation of the last 30 s (5) holds.
        assert_eq!(
            b.normalize(&mut h, t0 + Duration::from_secs(10), 5, 1, (1, 10))
                .0,
            5
        );
        // A brief spike inside the window changes nothing either way.
        assert_eq!(
            b.normalize(&mut h, t0 + Duration::from_secs(20), 5, 3, (1, 10))
                .0,
            5
        );
        // Past the window of the 5, the highest left is 3; then 1 once that one ages out.
        assert_eq!(
            b.normalize(&mut h, t0 + Duration::from_secs(31), 5, 1, (1, 10))
                .0,
            3
        );
        assert_eq!(
            b.normalize(&mut h, t0 + Duration::from_secs(52), 3, 1, (1, 10))
                .0,
            1
        );
    }

    #[test]
    fn a_spec_behavior_overrides_only_what_it_sets() {
        let spec: HorizontalPodAutoscalerBehavior = serde_json::from_value(json!({
            "scaleDown": {"stabilizationWindowSeconds": 5},
            "scaleUp": {"selectPolicy": "Disabled"}
        }))
        .unwrap();
        let b = Behavior::from_spec(Some(&spec));
        assert_eq!(b.down.window, Duration::from_secs(5));
        assert_eq!(b.down.policies, Behavior::from_spec(None).down.policies);
        let mut h = History::default();
        assert_eq!(
            b.normalize(&mut h, Instant::now(), 2, 9, (1, 10)),
            (2, Some("ScaleUpLimit"))
        );
    }
}
