//! Bearer-token authentication: the `Agent` extractor.

use std::future::Future;
use std::pin::Pin;

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};

use super::{errors::ApiError, AppState};
use crate::domain::{agents, Agent};

/// The token of a request: the `Authorization: Bearer` header.
pub fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Resolve a token to its agent, or a 401.
pub async fn authenticate(state: &AppState, token: Option<&str>) -> Result<Agent, ApiError> {
    let token = token.ok_or(ApiError::Unauthorized(
        "Send your API token as `Authorization: Bearer <token>`.",
    ))?;
    agents::by_token(&state.db, token)
        .await?
        .ok_or(ApiError::Unauthorized("The token is not valid."))
}

impl FromRequest for Agent {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Agent, ApiError>>>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let token = bearer_token(req).map(str::to_owned);
        Box::pin(async move {
            let state = state.ok_or(ApiError::Unavailable("not configured".into()))?;
            authenticate(&state, token.as_deref()).await
        })
    }
}
