//! Roles carried in the JWT `role` claim.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Who the caller is. `service` is for server-to-server calls and may not open a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Partner,
    Admin,
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Partner => "partner",
            Role::Admin => "admin",
            Role::Service => "service",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "customer" => Ok(Role::Customer),
            "partner" => Ok(Role::Partner),
            "admin" => Ok(Role::Admin),
            "service" => Ok(Role::Service),
            other => Err(format!(
                "unknown role {other:?} (expected customer, partner, admin or service)"
            )),
        }
    }
}
