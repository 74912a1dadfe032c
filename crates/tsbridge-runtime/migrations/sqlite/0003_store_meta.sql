-- Facts about the store itself, one row each: `env_key_fingerprint`, the
-- fingerprint of the key request env is sealed under (sealed.rs), recorded
-- the first time a key is used with this store and compared at every start.
CREATE TABLE store_meta (
    name  TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;
