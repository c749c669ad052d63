//! The daemon's HTTP server: `POST /api/v1/sync` (for a Kubernetes bearer
//! token allowed to update the state object), `GET /api/v1/identity`,
//! `/healthz`, `/readyz` (ready after the first successful sync, and not
//! while the last sync could not be recorded), `/metrics`, and webhooks at
//! `POST /hooks/{github,gitea,gitlab,bitbucket-server,generic}`.
//!
//! Connections are bounded in number and time, so slow clients cannot hold
//! the server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
/// Connections served at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 64;
/// Time for a client to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection stays open, however it is used.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for a client to send a webhook's body once its headers came.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections kept for the probes when every other slot is taken: they
/// are served `/healthz` and `/readyz` only, and briefly.
pub const PROBE_CONNECTIONS: usize = 8;
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Refused connections are logged at most once per this long.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

pub struct Shared {
    pub triggers: Arc<Triggers>,
    pub metrics: Arc<Metrics>,
    /// A sync succeeded since start.
    pub ready: AtomicBool,
    /// Another daemon holds the leader Lease: this one stands by, healthy.
    pub standby: AtomicBool,
    /// Why the daemon is not ready although a sync succeeded once.
    pub not_ready: Mutex<Option<String>>,
    /// The deploy key's public half, once known.
    pub identity: Mutex<Option<String>>,
    /// Webhooks are refused while no secret is configured.
    pub webhook_secret: Option<Vec<u8>>,
    /// What Docker Hub's and Quay's webhooks carry in their URL.
    pub registry_token: Option<Vec<u8>>,
    pub branch: String,
    /// For TokenReview and SubjectAccessReview of API callers.
    pub client: kube::Client,
    pub state: crate::cluster::state::StateRef,
    /// Webhook deliveries seen, and when the last fetch was asked for.
    pub deliveries: Mutex<webhook::Deliveries>,
}

/// Serves `router` on `listener` with a connection limit and timeouts.
pub fn serve(listener: tokio::net::TcpListener, router: Router, shared: Arc<Shared>) {
    let probes = probe_router(shared);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let probe_slots = Arc::new(tokio::sync::Semaphore::new(PROBE_CONNECTIONS));
    let mut refused = 0u64;
    let mut logged: Option<std::time::Instant> = None;
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("HTTP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (slot, router, header, whole) = match slots.clone().try_acquire_owned() {
                Ok(slot) => (slot, router.clone(), HEADER_TIMEOUT, CONNECTION_TIMEOUT),
                // Every slot taken (slow clients, a flood): the probes still
                // get an answer, on a few short-lived slots of their own.
                Err(_) => match probe_slots.clone().try_acquire_owned() {
                    Ok(slot) => (slot, probes.clone(), PROBE_TIMEOUT, PROBE_TIMEOUT),
                    Err(_) => {
                        refused += 1;
                        if logged.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY) {
                            tracing::warn!(
                                "HTTP connections refused: {MAX_CONNECTIONS} already open ({refused} refused so far)"
                            );
                            logged = Some(std::time::Instant::now());
                        }
                        drop(stream);
                        continue;
                    }
                },
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            tokio::spawn(async move {
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(header)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let _ = tokio::time::timeout(whole, connection).await;
                drop(slot);
            });
        }
    });
}

/// What the probes' reserved connections serve.
fn probe_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(|| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "busy: only /healthz and /readyz are served now\n",
            )
        })
        .with_state(shared)
}

/// The webhooks alone: what a Git host may reach, nothing of the API,
/// the metrics or the readiness reasons.
pub fn hooks_router(shared: Arc<Shared>) -> Router {
    hooks(Router::new())
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

/// The webhook routes, Git's and registries', on both listeners.
fn hooks(router: Router<Arc<Shared>>) -> Router<Arc<Shared>> {
    router
        .route("/hooks/{provider}", post(hook))
        .route("/hooks/registry/{format}", post(registry_hook))
        .route(
            "/hooks/registry/{format}/{token}",
            post(registry_hook_with_token),
        )
}

pub fn router(shared: Arc<Shared>) -> Router {
    let router = Router::new()
        .route("/api/v1/sync", post(sync))
        .route("/api/v1/identity", get(identity))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    hooks(router)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

/// A webhook's body: at most `MAX_BODY` bytes, arriving within `BODY_TIMEOUT`.
async fn read_body(body: axum::body::Body) -> Result<Bytes, (StatusCode, String)> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(_)) => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("webhook bodies are limited to {MAX_BODY} bytes\n"),
        )),
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            "the body did not arrive in time\n".into(),
        )),
    }
}

/// A registry's push notification, its secret in the `Authorization` header.
async fn registry_hook(
    State(shared): State<Arc<Shared>>,
    Path(format): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> (StatusCode, String) {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    registry_notification(&shared, &format, authorization, false, body).await
}

/// A registry's push notification, its secret as the URL's last step.
async fn registry_hook_with_token(
    State(shared): State<Arc<Shared>>,
    Path((format, token)): Path<(String, String)>,
    body: axum::body::Body,
) -> (StatusCode, String) {
    registry_notification(&shared, &format, Some(token), true, body).await
}

/// The automation looks up images now if the notification is authentic.
async fn registry_notification(
    shared: &Arc<Shared>,
    format: &str,
    token: Option<String>,
    in_path: bool,
    body: axum::body::Body,
) -> (StatusCode, String) {
    use super::registry_hook::Format;
    let Some(format) = Format::from_path(format).filter(|f| f.token_in_path() == in_path) else {
        return (
            StatusCode::NOT_FOUND,
            "unknown registry notification format\n".into(),
        );
    };
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let secret = if in_path {
        shared.registry_token.as_ref().ok_or(
            "no `registry-token` in the webhook Secret: Docker Hub's and Quay's webhooks carry it in their URL\n",
        )
    } else {
        shared
            .webhook_secret
            .as_ref()
            .ok_or("webhooks are not configured (no secret)\n")
    };
    let secret = match secret {
        Ok(secret) => secret,
        Err(why) => return (StatusCode::UNAUTHORIZED, why.into()),
    };
    match super::registry_hook::verify(format, secret, token.as_deref(), &body) {
        super::registry_hook::Verdict::Unauthorized => {
            tracing::warn!("registry notification refused: missing or wrong token");
            (StatusCode::UNAUTHORIZED, "bad or missing token\n".into())
        }
        super::registry_hook::Verdict::Ignored(why) => {
            (StatusCode::OK, format!("ignored: {why}\n"))
        }
        super::registry_hook::Verdict::Pushed(tags) => {
            tracing::info!(tags = %tags.join(", "), "registry notification: scanning images");
            shared.triggers.automate.notify_one();
            (StatusCode::ACCEPTED, "scanning\n".into())
        }
    }
}

/// Asks for a sync, for callers whose Kubernetes token may update the
/// daemon's state object: the right `tidegate sync` needs through the API.
async fn sync(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> (StatusCode, String) {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return (
            StatusCode::UNAUTHORIZED,
            "a Kubernetes bearer token is required (Authorization: Bearer …)\n".into(),
        );
    };
    match super::auth::may_request_sync(&shared.client, &shared.state, token).await {
        Ok(super::auth::Decision::Allowed) => {
            shared.triggers.sync_now();
            (StatusCode::ACCEPTED, "sync requested\n".into())
        }
        Ok(super::auth::Decision::Unauthenticated) => (
            StatusCode::UNAUTHORIZED,
            "the token was not accepted\n".into(),
        ),
        Ok(super::auth::Decision::Forbidden(user)) => (
            StatusCode::FORBIDDEN,
            format!(
                "{user} may not update configmap {}/{}\n",
                shared.state.namespace,
                shared.state.name()
            ),
        ),
        Err(e) => {
            tracing::warn!("cannot review a sync request's token: {e}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot check the token now\n".into(),
            )
        }
    }
}

async fn identity(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    match shared.identity.lock().expect("identity").clone() {
        Some(key) => (StatusCode::OK, format!("{key}\n")),
        None => (StatusCode::NOT_FOUND, "no deploy key yet\n".into()),
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    if let Some(why) = shared.not_ready.lock().expect("readiness").clone() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"));
    }
    if shared.standby.load(Ordering::SeqCst) {
        (
            StatusCode::OK,
            "standby: another replica holds the leader Lease\n".into(),
        )
    } else if shared.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no successful sync yet\n".into(),
        )
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
    body: axum::body::Body,
) -> (StatusCode, String) {
    let Some(provider) = Provider::from_path(&provider) else {
        return (StatusCode::NOT_FOUND, "unknown webhook provider\n".into());
    };
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(refused) => return refused,
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
        Verdict::Sync => admit(
            &shared,
            provider,
            header(webhook::delivery_header(provider)),
        ),
    }
}

/// An authentic push to our branch: fetch now, later (paced), or not again
/// (a delivery seen before, or a fetch already queued).
fn admit(shared: &Arc<Shared>, provider: Provider, id: Option<String>) -> (StatusCode, String) {
    let now = std::time::Instant::now();
    let admitted = shared
        .deliveries
        .lock()
        .expect("deliveries")
        .admit(id.as_deref(), now);
    match admitted {
        webhook::Admit::Seen => (
            StatusCode::OK,
            "ignored: this delivery was seen before\n".into(),
        ),
        webhook::Admit::Queued => (StatusCode::ACCEPTED, "fetch already queued\n".into()),
        webhook::Admit::Later(after) => {
            let shared = shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                shared
                    .deliveries
                    .lock()
                    .expect("deliveries")
                    .fired(std::time::Instant::now());
                shared.triggers.fetch_now();
            });
            (StatusCode::ACCEPTED, "fetch queued\n".into())
        }
        webhook::Admit::Now => {
            tracing::info!(?provider, "webhook: push to our branch, fetching");
            shared.triggers.fetch_now();
            (StatusCode::ACCEPTED, "fetching\n".into())
        }
    }
}
