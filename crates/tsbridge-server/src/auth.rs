//! Bearer-token authentication: the accepted tokens (resolved once at
//! startup), their constant-time check, and the middleware that guards every
//! route but `/healthz`.

use std::collections::HashMap;

use axum::extract::{Query, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::errors::{ApiError, AuthError};
use crate::state::AppState;

/// One accepted token as configured (`server.tokens`).
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// The token itself.
    Literal(String),
    /// `env:NAME`, read at startup.
    Env(String),
    /// `sha256:HEX`: the SHA-256 of the token.
    Sha256([u8; 32]),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Literal(_) => f.write_str("Literal([REDACTED])"),
            TokenSource::Env(n) => write!(f, "Env({n})"),
            TokenSource::Sha256(_) => f.write_str("Sha256(..)"),
        }
    }
}

/// The accepted tokens, kept only as SHA-256 digests. A presented token is
/// hashed and compared with every digest in constant time, so neither its
/// length nor which token matched shows in the timing.
#[derive(Clone, Default)]
pub struct Auth {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("tokens", &self.digests.len())
            .finish()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Auth {
    /// No token configured: every request passes (allowed on loopback only).
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Resolves the configured tokens, reading `env:NAME` from this process's
    /// environment.
    pub fn resolve(sources: &[TokenSource]) -> Result<Self, AuthError> {
        Self::resolve_with(sources, |name| std::env::var(name).ok())
    }

    /// As [`Auth::resolve`], with the environment given by `lookup`.
    pub fn resolve_with(
        sources: &[TokenSource],
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, AuthError> {
        let mut digests = Vec::with_capacity(sources.len());
        for s in sources {
            digests.push(match s {
                TokenSource::Literal(t) if t.is_empty() => return Err(AuthError::EmptyToken),
                TokenSource::Literal(t) => sha256(t.as_bytes()),
                TokenSource::Env(name) => match lookup(name) {
                    Some(v) if !v.is_empty() => sha256(v.as_bytes()),
                    _ => return Err(AuthError::MissingEnv { name: name.clone() }),
                },
                TokenSource::Sha256(d) => *d,
            });
        }
        Ok(Self { digests })
    }

    /// Whether requests must present a token.
    pub fn is_enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Whether `presented` is one of the accepted tokens (constant time).
    pub fn verify(&self, presented: &str) -> bool {
        let d = sha256(presented.as_bytes());
        let mut ok = Choice::from(0);
        for accepted in &self.digests {
            ok |= accepted.ct_eq(&d);
        }
        bool::from(ok)
    }
}

/// Routes a browser reaches without custom headers (EventSource, WebSocket)
/// may pass the token as `?token=`.
fn accepts_query_token(path: &str) -> bool {
    path == "/v1/ws" || (path.starts_with("/v1/jobs/") && path.ends_with("/events"))
}

fn bearer(req: &Request) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn query_token(req: &Request) -> Option<String> {
    let Query(q) = Query::<HashMap<String, String>>::try_from_uri(req.uri()).ok()?;
    q.get("token").cloned()
}

/// Whether `host` (a URI or `Host` header's host, without the port; IPv6
/// with or without brackets) names this machine's loopback.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| {
            ip.is_loopback()
                || matches!(ip, std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()))
        })
}

/// Without tokens (a loopback listener) anything on the machine may call the
/// API, but a web page must not: a page of any site can send a "simple"
/// cross-origin POST (no preflight) to `127.0.0.1`, and a DNS-rebinding page
/// can even read the answers. So a request that names a non-loopback host
/// (`Host`: rebinding) or comes from a page of a non-loopback origin
/// (`Origin`; `null` included: sandboxed frames, `file:`) is refused. Clients
/// that are not browsers (curl, the SDK, the CLI) send no `Origin` and a
/// loopback `Host`. With tokens this check is off: a page cannot know a
/// token, and a bearer header makes every cross-origin request preflighted,
/// which tsbridge (no CORS) never allows.
fn browser_guard(req: &Request) -> Result<(), ApiError> {
    let refuse = |what: String| {
        Err(ApiError::new(
            tsbridge_proto::ErrorType::SecurityError,
            format!(
                "{what}: without server.tokens tsbridge answers only clients on this machine, never a web page of another site"
            ),
        ))
    };
    let host = req.uri().host().map(str::to_owned).or_else(|| {
        let h = req.headers().get(header::HOST)?.to_str().ok()?;
        let uri: axum::http::uri::Authority = h.parse().ok()?;
        Some(uri.host().to_owned())
    });
    if let Some(host) = host
        && !is_loopback_host(&host)
    {
        return refuse(format!("host {host:?} is not a loopback name"));
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let loopback = origin
            .to_str()
            .ok()
            .and_then(|o| o.parse::<axum::http::Uri>().ok())
            .is_some_and(|u| u.host().is_some_and(is_loopback_host));
        if !loopback {
            let shown = String::from_utf8_lossy(origin.as_bytes()).into_owned();
            return refuse(format!("a request from the web origin {shown:?}"));
        }
    }
    Ok(())
}

/// Middleware: every route but `/healthz` needs a valid bearer token when
/// tokens are configured; 401 `Unauthorized` with `WWW-Authenticate` if not.
/// Without tokens, requests from web pages of other sites are refused (403,
/// see [`browser_guard`]).
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let auth = state.auth();
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    if !auth.is_enabled() {
        return match browser_guard(&req) {
            Ok(()) => next.run(req).await,
            Err(e) => e.into_response(),
        };
    }
    let presented = bearer(&req).or_else(|| {
        accepts_query_token(req.uri().path())
            .then(|| query_token(&req))
            .flatten()
    });
    match presented {
        None => ApiError::unauthorized("missing bearer token").into_response(),
        Some(t) if auth.verify(&t) => next.run(req).await,
        Some(_) => ApiError::unauthorized("invalid bearer token").into_response(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn literal_env_and_sha256_tokens() {
        let digest = sha256(b"hashed-secret");
        let auth = Auth::resolve_with(
            &[
                TokenSource::Literal("lit".into()),
                TokenSource::Env("TOK".into()),
                TokenSource::Sha256(digest),
            ],
            |n| (n == "TOK").then(|| "from-env".to_owned()),
        )
        .unwrap();
        assert!(auth.is_enabled());
        assert!(auth.verify("lit"));
        assert!(auth.verify("from-env"));
        assert!(auth.verify("hashed-secret"));
        assert!(!auth.verify("li"));
        assert!(!auth.verify(""));
        assert!(!auth.verify("sha256:whatever"));
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "[::1]",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "evil.example",
            "localhost.evil.example",
            "10.0.0.1",
            "0.0.0.0",
            "[::]",
            "",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn missing_env_is_an_error() {
        let err = Auth::resolve_with(&[TokenSource::Env("NOPE".into())], |_| None).unwrap_err();
        assert!(matches!(err, AuthError::MissingEnv { ref name } if name == "NOPE"));
        assert!(!Auth::disabled().is_enabled());
    }

    #[test]
    fn query_tokens_only_for_streams() {
        assert!(accepts_query_token("/v1/ws"));
        assert!(accepts_query_token("/v1/jobs/abc/events"));
        assert!(!accepts_query_token("/v1/jobs"));
        assert!(!accepts_query_token("/metrics"));
    }
}
