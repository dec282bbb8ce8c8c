-- Connections: one tenant each (a GHL location with its source accounts),
-- named, with the values of the variables its profiles declare.
-- `vars` is a JSON object of variable name → sealed value (see
-- src/secrets.rs): names are readable, values are not without
-- MAPPER_SECRET_KEY. `location_id` repeats GHL_LOCATION_ID in clear (it is
-- not a secret) so that a GHL webhook is routed by its `locationId` without
-- opening every row, and so that two connections can never hold the same
-- location (the unique index, also against two concurrent `connection add`).
-- OAuth: the access token and refresh token are sealed; `token_version`
-- grows by one with every stored rotation, so a refresh is committed by
-- compare-and-set and only one replica's rotation wins;
-- `refresh_lease_until` is the short lease of the replica that is
-- refreshing, so the others wait for its result instead of spending the
-- single-use refresh token a second time.
CREATE TABLE connections (
    name TEXT PRIMARY KEY,
    enabled BIGINT NOT NULL DEFAULT 1,
    disabled_reason TEXT,
    location_id TEXT,
    vars TEXT NOT NULL DEFAULT '{}',
    access_token TEXT,
    access_expires_at BIGINT,
    refresh_token TEXT,
    token_version BIGINT NOT NULL DEFAULT 0,
    refresh_lease_until BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX connections_location ON connections (location_id);
