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
//! - `digest` = HMAC-SHA256 of the request's idempotency key (else its job
//!   id), the name and the value: what an idempotent replay is compared by
//!   (nonces make two sealings of one value differ). Bound to the
//!   idempotency key, a digest equals another only within the one job a key
//!   names: it tells a reader of the store nothing about whether two
//!   different jobs carry the same value (an oracle for guessed values
//!   submitted through the API, when it was the name and value alone).
//!
//! Subkeys are derived (HMAC-SHA256) from one 32-byte key the operator
//! controls: `store.key_file`, by default `<sqlite db>.key` beside a SQLite
//! store (created 0600 on first need), required for PostgreSQL when a spawn
//! workflow accepts request env (every node must open what another sealed).
//!
//! The store records the key's **fingerprint** (an HMAC of a fixed label
//! under a subkey of its own: neither the key nor a plain hash of it) the
//! first time a key is used with it. At every start the runtime compares:
//! another key (one node of a cluster started with the wrong file), or no
//! key file where the store holds a fingerprint (a deleted default key file),
//! refuses the start with a typed error instead of failing every job with
//! env, or sealing new ones under a fresh key. Once the store holds a
//! fingerprint, a value stored without the sealed prefix is refused (its job
//! fails): someone with write access to the database could otherwise inject
//! env. Values stored in clear before this store first used a key (by a
//! version without sealing) still read until then.
//!
//! Key material (the key read from the file, the subkeys, the AEAD key) is
//! zeroized when dropped; the key file is read, checked and created off the
//! async runtime (`spawn_blocking`).

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::TryRngCore;
use sha2::Sha256;
use tsbridge_proto::{JobId, JobState};
use zeroize::{Zeroize, Zeroizing};

use crate::config::StoreConfig;
use crate::errors::StoreError;
use crate::store::{JobStore, ListFilter, StoredRequest};

/// What a sealed value starts with.
pub const SEALED_PREFIX: &str = "tsb-sealed:v1:";
/// Bytes of a key.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;

/// The fingerprint of a request-env key, as the store records it: base64url
/// of HMAC-SHA256 over a fixed label under a subkey derived for this alone.
/// It names a key without revealing it (nor anything a key could be tested
/// against offline short of the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(String);

impl Fingerprint {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What shows that a store's request env is sealed under some key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// The store recorded this key fingerprint.
    Fingerprint(Fingerprint),
    /// A queued or running job holds sealed values (a store written before
    /// fingerprints were recorded).
    Job(JobId),
}

impl fmt::Display for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Held::Fingerprint(fp) => write!(
                f,
                "the store holds request env sealed under the key with fingerprint {fp}"
            ),
            Held::Job(job) => write!(f, "job {job} holds request env sealed under a key"),
        }
    }
}

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
    /// The key file is gone but the store's request env is sealed: a new
    /// key would not open it (none is made).
    #[error(
        "the request-env key file {path} is missing, but {held}: restore the file (or set store.key_file to it); no new key is made"
    )]
    Missing { path: PathBuf, held: Held },
    /// A node without a key on a store whose request env is sealed.
    #[error(
        "no store.key_file is configured, but {held}: configure the key file the other nodes use"
    )]
    NoKeyForStore { held: Held },
    /// This node's key is not the one the store recorded.
    #[error(
        "the request-env key {key} (fingerprint {ours}) is not the key of this store (fingerprint {stored}): every node must use the same store.key_file"
    )]
    WrongKey {
        key: String,
        ours: Fingerprint,
        stored: Fingerprint,
    },
    #[error(
        "the request env of job {job} ({name}) cannot be opened with the key {key}: the stored row was altered, or sealed under another key"
    )]
    Open {
        job: JobId,
        name: String,
        key: String,
    },
    /// A value without the sealed prefix in a store that seals: not
    /// written by tsbridge since sealing began.
    #[error(
        "the request env of job {job} ({name}) is stored in clear, but this store seals request env: refused (a row written outside tsbridge, or queued before the store first used a key)"
    )]
    Cleartext { job: JobId, name: String },
    #[error(
        "request env cannot be stored: no store.key_file is configured (required with a PostgreSQL store)"
    )]
    NoKey,
    #[error("cannot read or record the request-env key fingerprint in the store")]
    Store(#[source] StoreError),
    #[error("the request-env key task failed: {0}")]
    Task(String),
}

impl SealError {
    /// What a job that cannot run because of this error is told (its
    /// `error.message`): the variable's name and why, nothing of the key.
    pub fn job_message(&self) -> String {
        match self {
            SealError::Open { name, .. } => format!(
                "the request env value of {name} cannot be opened: the stored row was altered, or sealed under another key"
            ),
            SealError::Cleartext { name, .. } => format!(
                "the request env value of {name} is stored in clear, but this store seals request env: refused (a row written outside tsbridge, or queued before the store first used a key)"
            ),
            _ => "cannot open the job's request env (see the server log)".to_owned(),
        }
    }
}

/// The key material: the AEAD and the digest key, derived from one key,
/// and the key's fingerprint. Zeroized when dropped (the AEAD's key by
/// chacha20poly1305's `zeroize` feature).
struct EnvKey {
    aead: XChaCha20Poly1305,
    digest_key: Zeroizing<[u8; 32]>,
    fingerprint: Fingerprint,
}

impl fmt::Debug for EnvKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EnvKey([redacted], fingerprint {})", self.fingerprint)
    }
}

/// HMAC-SHA256 over length-prefixed parts. A 32-byte key zero-padded to
/// the block size is the same HMAC key (RFC 2104 pads it so), and makes the
/// keying infallible.
fn hmac(key: &[u8; KEY_LEN], parts: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let mut block = Zeroizing::new([0u8; 64]);
    block[..KEY_LEN].copy_from_slice(key);
    let mut array = (*block).into();
    let mut m = <Hmac<Sha256> as KeyInit>::new(&array);
    Zeroize::zeroize(AsMut::<[u8]>::as_mut(&mut array));
    for p in parts {
        m.update(&(p.len() as u64).to_be_bytes());
        m.update(p);
    }
    Zeroizing::new(m.finalize().into_bytes().into())
}

impl EnvKey {
    fn new(master: &[u8; KEY_LEN]) -> EnvKey {
        let enc = hmac(master, &[b"tsbridge request env v1: encryption"]);
        let digest_key = hmac(master, &[b"tsbridge request env v1: digest"]);
        let fp_key = hmac(master, &[b"tsbridge request env v1: fingerprint"]);
        let fp = hmac(&fp_key, &[b"tsbridge request env key fingerprint v1"]);
        let mut array = (*enc).into();
        let aead = XChaCha20Poly1305::new(&array);
        Zeroize::zeroize(AsMut::<[u8]>::as_mut(&mut array));
        EnvKey {
            aead,
            digest_key,
            fingerprint: Fingerprint(URL_SAFE_NO_PAD.encode(*fp)),
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

    /// The replay digest of `name=value` in a request: bound to its
    /// idempotency key (what replays share), else to its job.
    fn digest(&self, job: JobId, idempotency_key: Option<&str>, name: &str, value: &str) -> String {
        let job = job.to_string();
        let (what, context): (&[u8], &[u8]) = match idempotency_key {
            Some(k) => (b"idempotency key", k.as_bytes()),
            None => (b"job", job.as_bytes()),
        };
        let d = hmac(
            &self.digest_key,
            &[what, context, name.as_bytes(), value.as_bytes()],
        );
        URL_SAFE_NO_PAD.encode(*d)
    }

    fn seal(
        &self,
        job: JobId,
        idempotency_key: Option<&str>,
        name: &str,
        value: &str,
    ) -> Result<String, SealError> {
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
        Ok(format!(
            "{SEALED_PREFIX}{}.{}",
            self.digest(job, idempotency_key, name, value),
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
    /// (a SQLite store: one node) and the store holds no fingerprint.
    /// `configured`: named by `store.key_file` (loaded at start), else the
    /// default beside the SQLite file (loaded at start if it exists, created
    /// when a value is first sealed).
    File {
        path: PathBuf,
        create: bool,
        configured: bool,
    },
    /// An in-memory SQLite store: nothing outlives the process, nor does
    /// the key (it records no fingerprint).
    Ephemeral,
    /// A key given in code ([`EnvSealer::with_key`]): checked against and
    /// recorded in the store like a key file's.
    Given,
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
    /// Serializes the first use of a key created when first needed.
    first_use: tokio::sync::Mutex<()>,
    /// The store holds a key fingerprint: a value in clear is refused.
    sealing: AtomicBool,
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

fn is_not_found(e: &SealError) -> bool {
    matches!(e, SealError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

impl EnvSealer {
    fn with_source(source: KeySource) -> EnvSealer {
        EnvSealer {
            source,
            key: OnceLock::new(),
            first_use: tokio::sync::Mutex::new(()),
            sealing: AtomicBool::new(false),
        }
    }

    /// The sealer a store config asks for. Nothing is read yet (it looks
    /// whether the SQLite file exists: call it off the async runtime); see
    /// [`EnvSealer::start`].
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
        EnvSealer::with_source(source)
    }

    /// A sealer without a key: values stored in clear open, sealed ones
    /// do not, and nothing can be sealed.
    pub fn none() -> EnvSealer {
        EnvSealer::with_source(KeySource::None)
    }

    /// A sealer with this key (tests, tools).
    pub fn with_key(key: &[u8; KEY_LEN]) -> EnvSealer {
        let s = EnvSealer::with_source(KeySource::Given);
        let _ = s.key.set(EnvKey::new(key));
        s
    }

    /// The fingerprint of the key loaded, if one is.
    pub fn fingerprint(&self) -> Option<&Fingerprint> {
        self.key.get().map(|k| &k.fingerprint)
    }

    /// Whether values stored in clear are refused (the store holds a key
    /// fingerprint).
    pub fn is_sealing(&self) -> bool {
        self.sealing.load(Ordering::SeqCst)
    }

    /// At startup, before recovery changes anything: loads the key (a
    /// configured key file, creating it for a SQLite store that has no
    /// fingerprint yet; the default one if it exists) off the async
    /// runtime, and checks it against the fingerprint the store recorded,
    /// recording it if there is none. Refused: another key than the store's
    /// ([`SealError::WrongKey`]); no key file, or no key, where the store's
    /// request env is sealed ([`SealError::Missing`],
    /// [`SealError::NoKeyForStore`]; no key is made up then). A default key
    /// file that does not exist yet, on a store that seals nothing, is
    /// created when a value is first sealed.
    pub async fn start(&self, store: &dyn JobStore) -> Result<(), SealError> {
        let stored = store
            .env_key_fingerprint()
            .await
            .map_err(SealError::Store)?
            .map(Fingerprint);
        if stored.is_some() {
            self.sealing.store(true, Ordering::SeqCst);
        }
        match &self.source {
            KeySource::File {
                path,
                create,
                configured,
            } => {
                let may_create = *create && *configured && stored.is_none();
                match load_key_blocking(path.clone(), may_create).await {
                    Ok(master) => self.adopt(store, EnvKey::new(&master)).await,
                    Err(e) if is_not_found(&e) && (stored.is_some() || !*configured) => {
                        let held = match stored {
                            Some(fp) => Some(Held::Fingerprint(fp)),
                            None => sealed_job(store).await?.map(Held::Job),
                        };
                        match held {
                            Some(held) => Err(SealError::Missing {
                                path: path.clone(),
                                held,
                            }),
                            // Made when a value is first sealed.
                            None => Ok(()),
                        }
                    }
                    Err(e) => Err(e),
                }
            }
            KeySource::Given => match self.key.get() {
                Some(k) => {
                    let fp = k.fingerprint.clone();
                    self.check_recorded(store, fp).await
                }
                None => Ok(()),
            },
            KeySource::Ephemeral => {
                let key = EnvKey::new(&*random_key()?);
                match stored {
                    Some(stored) => Err(SealError::WrongKey {
                        key: self.describe(),
                        ours: key.fingerprint.clone(),
                        stored,
                    }),
                    None => {
                        let _ = self.key.set(key);
                        Ok(())
                    }
                }
            }
            KeySource::None => {
                let held = match stored {
                    Some(fp) => Some(Held::Fingerprint(fp)),
                    None => sealed_job(store).await?.map(Held::Job),
                };
                match held {
                    Some(held) => Err(SealError::NoKeyForStore { held }),
                    None => Ok(()),
                }
            }
        }
    }

    /// Records the fingerprint of `key` in the store (or finds it there)
    /// and makes it this sealer's key; another fingerprint recorded first
    /// is a [`SealError::WrongKey`].
    async fn adopt(&self, store: &dyn JobStore, key: EnvKey) -> Result<(), SealError> {
        let fp = key.fingerprint.clone();
        // The first key set wins (`start` runs before anything seals).
        let _ = self.key.set(key);
        self.check_recorded(store, fp).await
    }

    async fn check_recorded(
        &self,
        store: &dyn JobStore,
        ours: Fingerprint,
    ) -> Result<(), SealError> {
        let recorded = store
            .claim_env_key_fingerprint(ours.as_str())
            .await
            .map_err(SealError::Store)?;
        if recorded != ours.as_str() {
            return Err(SealError::WrongKey {
                key: self.describe(),
                ours,
                stored: Fingerprint(recorded),
            });
        }
        self.sealing.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn describe(&self) -> String {
        match &self.source {
            KeySource::File { path, .. } => path.display().to_string(),
            KeySource::Ephemeral => "of this process (in-memory store)".to_owned(),
            KeySource::Given => "given to the runtime".to_owned(),
            KeySource::None => "(none configured)".to_owned(),
        }
    }

    /// The key to seal with: the one loaded at start, else (a default key
    /// file absent at start) the file read or created now, off the async
    /// runtime, and its fingerprint recorded, once.
    async fn key_for_sealing(&self, store: &dyn JobStore) -> Result<&EnvKey, SealError> {
        if let Some(k) = self.key.get() {
            return Ok(k);
        }
        let _first = self.first_use.lock().await;
        if let Some(k) = self.key.get() {
            return Ok(k);
        }
        match &self.source {
            KeySource::File { path, create, .. } => {
                let stored = store
                    .env_key_fingerprint()
                    .await
                    .map_err(SealError::Store)?;
                let master =
                    match load_key_blocking(path.clone(), *create && stored.is_none()).await {
                        Ok(m) => m,
                        Err(e) if is_not_found(&e) => {
                            return Err(match stored {
                                Some(fp) => SealError::Missing {
                                    path: path.clone(),
                                    held: Held::Fingerprint(Fingerprint(fp)),
                                },
                                None => e,
                            });
                        }
                        Err(e) => return Err(e),
                    };
                self.adopt(store, EnvKey::new(&master)).await?;
            }
            // Not started (tests): a key of this process.
            KeySource::Ephemeral => {
                let _ = self.key.set(EnvKey::new(&*random_key()?));
            }
            KeySource::Given | KeySource::None => return Err(SealError::NoKey),
        }
        self.key.get().ok_or(SealError::NoKey)
    }

    /// Seals every value of a job's request env (none: no key is touched),
    /// loading or creating the key first if it is not yet (see
    /// [`EnvSealer::start`]). `idempotency_key`: the request's, which the
    /// replay digests are bound to.
    pub async fn seal_env(
        &self,
        store: &dyn JobStore,
        job: JobId,
        idempotency_key: Option<&str>,
        env: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, SealError> {
        if env.is_empty() {
            return Ok(env);
        }
        self.key_for_sealing(store).await?;
        self.seal_env_now(job, idempotency_key, env)
    }

    /// [`EnvSealer::seal_env`] with the key already loaded
    /// ([`SealError::NoKey`] if it is not).
    pub fn seal_env_now(
        &self,
        job: JobId,
        idempotency_key: Option<&str>,
        env: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, SealError> {
        if env.is_empty() {
            return Ok(env);
        }
        let key = self.key.get().ok_or(SealError::NoKey)?;
        env.into_iter()
            .map(|(name, value)| {
                let sealed = key.seal(job, idempotency_key, &name, &value)?;
                Ok((name, sealed))
            })
            .collect()
    }

    /// Opens a job's stored request env with the key loaded (no file is
    /// read here). A value that does not open is [`SealError::Open`]; a
    /// value stored in clear is taken as it is only while the store has
    /// never recorded a key ([`SealError::Cleartext`] after).
    pub fn open_env(
        &self,
        job: JobId,
        env: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, SealError> {
        let sealing = self.is_sealing();
        env.iter()
            .map(|(name, value)| {
                if !value.starts_with(SEALED_PREFIX) {
                    if sealing {
                        return Err(SealError::Cleartext {
                            job,
                            name: name.clone(),
                        });
                    }
                    return Ok((name.clone(), value.clone()));
                }
                match self.key.get().and_then(|k| k.open(job, name, value)) {
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
}

/// A queued or running job that holds sealed request env, if any (a store
/// written before key fingerprints were recorded). Read only.
async fn sealed_job(store: &dyn JobStore) -> Result<Option<JobId>, SealError> {
    let sealed = |r: &StoredRequest| r.env.values().any(|v| v.starts_with(SEALED_PREFIX));
    let queued = store.queued_jobs().await.map_err(SealError::Store)?;
    if let Some(j) = queued.iter().find(|j| sealed(&j.request)) {
        return Ok(Some(j.id));
    }
    let mut before = None;
    loop {
        let page = store
            .list_jobs(&ListFilter {
                state: Some(JobState::Running),
                workflow: None,
                limit: 500,
                before,
            })
            .await
            .map_err(SealError::Store)?;
        if let Some(j) = page.jobs.iter().find(|j| sealed(&j.request)) {
            return Ok(Some(j.id));
        }
        match (page.next_cursor, page.jobs.last()) {
            (Some(_), Some(last)) => before = Some(last.id),
            _ => return Ok(None),
        }
    }
}

/// Whether two stored requests are the same request (an idempotent
/// replay): the same options, and the same env by name and value. Sealed
/// values are compared by their keyed digest (bound to the idempotency
/// key); a value stored in clear before sealing existed never equals a
/// sealed one (the replay is a conflict).
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

fn random_key() -> Result<Zeroizing<[u8; KEY_LEN]>, SealError> {
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    rand::rngs::OsRng
        .try_fill_bytes(&mut *k)
        .map_err(|_| SealError::Random)?;
    Ok(k)
}

/// [`load_key`] on a blocking thread (file reads, the mode check, and a
/// creation's fsync and link stay off the async runtime's threads).
async fn load_key_blocking(
    path: PathBuf,
    create: bool,
) -> Result<Zeroizing<[u8; KEY_LEN]>, SealError> {
    tokio::task::spawn_blocking(move || load_key(&path, create))
        .await
        .map_err(|e| SealError::Task(e.to_string()))?
}

/// Reads a key file: 32 raw bytes, or 64 hex digits (a trailing newline
/// allowed). It must not be open to group or others. With `create`, an
/// absent file is created (0600, 32 random bytes; a concurrent creator's
/// file wins). Blocking.
fn load_key(path: &Path, create: bool) -> Result<Zeroizing<[u8; KEY_LEN]>, SealError> {
    if create && !path.exists() {
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
    let bytes = Zeroizing::new(std::fs::read(path).map_err(read)?);
    parse_key(&bytes).ok_or(SealError::BadKey {
        path: path.to_path_buf(),
        len: bytes.len(),
    })
}

fn parse_key(bytes: &[u8]) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    if bytes.len() == KEY_LEN {
        k.copy_from_slice(bytes);
        return Some(k);
    }
    let text = std::str::from_utf8(bytes).ok()?.trim_end();
    if text.len() != KEY_LEN * 2 {
        return None;
    }
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(k)
}

/// Creates the key file atomically: written and synced under a temporary
/// name, then linked to `path` (which fails if another process or thread
/// made it first: `AlreadyExists`, and its key is read instead), so nobody
/// ever reads a half-written key. Blocking.
fn create_key(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, SealError> {
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
        f.write_all(&*key)?;
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
    use crate::test_util::env;
    use sha2::Digest;

    #[test]
    fn sealed_values_open_and_hide_the_value() {
        let s = EnvSealer::with_key(&[7; 32]);
        let job = JobId::new();
        let sealed = s
            .seal_env_now(job, None, env(&[("API_KEY", "hunter2-secret")]))
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
        let sealed = s
            .seal_env_now(job, None, env(&[("A", "value-of-a")]))
            .unwrap();
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
    fn values_stored_in_clear_read_only_while_nothing_is_sealed() {
        let s = EnvSealer::from_config(&StoreConfig {
            url: "postgres://x/y".into(),
            key_file: None,
            wal_restart: None,
        });
        let old = env(&[("MODE", "fast")]);
        assert_eq!(s.open_env(JobId::new(), &old).unwrap(), old);
        // But nothing can be sealed without a key.
        assert!(matches!(
            s.seal_env_now(JobId::new(), None, old.clone()),
            Err(SealError::NoKey)
        ));
        // A store that records a key fingerprint seals: a value in clear
        // there was not written by tsbridge since, and is refused.
        let s = EnvSealer::with_key(&[7; 32]);
        s.sealing.store(true, Ordering::SeqCst);
        let job = JobId::new();
        let mut mixed = s.seal_env_now(job, None, env(&[("A", "a")])).unwrap();
        mixed.insert("NODE_OPTIONS".into(), "--require /tmp/evil.js".into());
        match s.open_env(job, &mixed) {
            Err(e @ SealError::Cleartext { .. }) => {
                assert!(e.job_message().contains("NODE_OPTIONS"), "{e}");
                assert!(!e.job_message().contains("evil"), "{e}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn replays_compare_by_a_digest_bound_to_the_idempotency_key() {
        let s = EnvSealer::with_key(&[7; 32]);
        let req = |env| StoredRequest {
            timeout_ms: Some(5),
            memory_bytes: None,
            env,
        };
        let seal = |key: Option<&str>, value: &str| {
            req(s
                .seal_env_now(JobId::new(), key, env(&[("K", value)]))
                .unwrap())
        };
        let a = seal(Some("replay-1"), "v1");
        let b = seal(Some("replay-1"), "v1");
        let c = seal(Some("replay-1"), "v2");
        assert_ne!(a, b, "nonces make the ciphertexts differ");
        assert!(same_request(&a, &b));
        assert!(!same_request(&a, &c));
        assert!(!same_request(&a, &req(env(&[("K", "v1")]))));
        assert!(same_request(
            &req(env(&[("K", "v1")])),
            &req(env(&[("K", "v1")]))
        ));
        // One value in two different jobs: the digests differ, so a reader
        // of the store cannot tell that two jobs carry the same value (nor
        // test a guessed value submitted in a job of its own).
        let digest = |r: &StoredRequest| digest_of(&r.env["K"]).map(str::to_owned);
        assert_ne!(digest(&seal(None, "v1")), digest(&seal(None, "v1")));
        assert_ne!(digest(&a), digest(&seal(Some("replay-2"), "v1")));
        assert_ne!(digest(&a), digest(&seal(None, "v1")));
    }

    #[test]
    fn a_fingerprint_names_a_key_without_being_it_or_its_hash() {
        let key = [7u8; 32];
        let fp = EnvKey::new(&key).fingerprint;
        assert_eq!(fp, EnvKey::new(&key).fingerprint, "stable");
        assert_ne!(fp, EnvKey::new(&[8; 32]).fingerprint);
        assert_ne!(fp.as_str(), URL_SAFE_NO_PAD.encode(key));
        assert_ne!(
            fp.as_str(),
            URL_SAFE_NO_PAD.encode(Sha256::digest(key).as_slice())
        );
        assert!(!format!("{:?}", EnvKey::new(&key)).contains("BwcH"));
    }

    #[test]
    fn key_files_are_created_private_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db.key");
        let k1 = load_key(&path, true).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            *load_key(&path, true).unwrap(),
            *k1,
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
        assert_eq!(*load_key(&hex, false).unwrap(), [0xab; 32]);
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
                .map(|h| *h.join().unwrap().unwrap())
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
            wal_restart: None,
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
