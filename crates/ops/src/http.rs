//! The daemon's HTTP endpoints (axum): `/metrics` (Prometheus text,
//! [`crate::metrics`]), `/healthz` (200 while the daemon runs and its
//! state directory is readable) and `/api/status` (the JSON of `status
//! --json`). Read-only; bound to loopback unless `daemon.listen` says
//! otherwise.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::daemon::Shared;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/api/status", get(status))
        .route("/status", get(status_page))
        .with_state(shared)
}

fn failure(e: crate::Error) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    match s.status() {
        Ok(st) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            crate::metrics::render(&st),
        )
            .into_response(),
        Err(e) => failure(e),
    }
}

async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    match s.status() {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => failure(e),
    }
}

async fn status(State(s): State<Arc<Shared>>) -> Response {
    match s.status() {
        Ok(st) => axum::Json(st).into_response(),
        Err(e) => failure(e),
    }
}

async fn status_page(State(s): State<Arc<Shared>>) -> Response {
    let config = s.config.read().expect("not poisoned").clone();
    match crate::statuspage::current(&config, s.clock.now()) {
        Ok(page) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response(),
        Err(e) => failure(e),
    }
}
