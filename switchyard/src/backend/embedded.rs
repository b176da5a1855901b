//! The embedded mode's backend: direct calls into the store of the same process.

use async_trait::async_trait;
use switchyard_gateway::backend::{Backend, BackendError, ChatError, Read, Sender};
use switchyard_protocol::chat::{ChatMessage, ChatState, NewMessage};
use switchyard_protocol::{Location, Order, Product, Revenue};
use switchyard_store::{Actor, Store, StoreError};

/// Reads and writes the database in-process: always fresh, so [`Read`] makes no difference.
pub struct Embedded {
    pub store: Store,
}

fn failed(err: StoreError) -> BackendError {
    BackendError(err.to_string())
}

/// The store's refusal of a chat op, as the gateway answers it.
fn refused(err: StoreError) -> ChatError {
    match err {
        StoreError::NotFound => ChatError::NotMember,
        StoreError::Forbidden(why) => ChatError::Forbidden(why),
        StoreError::Invalid(why) => ChatError::Invalid(why),
        other => ChatError::Failed(failed(other)),
    }
}

fn actor(from: Sender<'_>) -> Actor<'_> {
    Actor {
        sub: from.sub,
        role: from.role,
    }
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

    async fn send_message(
        &self,
        order: i64,
        from: Sender<'_>,
        message: &NewMessage,
    ) -> Result<ChatMessage, ChatError> {
        let sent = self
            .store
            .send_message_published(order, actor(from), message)
            .await
            .map_err(refused)?;
        Ok(sent.message)
    }

    async fn mark_read(
        &self,
        order: i64,
        from: Sender<'_>,
        message_id: i64,
    ) -> Result<(), ChatError> {
        self.store
            .mark_read(order, actor(from), message_id)
            .await
            .map_err(refused)?;
        Ok(())
    }

    async fn chat_state(&self, order: i64, sub: &str) -> Result<ChatState, BackendError> {
        self.store.chat_state(order, sub).await.map_err(failed)
    }
}
