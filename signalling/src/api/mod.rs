//! The REST API and the WebSocket endpoint: thin handlers over the room
//! service, which enforces every permission.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use crate::model::{now_ms, Permissions};
use crate::room::{Caller, CreateRoom, UpdateParticipant};
use crate::state::AppState;

pub mod error;
pub mod openapi;
pub(crate) mod rate_limit;
pub mod web;

pub use error::{ApiError, ApiResult};

/// The whole HTTP surface: `/v1/...`, `/metrics`, the demo page and SDK (`web`).
pub fn router(state: AppState) -> Router {
    let limited = Router::new()
        .route("/v1/rooms", post(create_room).get(list_rooms))
        .route("/v1/rooms/{room}", get(get_room).delete(delete_room))
        .route("/v1/rooms/{room}/participants", get(list_participants))
        .route(
            "/v1/rooms/{room}/participants/{identity}",
            get(get_participant)
                .delete(remove_participant)
                .patch(update_participant),
        )
        .route(
            "/v1/rooms/{room}/participants/{identity}/tracks/{track_sid}/mute",
            post(mute_track),
        )
        .route("/v1/turn/credentials", post(turn_credentials))
        .route("/v1/rtc", get(rtc))
        .layer(middleware::from_fn_with_state(state.clone(), rate_limit));
    let open = Router::new()
        .route("/v1/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/v1/openapi.json", get(|| async { Json(openapi::document()) }));
    Router::new()
        .merge(limited)
        .merge(open)
        .merge(web::routes(state.clone()))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(state.settings.api.max_body_bytes))
        .with_state(state.clone())
        .merge(crate::metrics::routes(state.metrics.clone()))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track_http,
        ))
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

fn access_token_param(parts: &Parts) -> Option<String> {
    let Query(mut params) = Query::<HashMap<String, String>>::try_from_uri(&parts.uri).ok()?;
    params.remove("access_token")
}

async fn rate_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let key = match bearer(&parts).map(str::to_owned).or_else(|| access_token_param(&parts)) {
        Some(token) => format!("t:{token}"),
        None => match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            Some(ConnectInfo(addr)) => format!("ip:{}", addr.ip()),
            None => "anonymous".to_string(),
        },
    };
    if !state.rate.allow(&key, Instant::now()) {
        return ApiError::rate_limited().into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}

/// The verified caller of a request (`Authorization: Bearer <token>`).
pub struct Authed(pub Caller);

fn verify(state: &AppState, token: Option<&str>) -> ApiResult<Caller> {
    let token = token.filter(|t| !t.is_empty()).ok_or(crate::auth::AuthError::Missing);
    let claims = token
        .and_then(|t| state.keys.verify(t, now_ms() / 1000))
        .inspect_err(|e| state.metrics.auth_failure(e))?;
    Ok(Caller::from(claims))
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        verify(state, bearer(parts)).map(Authed)
    }
}

/// A JSON body whose every failure is an [`ApiError`] (413 past the limit).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &AppState) -> ApiResult<Self> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(format!(
                    "request body exceeds {} bytes",
                    state.settings.api.max_body_bytes
                ))
            } else {
                ApiError::bad_request(e.body_text())
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// Path parameters with an [`ApiError`] rejection.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiPath<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| ApiError::bad_request(e.body_text()))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRoomBody {
    name: String,
    max_participants: Option<u32>,
    empty_timeout_s: Option<u32>,
    metadata: Option<String>,
}

async fn create_room(
    State(s): State<AppState>,
    Authed(caller): Authed,
    ApiJson(body): ApiJson<CreateRoomBody>,
) -> ApiResult<Response> {
    let req = CreateRoom {
        name: body.name,
        max_participants: body.max_participants,
        empty_timeout_s: body.empty_timeout_s,
        metadata: body.metadata,
    };
    Ok(Json(s.rooms.create_room(&caller, req, now_ms()).await?).into_response())
}

async fn list_rooms(State(s): State<AppState>, Authed(caller): Authed) -> ApiResult<Response> {
    Ok(Json(json!({ "rooms": s.rooms.list_rooms(&caller).await? })).into_response())
}

async fn get_room(
    State(s): State<AppState>,
    Authed(caller): Authed,
    ApiPath(room): ApiPath<String>,
) -> ApiResult<Response> {
    Ok(Json(s.rooms.get_room(&caller, &room).await?).into_response())
}

async fn delete_room(
    State(s): State<AppState>,
    Authed(caller): Authed,
    ApiPath(room): ApiPath<String>,
) -> ApiResult<Response> {
    s.rooms.delete_room(&caller, &room, now_ms()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_participants(
    State(s): State<AppState>,
    Authed(caller): Authed,
    ApiPath(room): ApiPath<String>,
) -> ApiResult<Response> {
    Ok(Json(json!({ "participants": s.rooms.list_participants(&caller, &room).await? })).into_response())
}

async fn get_participant(
    State(s): State<AppState>,
    Authed(caller): Authed,
    ApiPath((room, identity)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    Ok(Json(s.rooms.get_participant(&caller, &room, &identity).await?).into_response())
}

async fn remove_participant(
    State(s): State<AppState>,
    Authed(caller): Authed,
    ApiPath((room, identity)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    s.rooms.remove_participant(&caller, &room, &identity, now_ms()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateParticipantBody {
    permissions: Option<Permissions>,
    metadata: Option<String>,
    name: Option<String>,
}

async fn update_participant(
    State(s): State<AppState>,
    Authed(caller): Authed,
    ApiPath((room, identity)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<UpdateParticipantBody>,
) -> ApiResult<Response> {
    let update = UpdateParticipant {
        permissions: body.permissions,
        metadata: body.metadata,
        name: body.name,
    };
    Ok(Json(
        s.rooms
            .update_participant(&caller, &room, &identity, update, now_ms())
            .await?,
    )
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MuteBody {
    muted: bool,
}

async fn mute_track(
    State(s): State<AppState>,
    Authed(caller): Authed,
    ApiPath((room, identity, track_sid)): ApiPath<(String, String, String)>,
    ApiJson(body): ApiJson<MuteBody>,
) -> ApiResult<Response> {
    Ok(Json(
        s.rooms
            .mute_track(&caller, &room, &identity, &track_sid, body.muted)
            .await?,
    )
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TurnBody {
    ttl: u64,
}

async fn turn_credentials(
    State(s): State<AppState>,
    Authed(caller): Authed,
    ApiJson(body): ApiJson<TurnBody>,
) -> ApiResult<Response> {
    let servers = s.rooms.turn_credentials(&caller, body.ttl, now_ms())?;
    Ok(Json(json!({ "iceServers": servers, "ttl": body.ttl })).into_response())
}

/// `GET /v1/rtc?access_token=...`: every refusal that can be known before
/// the upgrade (bad token, no grant, full room) is a plain HTTP error.
async fn rtc(
    State(s): State<AppState>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    req_parts: RtcParts,
) -> ApiResult<Response> {
    let caller = verify(&s, req_parts.token.as_deref())?;
    s.rooms.check_join(&caller).await?;
    let upgrade =
        upgrade.map_err(|e| ApiError::bad_request(format!("WebSocket upgrade required: {}", e.body_text())))?;
    let limits = s.settings.session.clone();
    let rooms = s.rooms.clone();
    let metrics = Arc::clone(&s.metrics);
    Ok(upgrade
        .max_message_size(limits.max_message_bytes.saturating_mul(4))
        .max_frame_size(limits.max_message_bytes.saturating_mul(4))
        .on_upgrade(move |socket| async move {
            metrics.ws_connections.inc();
            metrics.ws_connections_total.inc();
            crate::ws::run_session(socket, rooms, caller, limits).await;
            metrics.ws_connections.dec();
        }))
}

/// The token of a WebSocket request: `access_token` query parameter
/// (browsers cannot set headers on a WebSocket) or a bearer header.
struct RtcParts {
    token: Option<String>,
}

impl FromRequestParts<AppState> for RtcParts {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> ApiResult<Self> {
        Ok(RtcParts {
            token: access_token_param(parts).or_else(|| bearer(parts).map(str::to_owned)),
        })
    }
}
