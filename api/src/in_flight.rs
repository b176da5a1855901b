//! A bound on the requests one user has in flight at once (`SWITCHYARD_MAX_REQUESTS_PER_USER`).
//!
//! The listener bounds HTTP connections per process and per address
//! (`switchyard/src/listener.rs`), but it cannot tell users apart: a token is only known once
//! it is verified. This middleware runs right after that, over `/api`: a request of a user who
//! already has the maximum in flight is answered `429 limit_exceeded` at once, before its body
//! is read — so one token cannot hold hundreds of connections open with stalled bodies while
//! other users are served. A request counts from its head until its answer (the body's read
//! and the handler included; a request cut by the body or request deadline stops counting
//! then). Requests without a valid token pass through to be answered 401 by their handler;
//! `service` tokens (backend services publishing, gateways) are not users and are not bound
//! here (the listener's bounds still hold).
//!
//! The verified caller is handed on in the request's extensions, so the handler's [`Caller`]
//! does not verify the token a second time.

use crate::ApiState;
use crate::error::ApiError;
use crate::extract::Caller;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use switchyard_protocol::{ErrorCode, Role};

/// Requests in flight per user (`sub`). Only users with a request in flight have an entry, so
/// its size is bounded by the requests the listener lets in at once.
#[derive(Clone)]
pub struct InFlight {
    /// At most this many per user; 0: no bound.
    max: usize,
    /// A std mutex: held for one map operation, never across an `.await`.
    per_user: Arc<Mutex<HashMap<String, usize>>>,
}

impl InFlight {
    pub fn new(max: usize) -> InFlight {
        InFlight {
            max,
            per_user: Arc::default(),
        }
    }

    /// A slot for one more request of `sub`, or `None` when it has `max` in flight.
    fn claim(&self, sub: &str) -> Option<Slot> {
        let mut per_user = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let count = per_user.entry(sub.to_owned()).or_insert(0);
        if self.max > 0 && *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Slot {
            in_flight: self.clone(),
            sub: sub.to_owned(),
        })
    }
}

/// One request in flight; dropped when it is answered (or cut).
struct Slot {
    in_flight: InFlight,
    sub: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_user = self
            .in_flight
            .per_user
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_user.get_mut(&self.sub) {
            *count -= 1;
            if *count == 0 {
                per_user.remove(&self.sub);
            }
        }
    }
}

/// The middleware (see the module doc).
pub async fn limit(
    State((state, in_flight)): State<(ApiState, InFlight)>,
    mut request: Request,
    next: Next,
) -> Response {
    let Ok(caller) = Caller::from_headers(request.headers(), &state) else {
        return next.run(request).await;
    };
    // Held until the answer: dropping it lets the user's next request in.
    let _slot = match caller.role() {
        Role::Service => None,
        _ => match in_flight.claim(&caller.0.sub) {
            Some(slot) => Some(slot),
            None => {
                return ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    ErrorCode::LimitExceeded,
                    format!(
                        "this user has {} requests in flight (SWITCHYARD_MAX_REQUESTS_PER_USER); retry when one is answered",
                        in_flight.max
                    ),
                )
                .into_response();
            }
        },
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}
