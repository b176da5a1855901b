//! `switchyard publish --room R --event E --data JSON [--url URL] [--token T]`: one event
//! through the API's `POST /api/publish`, as any other backend service would send it.

use crate::config::PublishArgs;
use switchyard_protocol::Role;

/// Sends the event; returns the offset it was given.
pub async fn run(args: &PublishArgs) -> Result<u64, String> {
    let data: serde_json::Value =
        serde_json::from_str(&args.data).map_err(|e| format!("--data is not JSON: {e}"))?;
    let token = match &args.token {
        Some(t) => t.clone(),
        None => crate::token::sign(&args.signer, "switchyard-cli", Role::Service, 300)?,
    };
    let url = format!("{}/api/publish", args.url.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .post(&url)
        .bearer_auth(token)
        .json(&serde_json::json!({ "room": args.room, "event": args.event, "data": data }))
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|e| format!("{url}: unreadable answer ({status}): {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "{status}: {} — {}",
            body["error"].as_str().unwrap_or("error"),
            body["message"].as_str().unwrap_or("")
        ));
    }
    body["offset"]
        .as_u64()
        .ok_or_else(|| format!("answer without an offset: {body}"))
}
