//! The article server's HorizontalPodAutoscaler (`autoscaling/v2`), while
//! `spec.app.autoscaling` is set. The operator then never sends the Deployment's `replicas`
//! (`deployment::build`), so the autoscaler is its only writer.
//!
//! Behaviour (docs/autoscaling.md): scale up at once (no stabilization), doubling or adding
//! four pods every 15 s, whichever is more (Kubernetes' own default); scale down only after the
//! load stayed low for `scaleDownStabilizationSeconds` (default 300), and then one pod a
//! minute, so that each removal can be marked by the operator to keep the spread
//! (`plan::pods`) and a short dip in traffic never drops capacity.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use kube::ResourceExt;

use super::{Component, Names, object_meta};
use crate::crd::ArticleSite;

/// Pods the ReplicaSet may remove per minute on a scale-down: one, so that the operator's
/// deletion-cost mark always names the pod that goes next.
pub const SCALE_DOWN_PODS_PER_MINUTE: i32 = 1;

fn utilization(resource: &str, percent: i32) -> MetricSpec {
    MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: resource.into(),
            target: MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(percent),
                ..Default::default()
            },
        }),
        ..Default::default()
    }
}

fn policy(type_: &str, value: i32, period_seconds: i32) -> HPAScalingPolicy {
    HPAScalingPolicy {
        type_: type_.into(),
        value,
        period_seconds,
    }
}

/// The desired autoscaler, or `None` without `spec.app.autoscaling`.
pub fn build(site: &ArticleSite) -> Option<HorizontalPodAutoscaler> {
    let autoscaling = site.spec.app.autoscaling.as_ref()?;
    let min = site.spec.app.min_replicas()?;
    let name = Names::app(&site.name_any());
    let mut metrics = vec![utilization(
        "cpu",
        autoscaling.target_cpu_utilization_percentage,
    )];
    if let Some(memory) = autoscaling.target_memory_utilization_percentage {
        metrics.push(utilization("memory", memory));
    }
    Some(HorizontalPodAutoscaler {
        metadata: object_meta(site, name.clone(), Component::App),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name,
            },
            min_replicas: Some(min),
            max_replicas: autoscaling.max_replicas,
            metrics: Some(metrics),
            behavior: Some(HorizontalPodAutoscalerBehavior {
                scale_up: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(0),
                    select_policy: Some("Max".into()),
                    policies: Some(vec![policy("Percent", 100, 15), policy("Pods", 4, 15)]),
                    ..Default::default()
                }),
                scale_down: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(
                        autoscaling.scale_down_stabilization_seconds,
                    ),
                    select_policy: Some("Min".into()),
                    policies: Some(vec![policy("Pods", SCALE_DOWN_PODS_PER_MINUTE, 60)]),
                    ..Default::default()
                }),
            }),
        },
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::site;

    fn autoscaled(spec: serde_json::Value) -> ArticleSite {
        let mut s = site("news");
        s.spec.app.autoscaling = Some(serde_json::from_value(spec).expect("autoscaling spec"));
        s
    }

    #[test]
    fn no_autoscaler_without_the_spec() {
        assert!(build(&site("news")).is_none());
    }

    #[test]
    fn the_autoscaler_as_designed() {
        let hpa = build(&autoscaled(serde_json::json!({"maxReplicas": 6}))).expect("hpa");
        let spec = &hpa.spec;
        assert_eq!(hpa.metadata.name.as_deref(), Some("news"));
        assert_eq!(
            hpa.metadata.owner_references.as_ref().map(Vec::len),
            Some(1)
        );
        assert_eq!(spec.scale_target_ref.kind, "Deployment");
        assert_eq!(spec.scale_target_ref.name, "news");
        assert_eq!(spec.min_replicas, Some(3), "spec.app.replicas is the floor");
        assert_eq!(spec.max_replicas, 6);
        let metrics = spec.metrics.as_ref().expect("metrics");
        assert_eq!(metrics.len(), 1);
        let cpu = metrics[0].resource.as_ref().expect("resource metric");
        assert_eq!(
            (cpu.name.as_str(), cpu.target.average_utilization),
            ("cpu", Some(70))
        );
        let behavior = spec.behavior.as_ref().expect("behavior");
        let up = behavior.scale_up.as_ref().expect("scale up");
        assert_eq!(up.stabilization_window_seconds, Some(0));
        let down = behavior.scale_down.as_ref().expect("scale down");
        assert_eq!(down.stabilization_window_seconds, Some(300));
        let down_policies = down.policies.as_ref().expect("policies");
        assert_eq!(
            (down_policies[0].type_.as_str(), down_policies[0].value),
            ("Pods", 1)
        );
    }

    #[test]
    fn explicit_minimum_and_memory_target() {
        let hpa = build(&autoscaled(serde_json::json!({
            "minReplicas": 2, "maxReplicas": 10,
            "targetCPUUtilizationPercentage": 50, "targetMemoryUtilizationPercentage": 80,
            "scaleDownStabilizationSeconds": 60,
        })))
        .expect("hpa");
        let spec = hpa.spec;
        assert_eq!(spec.min_replicas, Some(2));
        let targets: Vec<_> = spec
            .metrics
            .iter()
            .flatten()
            .filter_map(|m| m.resource.as_ref())
            .map(|r| (r.name.clone(), r.target.average_utilization))
            .collect();
        assert_eq!(
            targets,
            [
                ("cpu".to_string(), Some(50)),
                ("memory".to_string(), Some(80))
            ]
        );
        let down = spec
            .behavior
            .and_then(|b| b.scale_down)
            .expect("scale down");
        assert_eq!(down.stabilization_window_seconds, Some(60));
    }
}
