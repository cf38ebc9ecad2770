//! What a lane does with the items of one attempt: post them to respond.io, or send one
//! through the provider.

use std::sync::Arc;

use async_trait::async_trait;

use crate::providers::{Provider, SendError, SendRequest};
use crate::respondio::client::RespondIoClient;
use crate::respondio::wire::{Contact, Event, Message};
use crate::store::Item;

#[async_trait]
pub trait Deliverer: Send + Sync {
    /// How many head items of this queue one attempt may carry.
    fn batch_limit(&self, qkey: &str) -> usize;
    /// Delivers the items; `Ok(provider id)` on success.
    async fn deliver(&self, items: &[Item]) -> Result<Option<String>, SendError>;
}

/// Toward respond.io: consecutive events of one contact share one webhook call.
pub struct ToRespondIo {
    pub client: RespondIoClient,
    pub max_events_per_call: usize,
}

#[async_trait]
impl Deliverer for ToRespondIo {
    fn batch_limit(&self, qkey: &str) -> usize {
        if qkey.starts_with("c:") {
            self.max_events_per_call
        } else {
            1
        }
    }

    async fn deliver(&self, items: &[Item]) -> Result<Option<String>, SendError> {
        let Some(first) = items.first() else {
            return Ok(None);
        };
        let events = items
            .iter()
            .map(|i| serde_json::from_str::<Event>(&i.payload))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SendError::Permanent(format!("stored event is unreadable: {e}")))?;
        // The newest profile we have for this contact rides along (used when respond.io
        // creates the contact).
        let contact: Option<Contact> = items
            .iter()
            .rev()
            .find_map(|i| i.contact_json.as_deref())
            .and_then(|j| serde_json::from_str(j).ok());
        self.client
            .post(&first.contact, &events, contact.as_ref())
            .await
            .map(|()| None)
    }
}

/// Toward the provider: one message per send.
pub struct ToProvider {
    pub provider: Arc<dyn Provider>,
}

#[async_trait]
impl Deliverer for ToProvider {
    fn batch_limit(&self, _qkey: &str) -> usize {
        1
    }

    async fn deliver(&self, items: &[Item]) -> Result<Option<String>, SendError> {
        let Some(item) = items.first() else {
            return Ok(None);
        };
        let message: Message = serde_json::from_str(&item.payload)
            .map_err(|e| SendError::Permanent(format!("stored message is unreadable: {e}")))?;
        let accepted = self
            .provider
            .send(SendRequest {
                mid: &item.mid,
                contact_id: &item.contact,
                message: &message,
            })
            .await?;
        Ok(Some(accepted.provider_id))
    }
}
