//! Integration tests against a real PostgreSQL server (see `harness`). One binary, so one
//! PostgreSQL server and one link step; each test gets its own database.

mod api;
mod bad_input;
mod browser;
mod cache;
mod concurrency;
mod explain;
mod failover;
mod hardening;
mod harness;
mod jobs;
mod metrics;
mod migrations;
mod pages;
mod resilience;
mod shutdown;
