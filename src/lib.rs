//! articlesite-operator: reconciles `ArticleSite` custom resources into the Kubernetes objects
//! that run a highly available article site.
//!
//! Flow of one reconcile (see `docs/operator-design.md`): `observe` reads, `plan` decides every
//! write (pure; desired children from `resources`, compared with the live ones by `diff`), `act`
//! writes, `status` and `events` report. `controller` wires them together.

pub mod act;
pub mod admission;
pub mod api_health;
pub mod archive;
pub mod backup_job;
pub mod backup_report;
pub mod caches;
pub mod controller;
pub mod crd;
pub mod database_report;
pub mod diff;
pub mod error;
pub mod events;
pub mod fence;
pub mod ha;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod patroni;
pub mod plan;
pub mod problem;
pub mod quantity;
pub mod reason;
pub mod resources;
pub mod secrets;
pub mod spread;
pub mod status;
pub mod telemetry;
pub mod watches;

/// The single field manager of every server-side apply, and the operator's user agent prefix.
pub const MANAGER: &str = "articlesite-operator";
