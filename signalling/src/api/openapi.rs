//! The OpenAPI 3.1 document served at `GET /v1/openapi.json`.
use serde_json::{json, Value};

fn err(description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn ok(schema: &str) -> Value {
    json!({ "description": "OK", "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

fn body(schema: &str) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

fn param(name: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } })
}

/// Responses shared by every authenticated operation, plus `extra`.
fn responses(success: (&str, Value), extra: &[(&str, &str)]) -> Value {
    let mut r = json!({
        "401": err("missing, expired or badly signed access token"),
        "403": err("the token lacks the required grant"),
        "429": err("rate limited"),
    });
    r[success.0] = success.1;
    for (code, why) in extra {
        r[*code] = err(why);
    }
    r
}

pub fn document() -> Value {
    let room_404 = ("404", "unknown room");
    let part_404 = ("404", "unknown room or participant");
    let bad = ("400", "malformed body");
    let big = ("413", "body too large");
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "rtc-server control API",
            "version": "1",
            "description": "Rooms, participants and TURN credentials. Authenticate with `Authorization: Bearer <access token>` (JWT HS256). WebSocket signalling: `GET /v1/rtc?access_token=...`, see PROTOCOL.md."
        },
        "security": [{ "bearer": [] }],
        "paths": {
            "/v1/rooms": {
                "post": { "summary": "Create a room (returns the existing room when the name is taken). Grant: room_create.",
                          "requestBody": body("CreateRoom"), "responses": responses(("200", ok("Room")), &[bad, big]) },
                "get": { "summary": "List rooms. Grant: room_list.",
                         "responses": responses(("200", ok("RoomList")), &[]) }
            },
            "/v1/rooms/{room}": {
                "parameters": [param("room")],
                "get": { "summary": "Get a room. Grant: room_list or room_admin.", "responses": responses(("200", ok("Room")), &[room_404]) },
                "delete": { "summary": "Delete a room, disconnecting everyone. Grant: room_admin (or room_create without a room restriction).",
                            "responses": responses(("204", json!({"description": "deleted"})), &[room_404]) }
            },
            "/v1/rooms/{room}/participants": {
                "parameters": [param("room")],
                "get": { "summary": "List participants. Grant: room_admin.", "responses": responses(("200", ok("ParticipantList")), &[room_404]) }
            },
            "/v1/rooms/{room}/participants/{identity}": {
                "parameters": [param("room"), param("identity")],
                "get": { "summary": "Get a participant. Grant: room_admin.", "responses": responses(("200", ok("Participant")), &[part_404]) },
                "delete": { "summary": "Remove (kick) a participant. Grant: room_admin.",
                            "responses": responses(("204", json!({"description": "removed"})), &[part_404]) },
                "patch": { "summary": "Update permissions, metadata or name; applied to the live session at once. Grant: room_admin.",
                           "requestBody": body("UpdateParticipant"), "responses": responses(("200", ok("Participant")), &[bad, part_404, big]) }
            },
            "/v1/rooms/{room}/participants/{identity}/tracks/{track_sid}/mute": {
                "parameters": [param("room"), param("identity"), param("track_sid")],
                "post": { "summary": "Mute or unmute a published track. Grant: room_admin.",
                          "requestBody": body("Mute"), "responses": responses(("200", ok("Track")), &[bad, ("404", "unknown room, participant or track"), big]) }
            },
            "/v1/turn/credentials": {
                "post": { "summary": "ICE servers with fresh TURN REST credentials. Grant: room_admin or a participant's own token (room_join).",
                          "requestBody": body("TurnRequest"), "responses": responses(("200", ok("IceServers")), &[bad, big]) }
            },
            "/v1/rtc": {
                "get": { "summary": "WebSocket signalling (PROTOCOL.md). Grant: room_join with a room.",
                         "parameters": [{ "name": "access_token", "in": "query", "required": true, "schema": { "type": "string" } }],
                         "security": [],
                         "responses": responses(("101", json!({"description": "switching to WebSocket"})), &[("400", "not a WebSocket upgrade"), ("409", "room is full")]) }
            },
            "/v1/healthz": { "get": { "summary": "Liveness.", "security": [], "responses": { "200": { "description": "OK" } } } },
            "/v1/openapi.json": { "get": { "summary": "This document.", "security": [], "responses": { "200": { "description": "OK" } } } },
            "/metrics": { "get": { "summary": "Prometheus metrics.", "security": [], "responses": { "200": { "description": "text exposition", "content": { "text/plain": {} } } } } }
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" } },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "object", "required": ["code", "message"],
                    "properties": { "code": { "type": "string" }, "message": { "type": "string" } } } } },
                "CreateRoom": { "type": "object", "required": ["name"], "additionalProperties": false, "properties": {
                    "name": { "type": "string" }, "max_participants": { "type": "integer", "minimum": 0 },
                    "empty_timeout_s": { "type": "integer", "minimum": 0 }, "metadata": { "type": "string" } } },
                "Room": { "type": "object", "properties": {
                    "sid": { "type": "string" }, "name": { "type": "string" }, "max_participants": { "type": "integer" },
                    "empty_timeout_s": { "type": "integer" }, "metadata": { "type": "string" },
                    "created_at": { "type": "integer", "description": "Unix ms" }, "num_participants": { "type": "integer" } } },
                "RoomList": { "type": "object", "properties": { "rooms": { "type": "array", "items": { "$ref": "#/components/schemas/Room" } } } },
                "Permissions": { "type": "object", "required": ["can_publish", "can_subscribe", "can_publish_data"], "properties": {
                    "can_publish": { "type": "boolean" }, "can_subscribe": { "type": "boolean" }, "can_publish_data": { "type": "boolean" },
                    "can_publish_sources": { "type": "array", "items": { "$ref": "#/components/schemas/TrackSource" } },
                    "hidden": { "type": "boolean" } } },
                "TrackSource": { "type": "string", "enum": ["camera", "microphone", "screen_share", "screen_share_audio", "unknown"] },
                "VideoLayer": { "type": "object", "properties": { "quality": { "type": "string", "enum": ["low", "medium", "high"] },
                    "width": { "type": "integer" }, "height": { "type": "integer" }, "bitrate": { "type": "integer" } } },
                "Track": { "type": "object", "properties": { "sid": { "type": "string" }, "name": { "type": "string" },
                    "kind": { "type": "string", "enum": ["audio", "video"] }, "source": { "$ref": "#/components/schemas/TrackSource" },
                    "muted": { "type": "boolean" }, "layers": { "type": "array", "items": { "$ref": "#/components/schemas/VideoLayer" } },
                    "cid": { "type": "string" } } },
                "Participant": { "type": "object", "properties": { "sid": { "type": "string" }, "identity": { "type": "string" },
                    "name": { "type": "string" }, "metadata": { "type": "string" },
                    "state": { "type": "string", "enum": ["joined", "active", "disconnected"] },
                    "joined_at": { "type": "integer", "description": "Unix ms" },
                    "permissions": { "$ref": "#/components/schemas/Permissions" },
                    "tracks": { "type": "array", "items": { "$ref": "#/components/schemas/Track" } } } },
                "ParticipantList": { "type": "object", "properties": { "participants": { "type": "array", "items": { "$ref": "#/components/schemas/Participant" } } } },
                "UpdateParticipant": { "type": "object", "additionalProperties": false, "properties": {
                    "permissions": { "$ref": "#/components/schemas/Permissions" }, "metadata": { "type": "string" }, "name": { "type": "string" } } },
                "Mute": { "type": "object", "required": ["muted"], "additionalProperties": false, "properties": { "muted": { "type": "boolean" } } },
                "TurnRequest": { "type": "object", "required": ["ttl"], "additionalProperties": false,
                    "properties": { "ttl": { "type": "integer", "minimum": 1, "maximum": 86400 } } },
                "IceServers": { "type": "object", "properties": { "ttl": { "type": "integer" }, "iceServers": { "type": "array", "items": {
                    "type": "object", "required": ["urls"], "properties": { "urls": { "type": "array", "items": { "type": "string" } },
                    "username": { "type": "string" }, "credential": { "type": "string" } } } } } }
            }
        }
    })
}
