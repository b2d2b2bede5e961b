//! The resource kinds Berth serves, and what the API layer needs to know about each.

/// Every kind Berth serves. Per-kind behaviour (defaulting, validation, table columns, field
/// selectors) lives in `crate::kinds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    Node,
    Service,
    Endpoints,
    Event,
    ConfigMap,
    Secret,
    Deployment,
    ReplicaSet,
    Lease,
    HorizontalPodAutoscaler,
    EndpointSlice,
    Job,
    ReplicationController,
    CronJob,
    DaemonSet,
    PodDisruptionBudget,
    StatefulSet,
    PersistentVolumeClaim,
    PersistentVolume,
    StorageClass,
    ControllerRevision,
    ServiceAccount,
    Role,
    ClusterRole,
    RoleBinding,
    ClusterRoleBinding,
    CustomResourceDefinition,
    /// An object of a kind a CustomResourceDefinition added: its resource comes from a
    /// [`crate::custom::Catalog`], never from [`RESOURCES`].
    Custom,
}

/// A served resource: where it lives in the REST tree and which subresources it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    pub kind: Kind,
    pub group: &'static str,
    pub version: &'static str,
    pub kind_name: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Has a `status` subresource: the main endpoint ignores status, `/status` only status.
    pub status: bool,
    /// Has a `scale` subresource (autoscaling/v1 Scale over `spec.replicas`).
    pub scale: bool,
    /// `metadata.generation` is kept and bumped on every spec change.
    pub generation: bool,
}

impl Resource {
    /// `v1` for the core group, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `pods`, `deployments.apps`: how Kubernetes names a resource in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `Deployment.apps`: how validation messages name a kind.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind_name.to_string()
        } else {
            format!("{}.{}", self.kind_name, self.group)
        }
    }

    /// The store key prefix for this resource, as Kubernetes lays out etcd: the built-in
    /// kinds under `/registry/<plural>/`, with Kubernetes' own exceptions (Services under
    /// `services/specs`, Endpoints under `services/endpoints`, Nodes under `minions`,
    /// ReplicationControllers under `controllers`), and CustomResourceDefinitions and custom
    /// kinds under `/registry/<group>/<plural>/`.
    pub fn key_prefix(&self) -> String {
        match self.kind {
            Kind::Service => "/registry/services/specs/".to_string(),
            Kind::Endpoints => "/registry/services/endpoints/".to_string(),
            Kind::Node => "/registry/minions/".to_string(),
            Kind::ReplicationController => "/registry/controllers/".to_string(),
            Kind::CustomResourceDefinition | Kind::Custom => {
                format!("/registry/{}/{}/", self.group, self.plural)
            }
            _ => format!("/registry/{}/", self.plural),
        }
    }

    /// Where Berth kept this resource before it took Kubernetes' layout:
    /// `/registry/<group, or core>/<plural>/`.
    pub fn legacy_key_prefix(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        format!("/registry/{group}/{}/", self.plural)
    }

    /// The store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/{name}", self.key_prefix()),
            _ => format!("{}{name}", self.key_prefix()),
        }
    }

    /// The key prefix of every object of this resource in one namespace (or all of them).
    pub fn namespace_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.key_prefix()),
            _ => self.key_prefix(),
        }
    }
}

const fn res(
    kind: Kind,
    group: &'static str,
    version: &'static str,
    kind_name: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
) -> Resource {
    Resource {
        kind,
        group,
        version,
        kind_name,
        plural,
        singular,
        namespaced,
        short_names: &[],
        categories: &[],
        status: false,
        scale: false,
        generation: false,
    }
}

/// The RBAC API group.
pub const RBAC: &str = "rbac.authorization.k8s.io";

/// The served resources, in discovery order.
pub static RESOURCES: &[Resource] = &[
    Resource {
        short_names: &["ns"],
        status: true,
        ..res(
            Kind::Namespace,
            "",
            "v1",
            "Namespace",
            "namespaces",
            "namespace",
            false,
        )
    },
    Resource {
        short_names: &["po"],
        categories: &["all"],
        status: true,
        ..res(Kind::Pod, "", "v1", "Pod", "pods", "pod", true)
    },
    Resource {
        short_names: &["no"],
        status: true,
        ..res(Kind::Node, "", "v1", "Node", "nodes", "node", false)
    },
    Resource {
        short_names: &["svc"],
        categories: &["all"],
        status: true,
        ..res(
            Kind::Service,
            "",
            "v1",
            "Service",
            "services",
            "service",
            true,
        )
    },
    Resource {
        short_names: &["ep"],
        ..res(
            Kind::Endpoints,
            "",
            "v1",
            "Endpoints",
            "endpoints",
            "endpoints",
            true,
        )
    },
    Resource {
        short_names: &["ev"],
        ..res(Kind::Event, "", "v1", "Event", "events", "event", true)
    },
    Resource {
        short_names: &["cm"],
        ..res(
            Kind::ConfigMap,
            "",
            "v1",
            "ConfigMap",
            "configmaps",
            "configmap",
            true,
        )
    },
    res(Kind::Secret, "", "v1", "Secret", "secrets", "secret", true),
    Resource {
        short_names: &["deploy"],
        categories: &["all"],
        status: true,
        scale: true,
        generation: true,
        ..res(
            Kind::Deployment,
            "apps",
            "v1",
            "Deployment",
            "deployments",
            "deployment",
            true,
        )
    },
    Resource {
        short_names: &["rs"],
        categories: &["all"],
        status: true,
        scale: true,
        generation: true,
        ..res(
            Kind::ReplicaSet,
            "apps",
            "v1",
            "ReplicaSet",
            "replicasets",
            "replicaset",
            true,
        )
    },
    res(
        Kind::Lease,
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        "lease",
        true,
    ),
    hpa("v2"),
    Resource {
        short_names: &["rc"],
        categories: &["all"],
        status: true,
        scale: true,
        generation: true,
        ..res(
            Kind::ReplicationController,
            "",
            "v1",
            "ReplicationController",
            "replicationcontrollers",
            "replicationcontroller",
            true,
        )
    },
    Resource {
        categories: &["all"],
        status: true,
        generation: true,
        ..res(Kind::Job, "batch", "v1", "Job", "jobs", "job", true)
    },
    Resource {
        short_names: &["sts"],
        categories: &["all"],
        status: true,
        scale: true,
        generation: true,
        ..res(
            Kind::StatefulSet,
            "apps",
            "v1",
            "StatefulSet",
            "statefulsets",
            "statefulset",
            true,
        )
    },
    res(
        Kind::ControllerRevision,
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        "controllerrevision",
        true,
    ),
    Resource {
        short_names: &["pvc"],
        status: true,
        ..res(
            Kind::PersistentVolumeClaim,
            "",
            "v1",
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            "persistentvolumeclaim",
            true,
        )
    },
    Resource {
        short_names: &["pv"],
        status: true,
        ..res(
            Kind::PersistentVolume,
            "",
            "v1",
            "PersistentVolume",
            "persistentvolumes",
            "persistentvolume",
            false,
        )
    },
    Resource {
        short_names: &["sc"],
        ..res(
            Kind::StorageClass,
            "storage.k8s.io",
            "v1",
            "StorageClass",
            "storageclasses",
            "storageclass",
            false,
        )
    },
    Resource {
        short_names: &["pdb"],
        status: true,
        generation: true,
        ..res(
            Kind::PodDisruptionBudget,
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            "poddisruptionbudget",
            true,
        )
    },
    Resource {
        short_names: &["ds"],
        categories: &["all"],
        status: true,
        generation: true,
        ..res(
            Kind::DaemonSet,
            "apps",
            "v1",
            "DaemonSet",
            "daemonsets",
            "daemonset",
            true,
        )
    },
    Resource {
        short_names: &["cj"],
        categories: &["all"],
        status: true,
        generation: true,
        ..res(
            Kind::CronJob,
            "batch",
            "v1",
            "CronJob",
            "cronjobs",
            "cronjob",
            true,
        )
    },
    Resource {
        short_names: &["sa"],
        ..res(
            Kind::ServiceAccount,
            "",
            "v1",
            "ServiceAccount",
            "serviceaccounts",
            "serviceaccount",
            true,
        )
    },
    res(Kind::Role, RBAC, "v1", "Role", "roles", "role", true),
    res(
        Kind::ClusterRole,
        RBAC,
        "v1",
        "ClusterRole",
        "clusterroles",
        "clusterrole",
        false,
    ),
    res(
        Kind::RoleBinding,
        RBAC,
        "v1",
        "RoleBinding",
        "rolebindings",
        "rolebinding",
        true,
    ),
    res(
        Kind::ClusterRoleBinding,
        RBAC,
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        false,
    ),
    Resource {
        short_names: &["crd", "crds"],
        categories: &["api-extensions"],
        status: true,
        generation: true,
        ..res(
            Kind::CustomResourceDefinition,
            crate::custom::GROUP,
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            "customresourcedefinition",
            false,
        )
    },
    res(
        Kind::EndpointSlice,
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        true,
    ),
];

/// Older versions served beside a kind's storage version (the one in [`RESOURCES`]), each
/// converted to and from it at the API's edge (`crate::kinds::convert`).
pub static ALSO_SERVED: &[Resource] = &[hpa("v1")];

/// HorizontalPodAutoscalers in one of their served versions.
const fn hpa(version: &'static str) -> Resource {
    Resource {
        short_names: &["hpa"],
        categories: &["all"],
        status: true,
        generation: true,
        ..res(
            Kind::HorizontalPodAutoscaler,
            "autoscaling",
            version,
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            "horizontalpodautoscaler",
            true,
        )
    }
}

/// Every version of `group` served, the preferred (storage) version first.
pub fn group_versions(group: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in RESOURCES
        .iter()
        .chain(ALSO_SERVED)
        .filter(|r| r.group == group)
    {
        if !out.contains(&r.version) {
            out.push(r.version);
        }
    }
    out
}

/// Every served resource of one group-version, whichever table it is in.
pub fn of_group_version<'a>(
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'static Resource> + 'a {
    RESOURCES
        .iter()
        .chain(ALSO_SERVED)
        .filter(move |r| r.group == group && r.version == version)
}

/// The served API groups (other than core), with their preferred version each.
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !out.iter().any(|(g, _)| *g == r.group) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// Look up a resource by group, version and plural name.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    of_group_version(group, version).find(|r| r.plural == plural)
}

/// Look up a resource by its kind (a built-in one: a custom kind's resource is its
/// catalog's).
pub fn of_kind(kind: Kind) -> &'static Resource {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind)
        .expect("every kind is served")
}

/// Look up a resource by `apiVersion` and `kind` as written in an object.
pub fn by_type(api_version: &str, kind: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.kind_name == kind && r.api_version() == api_version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_laid_out_as_kubernetes_lays_them_out() {
        let deploy = find("apps", "v1", "deployments").unwrap();
        assert_eq!(
            deploy.key(Some("ns1"), "web"),
            "/registry/deployments/ns1/web"
        );
        let node = find("", "v1", "nodes").unwrap();
        assert_eq!(node.key(Some("ignored"), "n1"), "/registry/minions/n1");
        let svc = find("", "v1", "services").unwrap();
        assert_eq!(svc.key(Some("a"), "b"), "/registry/services/specs/a/b");
        let ep = find("", "v1", "endpoints").unwrap();
        assert_eq!(ep.key(Some("a"), "b"), "/registry/services/endpoints/a/b");
        let crd = of_kind(Kind::CustomResourceDefinition);
        assert_eq!(
            crd.key(None, "x"),
            "/registry/apiextensions.k8s.io/customresourcedefinitions/x"
        );
        assert_eq!(deploy.legacy_key_prefix(), "/registry/apps/deployments/");
        assert_eq!(node.legacy_key_prefix(), "/registry/core/nodes/");
        // No resource's keys fall under another's prefix.
        let prefixes: Vec<String> = RESOURCES.iter().map(Resource::key_prefix).collect();
        for (i, a) in prefixes.iter().enumerate() {
            for (j, b) in prefixes.iter().enumerate() {
                assert!(i == j || !a.starts_with(b.as_str()), "{a} under {b}");
            }
        }
        assert_eq!(deploy.api_version(), "apps/v1");
        assert_eq!(node.api_version(), "v1");
    }

    #[test]
    fn every_kind_is_served_once() {
        for r in RESOURCES {
            assert_eq!(RESOURCES.iter().filter(|o| o.kind == r.kind).count(), 1);
        }
    }
}
