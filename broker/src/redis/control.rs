//! [`RedisController`]: control messages on one channel every process subscribes to, and
//! the revocation records stored beside them.

use super::{control_channel, script, unavailable};
use crate::revocations::Revocations;
use crate::{BrokerError, Control, Controller, Listen, Listeners};
use async_trait::async_trait;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, PubsubInterface};
use fred::types::scripts::Script;
use std::sync::Arc;

/// Stores a revocation record and announces it, atomically: whoever reads the records after
/// the announcement finds this one. Records are members `"<sub> <at>"` scored by the moment
/// they end; ended ones are dropped first, and the set expires with its last record.
/// KEYS = the records; ARGV = member, end (s), control channel, control message.
const REVOKE_LUA: &str = r#"
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local ttl = tonumber(ARGV[2]) - now
if ttl > 0 and redis.call('TTL', KEYS[1]) < ttl then
  redis.call('EXPIRE', KEYS[1], ttl)
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"#;

/// The revocation records that have not ended: `member, end, member, end, …`.
/// KEYS = the records.
const REVOCATIONS_LUA: &str = r#"
local now = redis.call('TIME')[1]
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
"#;

/// Reads the revocation records stored in Redis into this process's.
#[derive(Clone)]
struct RevocationLoader {
    client: Client,
    script: Arc<Script>,
    key: String,
    records: Arc<Revocations>,
}

impl RevocationLoader {
    /// Loads every record; returns the ones this process did not know, as the control
    /// messages it missed.
    async fn load(&self) -> Result<Vec<Control>, fred::error::Error> {
        let flat: Vec<String> = self
            .script
            .evalsha_with_reload(&self.client, vec![self.key.clone()], Vec::<String>::new())
            .await?;
        let mut news = Vec::new();
        for pair in flat.chunks_exact(2) {
            let Some((sub, at)) = pair[0].split_once(' ') else {
                continue;
            };
            let (Ok(at), Ok(until)) = (at.parse::<u64>(), pair[1].parse::<f64>()) else {
                continue;
            };
            let until = until as u64;
            if self.records.record(sub, at, until) {
                news.push(Control::RevokeUser {
                    sub: sub.to_owned(),
                    at,
                    until,
                });
            }
        }
        Ok(news)
    }
}

/// Redis [`Controller`].
pub struct RedisController {
    client: Client,
    subscriber: SubscriberClient,
    channel: String,
    revoke_script: Script,
    revocations: RevocationLoader,
    listeners: Listeners,
}

impl RedisController {
    /// Subscribes to the control channel, then reads the records other processes stored
    /// before this one started.
    pub(super) async fn connect(
        client: Client,
        subscriber: SubscriberClient,
        prefix: &str,
        records: Arc<Revocations>,
        listeners: Listeners,
    ) -> Result<Arc<RedisController>, BrokerError> {
        let revocations = RevocationLoader {
            client: client.clone(),
            script: Arc::new(script(&client, REVOCATIONS_LUA).await?),
            key: format!("{prefix}revoked"),
            records,
        };
        // Subscribed first, loaded second: a revocation announced in between is then both
        // in the records read and on the channel (recording it twice is harmless), never in
        // neither. (The dispatcher's receiver exists before this subscription, so nothing
        // the channel carries is dropped while it starts.)
        let channel = control_channel(prefix);
        subscriber
            .subscribe(channel.clone())
            .await
            .map_err(unavailable)?;
        revocations.load().await.map_err(unavailable)?;
        Ok(Arc::new(RedisController {
            revoke_script: script(&client, REVOKE_LUA).await?,
            client,
            subscriber,
            channel,
            revocations,
            listeners,
        }))
    }

    /// After the subscriber reconnected: subscribes to the control channel again (retrying
    /// every second, at most RESUME_ATTEMPTS times), then reads the records back
    /// ([`RedisController::catch_up`]) — in that order, as at start.
    pub(super) async fn resume(&self) {
        const RESUME_ATTEMPTS: usize = 60;
        for attempt in 1..=RESUME_ATTEMPTS {
            match self.subscriber.subscribe(self.channel.clone()).await {
                Ok(()) => break,
                Err(err) => {
                    tracing::warn!(%err, attempt, "subscribing to the control channel again failed");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
        self.catch_up().await;
    }

    /// Reads the records back and hands the listeners the revocations announced while the
    /// subscriber was away, as the announcements would have.
    pub(super) async fn catch_up(&self) {
        match self.revocations.load().await {
            Ok(missed) => missed
                .iter()
                .for_each(|control| self.listeners.control(control)),
            Err(err) => tracing::warn!(%err, "could not read revocations back"),
        }
    }
}

#[async_trait]
impl Controller for RedisController {
    async fn broadcast(&self, control: Control) -> Result<(), BrokerError> {
        let payload =
            serde_json::to_string(&control).map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let _: i64 = self
            .client
            .publish(self.channel.clone(), payload)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn revoke_user(&self, sub: &str, at: u64, until: u64) -> Result<(), BrokerError> {
        let control = Control::RevokeUser {
            sub: sub.to_owned(),
            at,
            until,
        };
        let payload =
            serde_json::to_string(&control).map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        let _: i64 = self
            .revoke_script
            .evalsha_with_reload(
                &self.client,
                vec![self.revocations.key.clone()],
                vec![
                    format!("{sub} {at}"),
                    until.to_string(),
                    self.channel.clone(),
                    payload,
                ],
            )
            .await
            .map_err(unavailable)?;
        // Here at once, not only when the announcement comes back through the subscriber.
        self.revocations.records.observe(&control);
        Ok(())
    }

    fn revoked_at(&self, sub: &str) -> Option<u64> {
        self.revocations.records.revoked_at(sub)
    }

    fn listen(&self, listener: Arc<dyn Listen>) {
        self.listeners.attach(listener);
    }

    fn is_ready(&self) -> bool {
        self.client.is_connected() && self.subscriber.is_connected()
    }
}
