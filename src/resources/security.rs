//! Pod security of everything the operator runs: the `restricted` Pod Security Standard, with the
//! user and group ids that the images use (contract in `docs/security.md`), and the per-site
//! ServiceAccount that carries no RBAC.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, PodSecurityContext, PodTemplateSpec, SeccompProfile, SecurityContext,
    ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use super::{Component, Names, object_meta};
use crate::crd::ArticleSite;

/// uid and gid of the article server image (`USER 65532:65532`, no home, no shell).
pub const APP_UID: i64 = 65532;
pub const APP_GID: i64 = 65532;
/// uid and gid of `postgres` in the database image: the official image creates the user with
/// these ids before installing Debian's postgresql package, which then reuses it.
pub const POSTGRES_UID: i64 = 999;
pub const POSTGRES_GID: i64 = 999;

/// Pod template annotation that changes when a Secret the app reads changes (a version, never a
/// value), so that a rotation or a recreated Secret rolls the pods. The one mechanism that rolls
/// the app on a change of its inputs.
pub const CREDENTIALS_VERSION_ANNOTATION: &str = "articlesite.io/credentials-version";

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    }
}

/// The container half of `restricted`: no privilege escalation, no capabilities, non-root,
/// nothing writable but the mounted volumes.
pub fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The app pod's security context: the image's ids, or the ids from
/// `spec.app.podSecurityContext`. Only ids can be overridden; `runAsNonRoot` and the seccomp
/// profile are always set, so the namespace's Pod Security admission (and the kubelet, for
/// `runAsNonRoot`) judge whatever ids a user chooses.
pub fn app_pod_security(site: &ArticleSite) -> PodSecurityContext {
    let o = site
        .spec
        .app
        .pod_security_context
        .clone()
        .unwrap_or_default();
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(o.run_as_user.unwrap_or(APP_UID)),
        run_as_group: Some(o.run_as_group.unwrap_or(APP_GID)),
        fs_group: o.fs_group,
        supplemental_groups: o.supplemental_groups,
        seccomp_profile: Some(runtime_default()),
        ..Default::default()
    }
}

/// A backup Job's pod: the operator image's non-root user (the same ids as the article server's).
pub fn job_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(APP_UID),
        run_as_group: Some(APP_GID),
        seccomp_profile: Some(runtime_default()),
        ..Default::default()
    }
}

/// The database pod's security context; `fsGroup` makes the data volume writable by postgres.
pub fn database_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(POSTGRES_UID),
        run_as_group: Some(POSTGRES_GID),
        fs_group: Some(POSTGRES_GID),
        // Only chown the volume when its root is not already ours (fast restarts on big volumes).
        fs_group_change_policy: Some("OnRootMismatch".into()),
        seccomp_profile: Some(runtime_default()),
        ..Default::default()
    }
}

/// The site's own ServiceAccount: no RoleBinding refers to it and it mounts no token, so a
/// compromised pod holds no Kubernetes credentials at all.
pub fn service_account(site: &ArticleSite) -> ServiceAccount {
    ServiceAccount {
        metadata: object_meta(
            site,
            Names::service_account(&site.name_any()),
            Component::App,
        ),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

/// Version of the Secrets the app reads, from their metadata only, never from their data: the
/// uid (a recreated Secret is a new credential) and the resourceVersion (any change of the
/// object, a rotation among them). A missing Secret counts as absent.
pub fn credentials_version(secrets: &[Option<&ObjectMeta>]) -> String {
    let mut h = Sha256::new();
    for meta in secrets {
        match meta {
            Some(m) => h.update(format!(
                "{}/{};",
                m.uid.as_deref().unwrap_or_default(),
                m.resource_version.as_deref().unwrap_or_default()
            )),
            None => h.update("-;"),
        }
    }
    hex::encode(&h.finalize()[..8])
}

/// Stamps the credentials version on a pod template (a change rolls the pods).
pub fn set_credentials_version(template: &mut PodTemplateSpec, version: &str) {
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(CREDENTIALS_VERSION_ANNOTATION.into(), version.into());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PodSecurityOverride;
    use crate::resources::testing::site;

    #[test]
    fn app_pods_use_the_image_ids_and_restricted_settings() {
        let s = site("news");
        let pod = app_pod_security(&s);
        assert_eq!(pod.run_as_user, Some(65532));
        assert_eq!(pod.run_as_group, Some(65532));
        assert_eq!(pod.run_as_non_root, Some(true));
        assert_eq!(pod.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let c = restricted_container_security();
        assert_eq!(c.allow_privilege_escalation, Some(false));
        assert_eq!(c.read_only_root_filesystem, Some(true));
        assert_eq!(c.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
    }

    #[test]
    fn overrides_change_ids_only() {
        let mut s = site("news");
        s.spec.app.pod_security_context = Some(PodSecurityOverride {
            run_as_user: Some(0),
            fs_group: Some(2000),
            ..Default::default()
        });
        let pod = app_pod_security(&s);
        assert_eq!(pod.run_as_user, Some(0));
        assert_eq!(pod.run_as_group, Some(APP_GID));
        assert_eq!(pod.fs_group, Some(2000));
        // runAsNonRoot stays: a root uid is refused by admission or the kubelet, never run.
        assert_eq!(pod.run_as_non_root, Some(true));
    }

    #[test]
    fn database_owns_its_volume() {
        let pod = database_pod_security();
        assert_eq!(pod.run_as_user, Some(999));
        assert_eq!(pod.fs_group, Some(999));
    }

    #[test]
    fn service_account_mounts_no_token() {
        let sa = service_account(&site("news"));
        assert_eq!(sa.metadata.name.as_deref(), Some("news"));
        assert_eq!(sa.automount_service_account_token, Some(false));
    }

    #[test]
    fn credentials_versions_follow_uid_and_resource_version() {
        let meta = |uid: &str, rv: &str| ObjectMeta {
            uid: Some(uid.into()),
            resource_version: Some(rv.into()),
            ..Default::default()
        };
        let (c, t) = (meta("c", "1"), meta("t", "2"));
        let a = credentials_version(&[Some(&c), Some(&t)]);
        assert_eq!(a.len(), 16);
        assert_eq!(a, credentials_version(&[Some(&c), Some(&t)]));
        // A rotation (new resourceVersion), a recreated Secret (new uid), a missing one.
        assert_ne!(a, credentials_version(&[Some(&c), Some(&meta("t", "3"))]));
        assert_ne!(a, credentials_version(&[Some(&meta("c2", "1")), Some(&t)]));
        assert_ne!(a, credentials_version(&[None, Some(&t)]));
        // The order of the Secrets matters (credentials, then token).
        assert_ne!(a, credentials_version(&[Some(&t), Some(&c)]));
    }
}
