//! JWT verification and issuing, shared by the gateway (handshake) and the API (bearer header).
//!
//! # Layout
//! - [`Verifier`]: checks a token and yields a [`Principal`]; built from [`JwtConfig`].
//! - [`Issuer`]: signs HS256 tokens (the `switchyard token` command, the embedded mode's
//!   printed tokens, tests).
//! - [`secret`]: the per-installation secret the embedded mode creates beside its database.
//! - [`bearer`]: pulling a token out of the places a client may put it.

pub mod bearer;
pub mod secret;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};
use switchyard_protocol::{Role, UserId};

/// The claims Switchyard reads. `sub`, `role` and `exp` are required.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before: refused until then (with the leeway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// A string or an array of strings (RFC 7519); jsonwebtoken checks it against JWT_AUDIENCE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
}

/// Who a verified token says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Validated: it always names the user's room.
    pub sub: UserId,
    pub role: Role,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// When the token was issued (`iat`), seconds since the Unix epoch, if it says.
    pub iat: Option<u64>,
}

impl Principal {
    /// The earliest the token can have been issued: its `iat`, or without one, its `exp` less
    /// the longest lifetime a token may have (`max_lifetime`, seconds).
    pub fn issued_no_earlier_than(&self, max_lifetime: u64) -> u64 {
        self.iat
            .unwrap_or_else(|| self.exp.saturating_sub(max_lifetime))
    }
}

/// Why a token was refused; the `Display` text is the `reason` in 401 bodies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("token expired")]
    Expired,
    #[error("invalid signature")]
    BadSignature,
    #[error("algorithm not accepted")]
    BadAlgorithm,
    #[error("invalid issuer")]
    BadIssuer,
    #[error("invalid audience")]
    BadAudience,
    #[error("missing claim: {0}")]
    MissingClaim(String),
    #[error("invalid claim: {0}")]
    BadClaim(String),
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("token lifetime too long")]
    LifetimeTooLong,
    #[error("token revoked")]
    Revoked,
}

/// The key that verifies tokens.
#[derive(Clone)]
pub enum VerifyKey {
    /// HS256 shared secret.
    Secret(Vec<u8>),
    /// RS256 or ES256 public key in PEM form.
    PublicPem { algorithm: Algorithm, pem: Vec<u8> },
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyKey::Secret(_) => f.write_str("Secret(***)"),
            VerifyKey::PublicPem { algorithm, .. } => write!(f, "PublicPem({algorithm:?})"),
        }
    }
}

/// How tokens are checked.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub key: VerifyKey,
    /// When set, `iss` must equal it.
    pub issuer: Option<String>,
    /// When set, `aud` must equal it.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, seconds.
    pub leeway_secs: u64,
    /// The longest a token may still have to live (`exp - now`), seconds; beyond, it is
    /// refused. Also how long a revocation record must be kept: every token it refuses has
    /// expired by then.
    pub max_lifetime_secs: u64,
}

/// Default of [`JwtConfig::max_lifetime_secs`]: 7 days.
pub const DEFAULT_MAX_LIFETIME_SECS: u64 = 7 * 24 * 3600;

/// Asymmetric algorithms accepted with a PEM public key.
pub fn parse_public_algorithm(name: &str) -> Result<Algorithm, String> {
    match name {
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        other => Err(format!(
            "JWT_ALGORITHM {other:?} is not supported (RS256 or ES256)"
        )),
    }
}

/// Verifies tokens. Cheap to share behind an `Arc`.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    max_lifetime_secs: u64,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(config: &JwtConfig) -> Result<Verifier, String> {
        let (key, algorithm) = match &config.key {
            VerifyKey::Secret(secret) => {
                if secret.len() < 16 {
                    return Err("JWT_SECRET must be at least 16 bytes".into());
                }
                (DecodingKey::from_secret(secret), Algorithm::HS256)
            }
            VerifyKey::PublicPem { algorithm, pem } => {
                let key = match algorithm {
                    Algorithm::RS256 => DecodingKey::from_rsa_pem(pem),
                    Algorithm::ES256 => DecodingKey::from_ec_pem(pem),
                    other => return Err(format!("unsupported algorithm {other:?}")),
                }
                .map_err(|e| {
                    format!("JWT_PUBLIC_KEY_FILE is not a valid {algorithm:?} public key: {e}")
                })?;
                (key, *algorithm)
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = config.leeway_secs;
        // Off by default in jsonwebtoken: a token is not valid before its `nbf`.
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &config.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(Verifier {
            key,
            validation,
            max_lifetime_secs: config.max_lifetime_secs,
        })
    }

    /// The longest a token may still have to live, plus the leeway: how long a revocation
    /// record must be kept to outlive every token it refuses.
    pub fn max_lifetime(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.max_lifetime_secs
                .saturating_add(self.validation.leeway),
        )
    }

    /// [`Verifier::verify`], then refuses a token issued no later than the user's last
    /// revocation (`revoked_at`: the revocation record of a `sub`, seconds, if any). A token
    /// issued in the revocation's own second is refused too: `iat` has no finer grain.
    pub fn verify_unrevoked(
        &self,
        token: &str,
        revoked_at: impl FnOnce(&str) -> Option<u64>,
    ) -> Result<Principal, AuthError> {
        let principal = self.verify(token)?;
        if let Some(at) = revoked_at(&principal.sub)
            && principal.issued_no_earlier_than(self.max_lifetime_secs) <= at
        {
            return Err(AuthError::Revoked);
        }
        Ok(principal)
    }

    /// Checks signature, algorithm, expiry (and `nbf`, and an `iat` not in the future, with
    /// the leeway), the lifetime cap, issuer and audience, then the Switchyard claims.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidAlgorithmName
                | ErrorKind::MissingAlgorithm => AuthError::BadAlgorithm,
                ErrorKind::InvalidIssuer => AuthError::BadIssuer,
                ErrorKind::InvalidAudience => AuthError::BadAudience,
                ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
                ErrorKind::InvalidClaimFormat(c) => AuthError::BadClaim(c.clone()),
                _ if names_foreign_algorithm(token) => AuthError::BadAlgorithm,
                _ => AuthError::Malformed,
            },
        )?;
        let claims = data.claims;
        let sub = claims
            .sub
            .ok_or_else(|| AuthError::MissingClaim("sub".into()))?;
        let exp = claims
            .exp
            .ok_or_else(|| AuthError::MissingClaim("exp".into()))?;
        // Saturating: any u64 may arrive, and none may overflow the arithmetic.
        let now = now_secs();
        let leeway = self.validation.leeway;
        if claims
            .iat
            .is_some_and(|iat| iat > now.saturating_add(leeway))
        {
            return Err(AuthError::IssuedInFuture);
        }
        if exp.saturating_sub(now) > self.max_lifetime_secs.saturating_add(leeway) {
            return Err(AuthError::LifetimeTooLong);
        }
        let role = claims
            .role
            .as_deref()
            .ok_or_else(|| AuthError::MissingClaim("role".into()))?;
        let role = Role::from_str(role).map_err(|_| AuthError::BadClaim("role".into()))?;
        let sub = UserId::parse(&sub).map_err(|_| AuthError::BadClaim("sub".into()))?;
        Ok(Principal {
            sub,
            role,
            exp,
            iat: claims.iat,
        })
    }
}

/// True when the token's header parses as JSON with an `alg` jsonwebtoken cannot even name
/// (`none`, `HS1`, …), so the refusal can say "algorithm" rather than "malformed".
fn names_foreign_algorithm(token: &str) -> bool {
    use base64::Engine;
    let Some(header) = token.split('.').next() else {
        return false;
    };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|h| {
            h.get("alg")
                .and_then(|a| a.as_str())
                .map(|a| Algorithm::from_str(a).is_err())
        })
        .unwrap_or(false)
}

/// Signs HS256 tokens with a shared secret.
pub struct Issuer {
    key: EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Issuer {
    pub fn new(secret: &[u8], issuer: Option<String>, audience: Option<String>) -> Issuer {
        Issuer {
            key: EncodingKey::from_secret(secret),
            issuer,
            audience,
        }
    }

    /// A token for `sub` with `role`, valid for `ttl_secs` from now.
    pub fn issue(&self, sub: &str, role: Role, ttl_secs: u64) -> String {
        let now = now_secs();
        let claims = Claims {
            sub: Some(sub.to_owned()),
            role: Some(role.as_str().to_owned()),
            exp: Some(now.saturating_add(ttl_secs)),
            iat: Some(now),
            nbf: None,
            iss: self.issuer.clone(),
            aud: self.audience.clone().map(serde_json::Value::String),
        };
        // HS256 signing of serializable claims cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key).unwrap_or_default()
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn verifier() -> Verifier {
        Verifier::new(&JwtConfig {
            key: VerifyKey::Secret(SECRET.to_vec()),
            issuer: None,
            audience: None,
            leeway_secs: 0,
            max_lifetime_secs: DEFAULT_MAX_LIFETIME_SECS,
        })
        .unwrap()
    }

    #[test]
    fn round_trip() {
        let t = Issuer::new(SECRET, None, None).issue("u1", Role::Customer, 60);
        let p = verifier().verify(&t).unwrap();
        assert_eq!(p.sub, "u1");
        assert_eq!(p.role, Role::Customer);
    }

    #[test]
    fn refusals() {
        let v = verifier();
        assert_eq!(v.verify(""), Err(AuthError::Missing));
        assert_eq!(v.verify("abc"), Err(AuthError::Malformed));
        let other = Issuer::new(b"another-secret-of-enough-length", None, None).issue(
            "u1",
            Role::Admin,
            60,
        );
        assert_eq!(v.verify(&other), Err(AuthError::BadSignature));
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: Some("u1".into()),
                role: Some("admin".into()),
                exp: Some(now_secs() - 120),
                iat: None,
                nbf: None,
                iss: None,
                aud: None,
            },
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(v.verify(&expired), Err(AuthError::Expired));
        let roleless = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: Some("u1".into()),
                role: None,
                exp: Some(now_secs() + 60),
                iat: None,
                nbf: None,
                iss: None,
                aud: None,
            },
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(
            v.verify(&roleless),
            Err(AuthError::MissingClaim("role".into()))
        );
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &Claims {
                sub: Some("u1".into()),
                role: Some("admin".into()),
                exp: Some(now_secs() + 60),
                iat: None,
                nbf: None,
                iss: None,
                aud: None,
            },
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(v.verify(&hs384), Err(AuthError::BadAlgorithm));
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let v = Verifier::new(&JwtConfig {
            key: VerifyKey::Secret(SECRET.to_vec()),
            issuer: Some("switchyard".into()),
            audience: Some("app".into()),
            leeway_secs: 0,
            max_lifetime_secs: DEFAULT_MAX_LIFETIME_SECS,
        })
        .unwrap();
        let good = Issuer::new(SECRET, Some("switchyard".into()), Some("app".into()));
        assert!(v.verify(&good.issue("u1", Role::Admin, 60)).is_ok());
        let bad_iss = Issuer::new(SECRET, Some("evil".into()), Some("app".into()));
        assert_eq!(
            v.verify(&bad_iss.issue("u1", Role::Admin, 60)),
            Err(AuthError::BadIssuer)
        );
        let bad_aud = Issuer::new(SECRET, Some("switchyard".into()), Some("other".into()));
        assert_eq!(
            v.verify(&bad_aud.issue("u1", Role::Admin, 60)),
            Err(AuthError::BadAudience)
        );
    }

    fn signed(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    #[test]
    fn time_claims_are_checked_without_overflow() {
        let v = Verifier::new(&JwtConfig {
            key: VerifyKey::Secret(SECRET.to_vec()),
            issuer: None,
            audience: None,
            leeway_secs: 5,
            max_lifetime_secs: 3600,
        })
        .unwrap();
        let now = now_secs();
        let token = |extra: serde_json::Value| {
            let mut claims = serde_json::json!({"sub":"u1","role":"admin","exp":now + 60});
            claims
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            signed(claims)
        };
        let ok = |t: &str| v.verify(t).map(|_| ());
        assert_eq!(ok(&token(serde_json::json!({"nbf": now + 3}))), Ok(()));
        assert_eq!(
            ok(&token(serde_json::json!({"nbf": now + 3600}))),
            Err(AuthError::NotYetValid)
        );
        assert_eq!(ok(&token(serde_json::json!({"iat": now + 3}))), Ok(()));
        assert_eq!(
            ok(&token(serde_json::json!({"iat": now + 3600}))),
            Err(AuthError::IssuedInFuture)
        );
        assert_eq!(
            ok(&token(serde_json::json!({"iat": u64::MAX}))),
            Err(AuthError::IssuedInFuture)
        );
        assert_eq!(ok(&token(serde_json::json!({"exp": now + 3600}))), Ok(()));
        for exp in [now + 3600 + 60, u64::MAX] {
            assert_eq!(
                ok(&token(serde_json::json!({ "exp": exp }))),
                Err(AuthError::LifetimeTooLong)
            );
        }
    }

    #[test]
    fn revocation_refuses_tokens_issued_up_to_it() {
        let v = verifier();
        let now = now_secs();
        let issued = |iat: u64| {
            signed(serde_json::json!({"sub":"u1","role":"admin","exp":now + 60,"iat":iat}))
        };
        let revoked = |_: &str| Some(now - 5);
        for refused in [now - 10, now - 5] {
            assert_eq!(
                v.verify_unrevoked(&issued(refused), revoked),
                Err(AuthError::Revoked)
            );
        }
        assert!(v.verify_unrevoked(&issued(now - 4), revoked).is_ok());
        assert!(v.verify_unrevoked(&issued(now - 10), |_| None).is_ok());
        // Without iat, the token may be as old as its exp less the longest lifetime.
        let no_iat = signed(serde_json::json!({"sub":"u1","role":"admin","exp":now + 60}));
        assert_eq!(
            v.verify_unrevoked(&no_iat, revoked),
            Err(AuthError::Revoked)
        );
    }
}
