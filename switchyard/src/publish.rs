//! `switchyard publish --room R --event E --data JSON [--url URL] [--token T]`: one event
//! through the API's `POST /api/publish`, as any other backend service would send it (with
//! `switchyard-client`).

use crate::config::PublishArgs;
use serde_json::value::RawValue;
use switchyard_client::Rest;
use switchyard_protocol::Role;
use switchyard_protocol::rest::PublishRequest;

/// Sends the event; returns the offset it was given.
pub async fn run(args: &PublishArgs) -> Result<u64, String> {
    let data =
        RawValue::from_string(args.data.clone()).map_err(|e| format!("--data is not JSON: {e}"))?;
    let token = match &args.token {
        Some(t) => t.clone(),
        None => crate::token::sign(&args.signer, "switchyard-cli", Role::Service, 300)?,
    };
    let event = PublishRequest {
        room: args.room.clone(),
        event: args.event.clone(),
        data,
    };
    let published = Rest::new(&args.url, token)
        .publish(&event)
        .await
        .map_err(|e| format!("{}/api/publish: {e}", args.url.trim_end_matches('/')))?;
    Ok(published.offset)
}
