//! `switchyard token --sub ID --role ROLE [--ttl SECS]`: prints a signed HS256 token.

use crate::config::{SignerArgs, TokenArgs, secret_path};
use switchyard_auth::{Issuer, secret};
use switchyard_protocol::Role;
use switchyard_protocol::room::is_valid_id;

/// Signs the token `args` describe, with JWT_SECRET or the embedded per-installation secret.
pub fn make(args: &TokenArgs) -> Result<String, String> {
    sign(&args.signer, &args.sub, args.role, args.ttl)
}

/// Signs a token for `sub` with `role`.
pub fn sign(args: &SignerArgs, sub: &str, role: Role, ttl: u64) -> Result<String, String> {
    if !is_valid_id(sub) {
        return Err("--sub must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'".into());
    }
    let secret = match &args.jwt_secret {
        Some(s) => s.clone(),
        None => {
            let path = secret_path(&args.database_url);
            secret::load(&path).map_err(|e| {
                format!(
                    "no JWT_SECRET and no embedded secret at {} ({e}); run `switchyard` once to create it, or set JWT_SECRET",
                    path.display()
                )
            })?
        }
    };
    let issuer = Issuer::new(
        secret.as_bytes(),
        args.jwt_issuer.clone(),
        args.jwt_audience.clone(),
    );
    Ok(issuer.issue(sub, role, ttl))
}
