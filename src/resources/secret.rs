//! The generated Secrets (created once by `crate::secrets`, never updated).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use super::{Component, DB_PASSWORD_KEY, DB_USERNAME_KEY, Names, WRITE_TOKEN_KEY, object_meta};
use crate::crd::ArticleSite;

/// `kubernetes.io/basic-auth` Secret with the database owner's credentials.
pub fn database_credentials(site: &ArticleSite, password: String) -> Secret {
    Secret {
        metadata: object_meta(
            site,
            Names::database_credentials(&site.name_any()),
            Component::Database,
        ),
        type_: Some("kubernetes.io/basic-auth".into()),
        string_data: Some(BTreeMap::from([
            (DB_USERNAME_KEY.to_string(), site.spec.database.user.clone()),
            (DB_PASSWORD_KEY.to_string(), password),
        ])),
        ..Default::default()
    }
}

/// Opaque Secret with the bearer token that authorizes writes to the article server.
pub fn write_token(site: &ArticleSite, token: String) -> Secret {
    Secret {
        metadata: object_meta(site, Names::write_token(&site.name_any()), Component::App),
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([(WRITE_TOKEN_KEY.to_string(), token)])),
        ..Default::default()
    }
}
