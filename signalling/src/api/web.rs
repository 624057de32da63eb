//! The browser side, served by the server itself: the demo page at `/`, the
//! SDK at `/sdk/rtc.js` (an ES module, no build step) with its TypeScript
//! declarations at `/sdk/rtc.d.ts`, and, in development mode only, the
//! demo's token endpoint `POST /v1/dev/token`.
//!
//! The files are compiled into the binary (`include_str!`), so the server
//! serves them from wherever it runs.
use std::time::Duration;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiJson, ApiResult};
use crate::auth::{mint, now_unix, Grants, TokenRequest};
use crate::config::DEV_KEY_NAME;
use crate::state::AppState;

const INDEX_HTML: &str = include_str!("../../web/index.html");
const DEMO_JS: &str = include_str!("../../web/demo.js");
const DEMO_CSS: &str = include_str!("../../web/demo.css");
const SDK_JS: &str = include_str!("../../web/sdk/rtc.js");
const SDK_DTS: &str = include_str!("../../web/sdk/rtc.d.ts");

/// Lifetime of a demo token: a long call, not a long-lived credential.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(6 * 3600);

/// The routes of the browser side; merged into [`super::router`].
pub fn routes(state: AppState) -> Router<AppState> {
    // The token endpoint needs no token, so it is rate limited by address
    // like every other unauthenticated call.
    let dev = Router::new()
        .route("/v1/dev/token", post(dev_token))
        .layer(middleware::from_fn_with_state(state, super::rate_limit));
    Router::new()
        .route("/", get(|| async { file("text/html; charset=utf-8", INDEX_HTML) }))
        .route(
            "/demo.js",
            get(|| async { file("text/javascript; charset=utf-8", DEMO_JS) }),
        )
        .route("/demo.css", get(|| async { file("text/css; charset=utf-8", DEMO_CSS) }))
        .route("/sdk/rtc.js", get(sdk_js))
        .route(
            "/sdk/rtc.d.ts",
            get(|| async { file("application/typescript; charset=utf-8", SDK_DTS) }),
        )
        .merge(dev)
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Revalidate every time: the files change with the binary, and
            // a stale SDK against a newer server is a confusing bug.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn sdk_js() -> Response {
    let mut response = file("text/javascript; charset=utf-8", SDK_JS);
    // Deno and other URL-importing tools find the declarations this way.
    response
        .headers_mut()
        .insert("x-typescript-types", HeaderValue::from_static("/sdk/rtc.d.ts"));
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevTokenBody {
    room: String,
    identity: String,
    #[serde(default)]
    name: String,
}

/// `POST /v1/dev/token {room, identity, name}` -> `{token}`: a participant
/// token for the demo page, signed with the generated development key. Only
/// in development mode (no configured API keys); otherwise the endpoint does
/// not exist (404), so a production server never hands out tokens.
async fn dev_token(
    axum::extract::State(s): axum::extract::State<AppState>,
    ApiJson(body): ApiJson<DevTokenBody>,
) -> ApiResult<Response> {
    let secret = match s.keys.secret(DEV_KEY_NAME) {
        Some(secret) if s.settings.dev_mode => secret,
        _ => return Err(ApiError::not_found("no such endpoint")),
    };
    check_name("room", &body.room)?;
    check_name("identity", &body.identity)?;
    let request = TokenRequest {
        identity: body.identity,
        name: body.name,
        metadata: String::new(),
        ttl: DEV_TOKEN_TTL,
        grants: Grants {
            room: Some(body.room),
            room_join: true,
            ..Default::default()
        },
    };
    let token = mint(DEV_KEY_NAME, secret, &request, now_unix()).map_err(ApiError::from)?;
    Ok(Json(json!({ "token": token })).into_response())
}

/// The room service's rule for names, checked here so a bad name is a 400
/// now rather than a refused WebSocket later.
fn check_name(what: &str, name: &str) -> ApiResult<()> {
    if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control() || c == '/') {
        return Err(ApiError::bad_request(format!(
            "{what} must be 1 to 128 characters without '/' or control characters"
        )));
    }
    Ok(())
}
