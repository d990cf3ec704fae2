//! The ArticleSite CRD in the shared cluster: installed from the Rust types, as tests need it.

use std::time::Duration;

use articlesite_operator::crd::ArticleSite;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, CustomResourceExt, ResourceExt};

use super::{FIELD_MANAGER, wait_for};

/// Installs (server-side apply, idempotent) the CRD generated from the types and waits until
/// the API server serves it.
pub async fn install_crd(client: &Client) {
    apply_crd(client, ArticleSite::crd()).await;
}

/// Applies a CRD (the generated one, or a variant of it) and waits until it is established.
pub async fn apply_crd(client: &Client, crd: CustomResourceDefinition) {
    let name = crd.name_any();
    Api::<CustomResourceDefinition>::all(client.clone())
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("apply CRD");
    wait_established(client, &name).await;
}

/// Waits until the ArticleSite CRD (installed by whatever means: Helm, say) is established.
pub async fn wait_crd_established(client: &Client) {
    wait_established(client, ArticleSite::crd_name()).await;
}

async fn wait_established(client: &Client, name: &str) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    wait_for("CRD established", Duration::from_secs(30), || async {
        let crd = crds.get(name).await.map_err(|e| e.to_string())?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            Ok(())
        } else {
            Err("not established".into())
        }
    })
    .await;
}
