//! The embedded mode's backend: direct calls into the store of the same process.

use async_trait::async_trait;
use switchyard_gateway::backend::{Backend, BackendError, Read};
use switchyard_protocol::{Location, Order, Product, Revenue};
use switchyard_store::Store;

/// Reads and writes the database in-process: always fresh, so [`Read`] makes no difference.
pub struct Embedded {
    pub store: Store,
}

fn failed(err: switchyard_store::StoreError) -> BackendError {
    BackendError(err.to_string())
}

#[async_trait]
impl Backend for Embedded {
    async fn order(&self, id: i64, _read: Read) -> Result<Option<Order>, BackendError> {
        self.store.order(id).await.map_err(failed)
    }

    async fn product(&self, sku: &str) -> Result<Option<Product>, BackendError> {
        self.store.product(sku).await.map_err(failed)
    }

    async fn revenue(&self) -> Result<Revenue, BackendError> {
        self.store.revenue().await.map_err(failed)
    }

    async fn write_positions(&self, batch: &[(i64, Location)]) -> Result<(), BackendError> {
        self.store.record_locations(batch).await.map_err(failed)
    }
}
