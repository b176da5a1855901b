//! Request extractors that reject with the API's JSON errors: the caller (bearer token)
//! and JSON bodies.

use crate::ApiState;
use crate::error::ApiError;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use switchyard_auth::{Principal, bearer};
use switchyard_protocol::Role;
use switchyard_store::Actor;

/// The authenticated caller, from `Authorization: Bearer <jwt>`.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl Caller {
    pub fn actor(&self) -> Actor<'_> {
        Actor {
            sub: &self.0.sub,
            role: self.0.role,
        }
    }

    pub fn role(&self) -> Role {
        self.0.role
    }

    /// Refuses unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.0.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "role {} may not do this",
                self.0.role
            )))
        }
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing token"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(bearer::from_authorization)
            .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <jwt>"))?;
        state
            .verifier
            .verify(token)
            .map(Caller)
            .map_err(|e| ApiError::unauthorized(e.to_string()))
    }
}

/// `Json<T>` whose rejections are the API's JSON errors (400, 413, 415, 422).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(JsonBody(value))
    }
}
