-- Facts about the store itself, one row each: `env_key_fingerprint`, the
-- fingerprint of the key request env is sealed under (sealed.rs), recorded
-- by the first node that uses a key with this store and compared by every
-- node at its start.
CREATE TABLE store_meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
