-- Every state-changing admin call: who made it, when, what it asked and how it ended.
CREATE TABLE audit_log (
    id      bigserial PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text        NOT NULL,  -- "token:<first 12 hex of its SHA-256>", never the token itself
    method  text        NOT NULL,
    path    text        NOT NULL,
    request jsonb,
    status  integer     NOT NULL,
    result  jsonb
);
CREATE INDEX audit_log_at_idx ON audit_log (at DESC);
