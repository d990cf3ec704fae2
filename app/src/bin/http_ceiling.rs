//! The HTTP ceiling of `make bench`: the smallest axum server (same axum, tokio and runtime as
//! the article server, no database, no middleware), so the article server's figures can be read
//! as a fraction of what the HTTP stack alone can do on the same machine.
//!
//! `cargo run --release -p article-server --bin http_ceiling -- 127.0.0.1:8099`

use axum::Router;
use axum::routing::get;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8099".to_string());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let app = Router::new().route("/", get(|| async { "ok" }));
    axum::serve(listener, app).await?;
    Ok(())
}
