-- What the relay does with an outbox row: 'event' publishes it into its room; 'snapshot'
-- replaces the room's snapshot in the shared state (Redis) before the events of the same commit
-- go out, so gateways answer subscribes without a database; 'revoke' ends a user's membership
-- of the room on every gateway (data: {"sub", "reason"}).
ALTER TABLE outbox ADD COLUMN kind TEXT NOT NULL DEFAULT 'event';
