-- One row per lease: which process's outbox relay may publish, until when.
-- A single holder keeps events in commit order across API processes.
CREATE TABLE relay_lease (
    name       TEXT PRIMARY KEY,
    holder     TEXT   NOT NULL,
    expires_at BIGINT NOT NULL
);
