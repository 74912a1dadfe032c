//! Request env values sealed at rest.
//!
//! A spawn job's request `env` (values a client passes for one run, e.g. an
//! API key) is stored with the job so that a recovered job can run again.
//! The runtime seals each value before the store sees the job and opens it
//! when an attempt starts, so a store (the SQLite file, the PostgreSQL table)
//! holds only ciphertext; names stay readable. Store-agnostic: a sealed value
//! is a string in the same `StoredRequest.env` map.
//!
//! A sealed value is `tsb-sealed:v1:<digest>.<box>` (base64url, no padding):
//! - `box` = 24-byte random nonce + XChaCha20-Poly1305 ciphertext and tag of
//!   the value, with the job id and the variable's name as associated data
//!   (a sealed value copied into another job or another name does not open);
//! - `digest` = HMAC-SHA256 of the name and the value: the same value gives
//!   the same digest under one key, which is what an idempotent replay is
//!   compared by (nonces make two sealings of one value differ).
//!
//! Both subkeys are derived (HMAC-SHA256) from one 32-byte key the operator
//! controls: `store.key_file`, by default `<sqlite db>.key` beside a SQLite
//! store (created 0600 on first need), required for PostgreSQL when a spawn
//! workflow accepts request env (every node must open what another sealed).
//! Rows stored in clear before sealing existed (no prefix) still read.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::TryRngCore;
use sha2::Sha256;
use tsbridge_proto::JobId;

use crate::config::StoreConfig;
use crate::store::StoredRequest;

/// What a sealed value starts with.
pub const SEALED_PREFIX: &str = "tsb-sealed:v1:";
/// Bytes of a key.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;

/// Sealing or opening request env failed, or its key is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot read the request-env key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the request-env key file {path} must hold {KEY_LEN} bytes (or {} hex digits); it holds {len} bytes",
        KEY_LEN * 2
    )]
    BadKey { path: PathBuf, len: usize },
    #[error(
        "the request-env key file {path} is open to group or others (mode {mode:o}): chmod 600 it"
    )]
    OpenToOthers { path: PathBuf, mode: u32 },
    #[error("cannot create the request-env key file {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no randomness from the operating system")]
    Random,
    #[error("cannot seal a request env value")]
    Seal,
    #[error(
        "the request-env key file {path} is missing, but job {job} holds request env sealed under a key: restore the file (or set store.key_file)"
    )]
    Missing { path: PathBuf, job: JobId },
    #[error(
        "the request env of job {job} ({name}) cannot be opened with the key {key}: wrong key, or the stored row was altered"
    )]
    Open {
        job: JobId,
        name: String,
        key: String,
    },
    #[error(
        "request env cannot be stored: no store.key_file is configured (required with a PostgreSQL store)"
    )]
    NoKey,
}

/// The key material: the AEAD and the digest key, derived from one key.
struct EnvKey {
    aead: XChaCha20Poly1305,
    digest_key: [u8; 32],
}

impl fmt::Debug for EnvKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnvKey([redacted])")
    }
}

/// HMAC-SHA256 over length-prefixed parts. A 32-byte key zero-padded to
/// the block size is the same HMAC key (RFC 2104 pads it so), and makes the
/// keying infallible.
fn hmac(key: &[u8; KEY_LEN], parts: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..KEY_LEN].copy_from_slice(key);
    let mut m = <Hmac<Sha256> as KeyInit>::new(&block.into());
    for p in parts {
        m.update(&(p.len() as u64).to_be_bytes());
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

impl EnvKey {
    fn new(master: &[u8; KEY_LEN]) -> EnvKey {
        let enc = hmac(master, &[b"tsbridge request env v1: encryption"]);
        let digest_key = hmac(master, &[b"tsbridge request env v1: digest"]);
        EnvKey {
            aead: XChaCha20Poly1305::new(&enc.into()),
            digest_key,
        }
    }

    fn aad(job: JobId, name: &str) -> Vec<u8> {
        let mut aad = Vec::with_capacity(64);
        aad.extend_from_slice(b"tsbridge request env v1\0");
        aad.extend_from_slice(job.to_string().as_bytes());
        aad.push(0);
        aad.extend_from_slice(name.as_bytes());
        aad
    }

    fn seal(&self, job: JobId, name: &str, value: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let aad = Self::aad(job, name);
        let ct = self
            .aead
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Seal)?;
        let mut boxed = Vec::with_capacity(NONCE_LEN + ct.len());
        boxed.extend_from_slice(&nonce);
        boxed.extend_from_slice(&ct);
        let digest = hmac(&self.digest_key, &[name.as_bytes(), value.as_bytes()]);
        Ok(format!(
            "{SEALED_PREFIX}{}.{}",
            URL_SAFE_NO_PAD.encode(digest),
            URL_SAFE_NO_PAD.encode(boxed)
        ))
    }

    /// `None`: not a well-formed sealed value, or it does not open.
    fn open(&self, job: JobId, name: &str, sealed: &str) -> Option<String> {
        let (_, boxed) = sealed.strip_prefix(SEALED_PREFIX)?.split_once('.')?;
        let boxed = URL_SAFE_NO_PAD.decode(boxed).ok()?;
        if boxed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ct) = boxed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        let aad = Self::aad(job, name);
        let plain = self
            .aead
            .decrypt(&XNonce::from(nonce), Payload { msg: ct, aad: &aad })
            .ok()?;
        String::from_utf8(plain).ok()
    }
}

/// Where the key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeySource {
    /// A key file; `create`: made (0600, random) when first needed if absent
    /// (a SQLite store: one node). `configured`: named by `store.key_file`
    /// (loaded at start), else the default beside the SQLite file (loaded at
    /// start only if it exists, created when a value is first sealed).
    File {
        path: PathBuf,
        create: bool,
        configured: bool,
    },
    /// An in-memory SQLite store: nothing outlives the process, nor does
    /// the key.
    Ephemeral,
    /// A PostgreSQL store without `store.key_file`: request env cannot be
    /// stored.
    None,
}

/// The runtime's sealer of request env: seals at submit, opens when an
/// attempt starts. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct EnvSealer {
    source: KeySource,
    key: OnceLock<EnvKey>,
}

impl Default for EnvSealer {
    fn default() -> Self {
        EnvSealer::none()
    }
}

/// The default key file of a SQLite store URL (`sqlite:///path/jobs.db`
/// gives `/path/jobs.db.key`); `None` for in-memory and other stores.
pub fn default_key_file(url: &str) -> Option<PathBuf> {
    if url.starts_with("sqlite::memory:") {
        return None;
    }
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split_once('?').map_or(rest, |(p, _)| p);
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    let mut p = PathBuf::from(path).into_os_string();
    p.push(".key");
    Some(PathBuf::from(p))
}

/// Whether the database beside which `key` would live exists.
fn default_db_exists(key: &Path) -> bool {
    key.to_str()
        .and_then(|k| k.strip_suffix(".key"))
        .is_some_and(|db| Path::new(db).is_file())
}

fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

impl EnvSealer {
    /// The sealer a store config asks for. Nothing is read yet: see
    /// [`EnvSealer::load_at_start`].
    pub fn from_config(store: &StoreConfig) -> EnvSealer {
        let source = match (&store.key_file, default_key_file(&store.url)) {
            (Some(path), _) => KeySource::File {
                path: path.clone(),
                create: is_sqlite(&store.url),
                configured: true,
            },
            // Beside the SQLite file the config names, when it is there (the
            // server opens that store before the runtime starts). A runtime
            // given a store opened elsewhere (tests) keeps its key in memory
            // rather than leave a key file beside a database that is not one.
            (None, Some(path)) if default_db_exists(&path) => KeySource::File {
                path,
                create: true,
                configured: false,
            },
            (None, Some(_)) => KeySource::Ephemeral,
            (None, None) if is_sqlite(&store.url) => KeySource::Ephemeral,
            (None, None) => KeySource::None,
        };
        EnvSealer {
            source,
            key: OnceLock::new(),
        }
    }

    /// A sealer without a key: values stored in clear open, sealed ones
    /// do not, and nothing can be sealed.
    pub fn none() -> EnvSealer {
        EnvSealer {
            source: KeySource::None,
            key: OnceLock::new(),
        }
    }

    /// A sealer with this key (tests, tools).
    pub fn with_key(key: &[u8; KEY_LEN]) -> EnvSealer {
        let s = EnvSealer {
            source: KeySource::Ephemeral,
            key: OnceLock::new(),
        };
        let _ = s.key.set(EnvKey::new(key));
        s
    }

    /// At startup: loads a configured key file (creating it for a SQLite
    /// store), or the default one if it exists, so that an unreadable or
    /// malformed key is an error now rather than at the first job.
    pub fn load_at_start(&self) -> Result<(), SealError> {
        match &self.source {
            KeySource::File {
                path, configured, ..
            } if *configured || path.exists() => self.key(true).map(|_| ()),
            _ => Ok(()),
        }
    }

    fn describe(&self) -> String {
        match &self.source {
            KeySource::File { path, .. } => path.display().to_string(),
            KeySource::Ephemeral => "of this process (in-memory store)".to_owned(),
            KeySource::None => "(none configured)".to_owned(),
        }
    }

    /// The key, loaded (or, with `may_create` and a creatable source,
    /// created) on first use.
    fn key(&self, may_create: bool) -> Result<&EnvKey, SealError> {
        if let Some(k) = self.key.get() {
            return Ok(k);
        }
        let master = match &self.source {
            KeySource::File { path, create, .. } => load_key(path, may_create && *create)?,
            KeySource::Ephemeral => random_key()?,
            KeySource::None => return Err(SealError::NoKey),
        };
        Ok(self.key.get_or_init(|| EnvKey::new(&master)))
    }

    /// Seals every value of a job's request env (none: no key is touched).
    pub fn seal_env(
        &self,
        job: JobId,
        env: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, SealError> {
        if env.is_empty() {
            return Ok(env);
        }
        let key = self.key(true)?;
        env.into_iter()
            .map(|(name, value)| {
                let sealed = key.seal(job, &name, &value)?;
                Ok((name, sealed))
            })
            .collect()
    }

    /// Opens a job's stored request env: sealed values are opened, values
    /// stored in clear before sealing existed are taken as they are.
    pub fn open_env(
        &self,
        job: JobId,
        env: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, SealError> {
        if !env.values().any(|v| v.starts_with(SEALED_PREFIX)) {
            return Ok(env.clone());
        }
        let key = match self.key(false) {
            Ok(k) => k,
            Err(SealError::Read { path, source })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(SealError::Missing { path, job });
            }
            Err(e) => return Err(e),
        };
        env.iter()
            .map(|(name, value)| {
                if !value.starts_with(SEALED_PREFIX) {
                    return Ok((name.clone(), value.clone()));
                }
                match key.open(job, name, value) {
                    Some(v) => Ok((name.clone(), v)),
                    None => Err(SealError::Open {
                        job,
                        name: name.clone(),
                        key: self.describe(),
                    }),
                }
            })
            .collect()
    }

    /// Whether a job's stored request env opens (startup check).
    pub fn check(&self, job: JobId, request: &StoredRequest) -> Result<(), SealError> {
        self.open_env(job, &request.env).map(|_| ())
    }
}

/// Whether two stored requests are the same request (an idempotent
/// replay): the same options, and the same env by name and value. Sealed
/// values are compared by their keyed digest; a value stored in clear before
/// sealing existed never equals a sealed one (the replay is a conflict).
pub fn same_request(a: &StoredRequest, b: &StoredRequest) -> bool {
    a.timeout_ms == b.timeout_ms
        && a.memory_bytes == b.memory_bytes
        && a.env.len() == b.env.len()
        && a.env.iter().zip(&b.env).all(|((na, va), (nb, vb))| {
            na == nb
                && match (digest_of(va), digest_of(vb)) {
                    (Some(da), Some(db)) => da == db,
                    (None, None) => va == vb,
                    _ => false,
                }
        })
}

fn digest_of(v: &str) -> Option<&str> {
    v.strip_prefix(SEALED_PREFIX)?
        .split_once('.')
        .map(|(d, _)| d)
}

fn random_key() -> Result<[u8; KEY_LEN], SealError> {
    let mut k = [0u8; KEY_LEN];
    rand::rngs::OsRng
        .try_fill_bytes(&mut k)
        .map_err(|_| SealError::Random)?;
    Ok(k)
}

/// Reads a key file: 32 raw bytes, or 64 hex digits (a trailing newline
/// allowed). It must not be open to group or others. With `create`, an
/// absent file is created (0600, 32 random bytes; a concurrent creator's
/// file wins).
fn load_key(path: &Path, create: bool) -> Result<[u8; KEY_LEN], SealError> {
    if create {
        match create_key(path) {
            Ok(k) => return Ok(k),
            Err(SealError::Create { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let read = |source| SealError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SealError::OpenToOthers {
            path: path.to_path_buf(),
            mode,
        });
    }
    let bytes = std::fs::read(path).map_err(read)?;
    parse_key(&bytes).ok_or(SealError::BadKey {
        path: path.to_path_buf(),
        len: bytes.len(),
    })
}

fn parse_key(bytes: &[u8]) -> Option<[u8; KEY_LEN]> {
    if let Ok(k) = <[u8; KEY_LEN]>::try_from(bytes) {
        return Some(k);
    }
    let text = std::str::from_utf8(bytes).ok()?.trim_end();
    if text.len() != KEY_LEN * 2 {
        return None;
    }
    let mut k = [0u8; KEY_LEN];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(k)
}

/// Creates the key file atomically: written and synced under a temporary
/// name, then linked to `path` (which fails if another process or thread
/// made it first: `AlreadyExists`, and its key is read instead), so nobody
/// ever reads a half-written key.
fn create_key(path: &Path) -> Result<[u8; KEY_LEN], SealError> {
    let create = |source| SealError::Create {
        path: path.to_path_buf(),
        source,
    };
    let key = random_key()?;
    let mut suffix = [0u8; 8];
    rand::rngs::OsRng
        .try_fill_bytes(&mut suffix)
        .map_err(|_| SealError::Random)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", u64::from_le_bytes(suffix)));
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&key)?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    written.map_err(create)?;
    tracing::info!(path = %path.display(), "created the request-env key file");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn sealed_values_open_and_hide_the_value() {
        let s = EnvSealer::with_key(&[7; 32]);
        let job = JobId::new();
        let sealed = s
            .seal_env(job, env(&[("API_KEY", "hunter2-secret")]))
            .unwrap();
        assert!(sealed["API_KEY"].starts_with(SEALED_PREFIX));
        assert!(!sealed["API_KEY"].contains("hunter2"));
        assert_eq!(
            s.open_env(job, &sealed).unwrap()["API_KEY"],
            "hunter2-secret"
        );
    }

    #[test]
    fn a_sealed_value_does_not_open_in_another_job_name_or_key() {
        let s = EnvSealer::with_key(&[7; 32]);
        let job = JobId::new();
        let sealed = s.seal_env(job, env(&[("A", "value-of-a")])).unwrap();
        // Copied into another job.
        assert!(matches!(
            s.open_env(JobId::new(), &sealed),
            Err(SealError::Open { .. })
        ));
        // Moved to another name.
        let moved = env(&[("B", &sealed["A"])]);
        assert!(matches!(
            s.open_env(job, &moved),
            Err(SealError::Open { .. })
        ));
        // Another key.
        let other = EnvSealer::with_key(&[8; 32]);
        assert!(matches!(
            other.open_env(job, &sealed),
            Err(SealError::Open { .. })
        ));
    }

    #[test]
    fn values_stored_in_clear_still_read() {
        let s = EnvSealer::from_config(&StoreConfig {
            url: "postgres://x/y".into(),
            key_file: None,
        });
        let old = env(&[("MODE", "fast")]);
        assert_eq!(s.open_env(JobId::new(), &old).unwrap(), old);
        // But nothing can be sealed without a key.
        assert!(matches!(
            s.seal_env(JobId::new(), old),
            Err(SealError::NoKey)
        ));
    }

    #[test]
    fn replays_compare_by_digest() {
        let s = EnvSealer::with_key(&[7; 32]);
        let req = |env| StoredRequest {
            timeout_ms: Some(5),
            memory_bytes: None,
            env,
        };
        let a = req(s.seal_env(JobId::new(), env(&[("K", "v1")])).unwrap());
        let b = req(s.seal_env(JobId::new(), env(&[("K", "v1")])).unwrap());
        let c = req(s.seal_env(JobId::new(), env(&[("K", "v2")])).unwrap());
        assert_ne!(a, b, "nonces make the ciphertexts differ");
        assert!(same_request(&a, &b));
        assert!(!same_request(&a, &c));
        assert!(!same_request(&a, &req(env(&[("K", "v1")]))));
        assert!(same_request(
            &req(env(&[("K", "v1")])),
            &req(env(&[("K", "v1")]))
        ));
    }

    #[test]
    fn key_files_are_created_private_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db.key");
        let k1 = load_key(&path, true).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            load_key(&path, true).unwrap(),
            k1,
            "an existing key is kept"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_key(&path, false),
            Err(SealError::OpenToOthers { .. })
        ));
        let hex = dir.path().join("hex.key");
        std::fs::write(&hex, format!("{}\n", "ab".repeat(32))).unwrap();
        std::fs::set_permissions(&hex, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load_key(&hex, false).unwrap(), [0xab; 32]);
        let short = dir.path().join("short.key");
        std::fs::write(&short, b"short").unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            load_key(&short, false),
            Err(SealError::BadKey { len: 5, .. })
        ));
    }

    #[test]
    fn concurrent_first_uses_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db.key");
        let keys: Vec<[u8; KEY_LEN]> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(|| load_key(&path, true))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap().unwrap())
                .collect()
        });
        assert!(keys.iter().all(|k| *k == keys[0]), "one key for all");
        assert_eq!(std::fs::read(&path).unwrap(), keys[0]);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn the_default_key_file_is_used_only_beside_an_existing_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("jobs.db");
        let cfg = StoreConfig {
            url: format!("sqlite://{}", db.display()),
            key_file: None,
        };
        // No database there (a runtime given a store opened elsewhere).
        assert_eq!(EnvSealer::from_config(&cfg).source, KeySource::Ephemeral);
        std::fs::write(&db, b"").unwrap();
        assert_eq!(
            EnvSealer::from_config(&cfg).source,
            KeySource::File {
                path: dir.path().join("jobs.db.key"),
                create: true,
                configured: false
            }
        );
    }

    #[test]
    fn default_key_files_sit_beside_sqlite_stores() {
        assert_eq!(
            default_key_file("sqlite:///srv/tsb/jobs.db?mode=rwc"),
            Some(PathBuf::from("/srv/tsb/jobs.db.key"))
        );
        assert_eq!(default_key_file("sqlite::memory:"), None);
        assert_eq!(default_key_file("postgres://h/db"), None);
    }
}
