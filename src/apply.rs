//! The thin server-side-apply layer with its zero-write guard.
//!
//! A PATCH is a write request even when it changes nothing, so a child is applied only when
//! (a) it does not exist, (b) the hash of the desired object differs from the hash annotation on
//! the live object (the spec changed, including fields that were removed), or (c) the live
//! object no longer contains the desired fields (someone edited or removed them by hand).
//! Fields the API server defaults are extra fields in the live object and never count as drift.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::MANAGER;
use crate::error::{Error, Result};

/// Annotation holding the hash of the last applied desired object.
pub const HASH_ANNOTATION: &str = "articlesite.io/applied-hash";

/// What happened to one child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Created,
    /// The desired object changed (spec update).
    Updated,
    /// The desired object did not change but the live one had drifted (hand edit).
    Restored,
}

/// Hash of the desired object: sha256 over its JSON (serde_json maps are sorted, so the
/// encoding is canonical), first 16 bytes as hex.
pub fn desired_hash(desired: &Value) -> String {
    let digest = Sha256::digest(desired.to_string().as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// What to do with a child, given the desired JSON (hash annotation already set) and the live
/// object if any. Pure, so the zero-write decision is unit-tested.
pub fn decide(desired: &Value, hash: &str, live: Option<&Value>) -> Outcome {
    let Some(live) = live else {
        return Outcome::Created;
    };
    let live_hash = live
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(HASH_ANNOTATION))
        .and_then(Value::as_str);
    if live_hash != Some(hash) {
        Outcome::Updated
    } else if !contains(live, desired, "") {
        Outcome::Restored
    } else {
        Outcome::Unchanged
    }
}

/// Whether `live` holds every field of `desired` with the same value.
/// - objects: every desired key must match (extra live keys are server defaults or other owners);
/// - arrays of objects: same length, and each desired element is contained in the live element
///   at the same position (SSA keeps the order of applied list items);
/// - arrays of scalars: equal;
/// - resource quantities compare by value (`0.5` equals `500m`), since the server canonicalises;
/// - a desired zero value (`false`, `0`, `""`, `{}`, `[]`) matches a missing live field, since the
///   server drops empty values of non-pointer fields.
pub fn contains(live: &Value, desired: &Value, key: &str) -> bool {
    match (live, desired) {
        (Value::Object(l), Value::Object(d)) => d.iter().all(|(k, dv)| match l.get(k) {
            Some(lv) => contains(lv, dv, k),
            None => is_zero(dv),
        }),
        (Value::Array(l), Value::Array(d)) => {
            l.len() == d.len()
                && l.iter().zip(d).all(|(lv, dv)| match (lv, dv) {
                    (Value::Object(_), Value::Object(_)) => contains(lv, dv, key),
                    _ => lv == dv,
                })
        }
        (Value::String(l), Value::String(d)) if l != d && is_quantity_key(key) => {
            match (parse_quantity(l), parse_quantity(d)) {
                (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(b.abs()),
                _ => false,
            }
        }
        (l, d) => l == d,
    }
}

/// Keys of resource lists whose values are quantities.
fn is_quantity_key(key: &str) -> bool {
    matches!(
        key,
        "cpu" | "memory" | "storage" | "ephemeral-storage" | "sizeLimit"
    ) || key.starts_with("hugepages-")
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// Numeric value of a Kubernetes quantity (`500m`, `1.5Gi`, `2e3`), or `None` when malformed.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let n: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(n * factor)
}

/// Serialises `desired`, stamps the hash annotation, and applies it only when `decide` says so.
/// Returns the resulting (or unchanged live) object.
pub async fn apply<K>(api: &Api<K>, desired: &K, live: Option<K>) -> Result<(K, Outcome)>
where
    K: Resource<Scope = NamespaceResourceScope> + Serialize + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let kind = kind_of::<K>();
    let name = desired
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let mut body =
        serde_json::to_value(desired).map_err(|source| Error::Serialize { kind, source })?;
    let hash = desired_hash(&body);
    set_annotation(&mut body, HASH_ANNOTATION, &hash);
    let live_json = live
        .as_ref()
        .map(serde_json::to_value)
        .transpose()
        .map_err(|source| Error::Serialize { kind, source })?;
    let outcome = decide(&body, &hash, live_json.as_ref());
    if outcome == Outcome::Unchanged
        && let Some(live) = live
    {
        return Ok((live, outcome));
    }
    let pp = PatchParams::apply(MANAGER).force();
    let applied = api
        .patch(&name, &pp, &Patch::Apply(&body))
        .await
        .map_err(Error::kube("apply", kind))?;
    Ok((applied, outcome))
}

/// Deletes a child that the spec no longer asks for (e.g. the Ingress), if it is ours.
pub async fn delete_if_owned<K>(api: &Api<K>, live: Option<K>, owner_uid: &str) -> Result<bool>
where
    K: Resource<Scope = NamespaceResourceScope> + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let Some(live) = live else { return Ok(false) };
    let ours = live.owner_references().iter().any(|o| o.uid == owner_uid);
    if !ours {
        return Ok(false);
    }
    api.delete(&live.name_any(), &DeleteParams::background())
        .await
        .map_err(Error::kube("delete", kind_of::<K>()))?;
    Ok(true)
}

/// GET that maps 404 to `None`.
pub async fn get_opt<K>(api: &Api<K>, name: &str) -> Result<Option<K>>
where
    K: Resource + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    api.get_opt(name)
        .await
        .map_err(Error::kube("get", kind_of::<K>()))
}

pub fn kind_of<K: Resource>() -> &'static str
where
    K::DynamicType: Default,
{
    // Kinds of k8s-openapi types are static strings; leak-free match on the common ones.
    match K::kind(&Default::default()).as_ref() {
        "Deployment" => "Deployment",
        "StatefulSet" => "StatefulSet",
        "Service" => "Service",
        "Secret" => "Secret",
        "PodDisruptionBudget" => "PodDisruptionBudget",
        "NetworkPolicy" => "NetworkPolicy",
        "Ingress" => "Ingress",
        "PersistentVolumeClaim" => "PersistentVolumeClaim",
        "ServiceAccount" => "ServiceAccount",
        "ArticleSite" => "ArticleSite",
        _ => "object",
    }
}

fn set_annotation(body: &mut Value, key: &str, value: &str) {
    if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(key.into(), Value::String(value.into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stamped(mut v: Value) -> (Value, String) {
        let h = desired_hash(&v);
        set_annotation(&mut v, HASH_ANNOTATION, &h);
        (v, h)
    }

    #[test]
    fn missing_object_is_created() {
        let (d, h) = stamped(json!({"metadata": {"name": "a"}}));
        assert_eq!(decide(&d, &h, None), Outcome::Created);
    }

    #[test]
    fn server_defaults_are_not_drift() {
        let (d, h) = stamped(json!({
            "metadata": {"name": "a", "labels": {"x": "1"}},
            "spec": {"replicas": 2, "ports": [{"name": "http", "port": 80}],
                     "resources": {"requests": {"cpu": "0.5", "memory": "1024Mi"}},
                     "enableServiceLinks": false, "emptyDir": {}}
        }));
        let mut live = d.clone();
        live["metadata"]["uid"] = json!("u");
        live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = json!("1");
        live["spec"]["ports"][0]["protocol"] = json!("TCP");
        live["spec"]["revisionHistoryLimit"] = json!(10);
        live["spec"]["resources"]["requests"]["cpu"] = json!("500m");
        live["spec"]["resources"]["requests"]["memory"] = json!("1Gi");
        live["spec"]
            .as_object_mut()
            .unwrap()
            .remove("enableServiceLinks");
        live["spec"].as_object_mut().unwrap().remove("emptyDir");
        live["status"] = json!({"readyReplicas": 2});
        assert_eq!(decide(&d, &h, Some(&live)), Outcome::Unchanged);
    }

    #[test]
    fn hand_edits_are_drift() {
        let (d, h) = stamped(json!({"metadata": {"name": "a"}, "spec": {"replicas": 2,
            "env": [{"name": "A", "value": "1"}], "args": ["x"]}}));
        let mut live = d.clone();
        live["spec"]["replicas"] = json!(5);
        assert_eq!(decide(&d, &h, Some(&live)), Outcome::Restored);
        let mut live = d.clone();
        live["spec"]["env"] = json!([]);
        assert_eq!(decide(&d, &h, Some(&live)), Outcome::Restored);
        let mut live = d.clone();
        live["spec"]["args"] = json!(["x", "y"]);
        assert_eq!(decide(&d, &h, Some(&live)), Outcome::Restored);
    }

    #[test]
    fn spec_changes_and_removals_are_updates() {
        let (old, _) = stamped(
            json!({"metadata": {"name": "a"}, "spec": {"env": [{"name": "A"}, {"name": "B"}]}}),
        );
        let (new, h) =
            stamped(json!({"metadata": {"name": "a"}, "spec": {"env": [{"name": "A"}]}}));
        assert_eq!(decide(&new, &h, Some(&old)), Outcome::Updated);
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("1Gi"), Some(1073741824.0));
        assert_eq!(parse_quantity("2e3"), Some(2000.0));
        assert_eq!(parse_quantity("1.5"), Some(1.5));
        assert_eq!(parse_quantity("1x"), None);
        assert!(contains(&json!({"cpu": "1"}), &json!({"cpu": "1000m"}), ""));
        assert!(!contains(&json!({"cpu": "1"}), &json!({"cpu": "100m"}), ""));
        assert!(!contains(
            &json!({"image": "1"}),
            &json!({"image": "1000m"}),
            ""
        ));
    }

    #[test]
    fn hash_is_stable() {
        let a = json!({"b": 1, "a": {"d": 2, "c": 3}});
        let b = json!({"a": {"c": 3, "d": 2}, "b": 1});
        assert_eq!(desired_hash(&a), desired_hash(&b));
        assert_eq!(desired_hash(&a).len(), 32);
    }
}
