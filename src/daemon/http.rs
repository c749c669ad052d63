//! The daemon's HTTP server: `POST /api/v1/sync`, `GET /api/v1/identity`,
//! `/healthz`, `/readyz` (ready after the first successful sync), `/metrics`,
//! and webhooks at `POST /hooks/{github,gitea,gitlab,bitbucket-server,generic}`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};

use super::Triggers;
use super::metrics::Metrics;
use super::webhook::{self, Provider, Verdict};

/// Webhook bodies larger than this are refused (413).
const MAX_BODY: usize = 1024 * 1024;

pub struct Shared {
    pub triggers: Arc<Triggers>,
    pub metrics: Arc<Metrics>,
    pub ready: AtomicBool,
    /// The deploy key's public half, once known.
    pub identity: Mutex<Option<String>>,
    /// Webhooks are refused while no secret is configured.
    pub webhook_secret: Option<Vec<u8>>,
    pub branch: String,
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/v1/sync", post(sync))
        .route("/api/v1/identity", get(identity))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/hooks/{provider}", post(hook))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

async fn sync(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    shared.triggers.sync_now();
    (StatusCode::ACCEPTED, "sync requested\n")
}

async fn identity(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    match shared.identity.lock().expect("identity").clone() {
        Some(key) => (StatusCode::OK, format!("{key}\n")),
        None => (StatusCode::NOT_FOUND, "no deploy key yet\n".into()),
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    if shared.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no successful sync yet\n")
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> ([(&'static str, &'static str); 1], String) {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.render(),
    )
}

async fn hook(
    State(shared): State<Arc<Shared>>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let Some(provider) = Provider::from_path(&provider) else {
        return (StatusCode::NOT_FOUND, "unknown webhook provider\n".into());
    };
    let Some(secret) = &shared.webhook_secret else {
        return (
            StatusCode::UNAUTHORIZED,
            "webhooks are not configured (no secret)\n".into(),
        );
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    match webhook::verify(provider, secret, header, &body, &shared.branch) {
        Verdict::Unauthorized => {
            tracing::warn!(?provider, "webhook refused: missing or wrong signature");
            (
                StatusCode::UNAUTHORIZED,
                "bad or missing signature\n".into(),
            )
        }
        Verdict::Ping => (StatusCode::OK, "pong\n".into()),
        Verdict::Ignored(why) => (StatusCode::OK, format!("ignored: {why}\n")),
        Verdict::Sync => {
            tracing::info!(?provider, "webhook: push to our branch, fetching");
            shared.triggers.fetch_now();
            (StatusCode::ACCEPTED, "fetching\n".into())
        }
    }
}
