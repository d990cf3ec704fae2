//! articlesite-operator: reconciles `ArticleSite` custom resources into the Kubernetes objects
//! that run a highly available article site.
//!
//! Flow of one reconcile (see `docs/operator-design.md`): validate the spec, build every desired
//! child with pure functions (`resources`), apply only what differs from the live object
//! (`apply`), create the generated Secrets once (`secrets`), then compute status (`status`).

pub mod admission;
pub mod api_health;
pub mod apply;
pub mod controller;
pub mod crd;
pub mod error;
pub mod fence;
pub mod ha;
pub mod leader;
pub mod metrics;
pub mod resources;
pub mod secrets;
pub mod status;
pub mod telemetry;
pub mod watches;

/// The single field manager of every server-side apply, and the operator's user agent prefix.
pub const MANAGER: &str = "articlesite-operator";
