//! The zero-write guard: whether a desired child differs from its live object. Pure; the plan
//! uses it to list only the applies that change something.
//!
//! A PATCH is a write request even when it changes nothing, so a child is applied only when
//! (a) it does not exist, (b) the hash of the desired object differs from the hash annotation on
//! the live object (the spec changed, including fields that were removed), or (c) the live
//! object no longer contains the desired fields (someone edited or removed them by hand).
//! Fields the API server defaults are extra fields in the live object and never count as drift.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Annotation holding the hash of the last applied desired object.
pub const HASH_ANNOTATION: &str = "articlesite.io/applied-hash";

/// How a desired child compares with its live object: why it is applied, or that it is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "lowercase")]
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
    hex::encode(&Sha256::digest(desired.to_string().as_bytes())[..16])
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
            crate::quantity::compare(l, d) == Some(std::cmp::Ordering::Equal)
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
        // `0`, `0.0`: integers and floats alike.
        Value::Number(n) => {
            n.as_i64() == Some(0) || n.as_u64() == Some(0) || n.as_f64() == Some(0.0)
        }
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// Stamps the hash annotation on a desired child and returns its JSON (annotation included) and
/// the hash, which covers the object as built.
pub fn stamp<K: kube::Resource + Serialize>(
    desired: &mut K,
) -> Result<(Value, String), serde_json::Error> {
    let hash = desired_hash(&serde_json::to_value(&*desired)?);
    desired
        .meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(HASH_ANNOTATION.into(), hash.clone());
    Ok((serde_json::to_value(&*desired)?, hash))
}

#[cfg(test)]
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
    fn quantities_compare_by_value() {
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
