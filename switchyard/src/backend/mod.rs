//! The gateway's [`Backend`](switchyard_gateway::Backend), one per mode:
//!
//! - [`embedded::Embedded`] (`switchyard all`, `demo`): the store, in-process;
//! - [`remote::Remote`] (`switchyard gateway`): room snapshots and positions in the shared state
//!   (Redis), the API's `/internal` routes when that cannot answer — never a database.

pub mod embedded;
pub mod remote;
