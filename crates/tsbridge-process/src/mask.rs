//! Secret masking (SPEC §5 "Secrets are masked in captured output, logs and
//! error messages"): every occurrence of a known secret value, or of an extra
//! pattern, becomes `[REDACTED]`.
//!
//! Where masking happens, and why nothing leaks at the seams:
//! - Streaming events are masked per line ([`Masker::mask`] on each log
//!   message, progress message and output line). Lines are whole (the line
//!   splitter joins reads), so a secret split across two reads is still seen
//!   in one piece.
//! - A line cut at the line limit, and the head and tail of a truncated
//!   capture, end (or start) where bytes were dropped. A secret can straddle
//!   such a cut: then only a piece of it is present. [`Masker::mask_cut`]
//!   also redacts a piece of a literal secret (at least
//!   [`MIN_PARTIAL`] bytes) at a cut edge. Head and tail are masked
//!   separately and joined by the marker line, so the two halves of a secret
//!   are never put back together ([`Masker::mask_captured`]).
//! - A secret printed line by line can never be whole in one streamed line.
//!   As CI systems do (GitHub Actions registers each line of a multi-line
//!   secret as its own mask), each whole *piece* of it is a secret too
//!   ([`pieces`]): each line of a secret with a line break in it (a PEM
//!   key), and each line of its base64 (standard alphabet, with and without
//!   padding) wrapped at 64 and at 76 columns (PEM, MIME), when at least
//!   [`MIN_PIECE_LEN`] bytes. A piece is matched whole, like any secret, so a
//!   line that shows only part of one is not guessed at. Lines that are not
//!   secret material are not pieces: PEM/SSH armour (`-----BEGIN ...-----`),
//!   `Proc-Type:` headers, the first base64 line of an OpenSSH key (its magic
//!   and cipher names), the first line of a PEM file's own base64 (armour
//!   and DER header), lines of one repeated byte (`AAAA...`).
//! - A secret printed wrapped across lines (a line break `\n`/`\r\n` inside
//!   it: base64 wrapped at 64/76 columns as in PEM/MIME, a terminal-width
//!   wrap, a split by `\r\n`), for secrets of at least
//!   [`MIN_ENCODED_SECRET_LEN`] bytes and each of their forms (literal,
//!   JSON-escaped, percent, base64): in a multi-line text (a whole capture,
//!   an error) it is matched exactly, with line breaks allowed between any
//!   two of its characters, and redacted line by line (the line structure
//!   stays). One line alone (a streamed event) cannot see its neighbour,
//!   and is not guessed at: redacting the end of a line because it looks
//!   like the start of a secret would tell whoever controls what a job
//!   prints whether a guessed prefix is right (a byte-by-byte oracle), and
//!   would redact ordinary words and numbers. So in streamed events a
//!   wrapped secret is masked only through its whole pieces (above): a
//!   line wrapped at another column, or base64 of the secret with other
//!   bytes before it, shows its pieces in clear there.
//! - A secret that contains `"` or `\` appears escaped inside JSON text; the
//!   JSON-escaped form is a secret too. Results are masked as values
//!   ([`Masker::mask_json`]): strings, object keys and numbers.
//!
//! Literals are matched with one regex alternation (the regex crate runs it
//! with an Aho-Corasick/Teddy prefilter), longest first, so a secret that
//! contains another is redacted whole. The empty masker borrows its input and
//! does no work.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use regex::{Regex, RegexBuilder};
use serde_json::Value;

/// What a masked secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Values shorter than this are never treated as secrets (masking `1` or
/// `yes` everywhere would destroy output and reveal nothing useful).
pub const MIN_SECRET_LEN: usize = 4;

/// The shortest piece of a secret redacted at a cut edge.
pub const MIN_PARTIAL: usize = 3;

/// Whether an environment variable name looks like it holds a secret
/// (SPEC §5). One rule for the whole product: the sandbox's, which also
/// decides what a child never inherits.
pub use tsbridge_sandbox::env::is_secret_name;

/// Replaces secret values and patterns by [`REDACTED`]. Cheap to clone.
#[derive(Clone, Default)]
pub struct Masker {
    /// One alternation of all literal secrets, longest first.
    literals: Option<Regex>,
    /// The literal secrets themselves (for cut edges), longest first.
    secrets: Vec<String>,
    patterns: Vec<Regex>,
    /// Secrets that may be printed wrapped across lines.
    wrap: Option<Arc<Wrapped>>,
}

/// The forms of the secrets of at least [`MIN_ENCODED_SECRET_LEN`] bytes, for
/// finding them wrapped across lines.
struct Wrapped {
    /// Every form (literal, JSON-escaped, percent, base64), longest first.
    forms: Vec<String>,
    /// The forms with line breaks allowed between characters, compiled
    /// when a multi-line text is first masked.
    regex: OnceLock<Option<Regex>>,
}

impl Wrapped {
    fn new(forms: Vec<String>) -> Option<Wrapped> {
        if forms.is_empty() {
            return None;
        }
        Some(Wrapped {
            forms,
            regex: OnceLock::new(),
        })
    }

    /// One alternation of the forms (longest first), compiled when a
    /// multi-line text is first masked.
    fn regex(&self) -> Option<&Regex> {
        self.regex
            .get_or_init(|| literal_alternation(&self.forms))
            .as_ref()
    }

    /// A multi-line text with every form that a line break interrupts
    /// redacted, one [`REDACTED`] per line it spans (the breaks stay).
    /// The forms are searched in the text with its line breaks (`\n`,
    /// `\r\n`) taken out, so the literal search stays fast; matches that
    /// span no break are left to the plain literal pass.
    fn mask_lines<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let Some(re) = self.regex() else {
            return Cow::Borrowed(s);
        };
        let bytes = s.as_bytes();
        // The text without breaks, and where each break was: (its position
        // in the joined text, bytes taken out up to and including it).
        let mut joined = String::with_capacity(s.len());
        let mut breaks: Vec<(usize, usize)> = Vec::new();
        let mut removed = 0;
        let mut last = 0;
        for i in memchr::memchr_iter(b'\n', bytes) {
            let start = if i > last && bytes[i - 1] == b'\r' {
                i - 1
            } else {
                i
            };
            joined.push_str(&s[last..start]);
            removed += i + 1 - start;
            breaks.push((joined.len(), removed));
            last = i + 1;
        }
        joined.push_str(&s[last..]);
        // Bytes taken out before joined position `j` (breaks at `p <= j`
        // when `inclusive`, else `p < j`).
        let removed_before = |j: usize, inclusive: bool| {
            let n = breaks.partition_point(|&(p, _)| if inclusive { p <= j } else { p < j });
            if n == 0 { 0 } else { breaks[n - 1].1 }
        };
        let mut out = String::new();
        let mut copied = 0;
        for m in re.find_iter(&joined) {
            let (a, b) = (m.start(), m.end());
            let spans_break = breaks
                .get(breaks.partition_point(|&(p, _)| p <= a))
                .is_some_and(|&(p, _)| p < b);
            if !spans_break {
                continue;
            }
            let start = a + removed_before(a, true);
            let end = b + removed_before(b, false);
            out.push_str(&s[copied..start]);
            out.push_str(REDACTED);
            let mut rest = &s[start..end];
            while let Some(i) = rest.find('\n') {
                let brk = if rest[..i].ends_with('\r') {
                    "\r\n"
                } else {
                    "\n"
                };
                out.push_str(brk);
                out.push_str(REDACTED);
                rest = &rest[i + 1..];
            }
            copied = end;
        }
        if copied == 0 {
            return Cow::Borrowed(s);
        }
        out.push_str(&s[copied..]);
        Cow::Owned(out)
    }
}

/// One regex alternation of `literals` (in their order: longest first, so
/// that a literal containing another matches whole); `None` when there are
/// none. Escaped literals always compile; only the size limit could refuse,
/// so it is raised to fit any realistic set of secrets.
fn literal_alternation(literals: &[String]) -> Option<Regex> {
    if literals.is_empty() {
        return None;
    }
    let alternation = literals
        .iter()
        .map(|s| regex::escape(s))
        .collect::<Vec<_>>()
        .join("|");
    RegexBuilder::new(&alternation)
        .size_limit(256 << 20)
        .dfa_size_limit(64 << 20)
        .build()
        .ok()
}

impl fmt::Debug for Masker {
    // Never prints the secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker")
            .field("secrets", &self.secrets.len())
            .field("patterns", &self.patterns.len())
            .finish()
    }
}

impl Masker {
    /// A masker for the given secret values (those shorter than
    /// [`MIN_SECRET_LEN`] bytes are ignored) and extra patterns.
    pub fn new(secrets: impl IntoIterator<Item = String>, patterns: &[Regex]) -> Self {
        let mut all: Vec<String> = Vec::new();
        let mut wrap: Vec<String> = Vec::new();
        for s in secrets {
            if s.len() < MIN_SECRET_LEN {
                continue;
            }
            let from = all.len();
            add_secret(&mut all, &s);
            if s.len() >= MIN_ENCODED_SECRET_LEN {
                wrap.extend(
                    all[from..]
                        .iter()
                        .filter(|f| f.len() >= MIN_ENCODED_SECRET_LEN)
                        .cloned(),
                );
            }
            // After the wrapped forms: the base64 lines are parts of the
            // base64 form, which the multi-line search already finds whole.
            for piece in base64_pieces(&s) {
                add_literal(&mut all, piece);
            }
        }
        all.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        all.dedup();
        wrap.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        wrap.dedup();
        Self {
            literals: literal_alternation(&all),
            secrets: all,
            patterns: patterns.to_vec(),
            wrap: Wrapped::new(wrap).map(Arc::new),
        }
    }

    /// A masker for the values of the variables in `env` whose names look
    /// secret ([`is_secret_name`]), plus `extra_patterns`.
    pub fn from_env(env: &BTreeMap<String, String>, extra_patterns: &[Regex]) -> Self {
        Self::new(
            env.iter()
                .filter(|(k, _)| is_secret_name(k))
                .map(|(_, v)| v.clone()),
            extra_patterns,
        )
    }

    /// Whether this masker never changes anything.
    pub fn is_empty(&self) -> bool {
        self.literals.is_none() && self.patterns.is_empty()
    }

    /// `s` with every secret and pattern match replaced by [`REDACTED`];
    /// borrows when nothing matched.
    pub fn mask<'a>(&self, s: &'a str) -> Cow<'a, str> {
        if self.is_empty() {
            return Cow::Borrowed(s);
        }
        // A multi-line text gets the exact wrapped match. One line alone is
        // not guessed at: redacting a line's end because it looks like the
        // start of a secret would answer, to whoever controls what a job
        // prints, whether a guessed prefix is right (a byte-by-byte oracle),
        // and would redact ordinary words and numbers.
        let multiline = self.wrap.is_some() && memchr::memchr(b'\n', s.as_bytes()).is_some();
        let mut out = match &self.wrap {
            Some(w) if multiline => w.mask_lines(s),
            _ => Cow::Borrowed(s),
        };
        if let Some(re) = &self.literals
            && let Cow::Owned(o) = re.replace_all(&out, REDACTED)
        {
            out = Cow::Owned(o);
        }
        for p in &self.patterns {
            if let Cow::Owned(o) = p.replace_all(&out, REDACTED) {
                out = Cow::Owned(o);
            }
        }
        out
    }

    /// Like [`Masker::mask`], for text cut from a longer stream: when
    /// `cut_before`, a leading piece that is a suffix of a secret is redacted;
    /// when `cut_after`, a trailing piece that is a prefix of a secret is
    /// redacted (pieces of at least [`MIN_PARTIAL`] bytes).
    pub fn mask_cut<'a>(&self, s: &'a str, cut_before: bool, cut_after: bool) -> Cow<'a, str> {
        let masked = self.mask(s);
        if self.secrets.is_empty() || !(cut_before || cut_after) {
            return masked;
        }
        let mut text: &str = &masked;
        let mut lead = 0;
        let mut trail = 0;
        if cut_before {
            lead = self.partial_prefix_len(text);
        }
        if cut_after {
            trail = self.partial_suffix_len(&text[lead..]);
        }
        if lead == 0 && trail == 0 {
            return masked;
        }
        let mut out = String::with_capacity(text.len() + 2 * REDACTED.len());
        if lead > 0 {
            out.push_str(REDACTED);
        }
        text = &text[lead..text.len() - trail];
        out.push_str(text);
        if trail > 0 {
            out.push_str(REDACTED);
        }
        Cow::Owned(out)
    }

    /// Length of the longest prefix of `s` that is a proper suffix of a secret.
    fn partial_prefix_len(&self, s: &str) -> usize {
        let mut best = 0;
        for secret in &self.secrets {
            let max = (secret.len() - 1).min(s.len());
            for k in (MIN_PARTIAL.max(best + 1)..=max).rev() {
                if s.is_char_boundary(k) && secret.ends_with(&s[..k]) {
                    best = k;
                    break;
                }
            }
        }
        best
    }

    /// Length of the longest suffix of `s` that is a proper prefix of a secret.
    fn partial_suffix_len(&self, s: &str) -> usize {
        let mut best = 0;
        for secret in &self.secrets {
            let max = (secret.len() - 1).min(s.len());
            for k in (MIN_PARTIAL.max(best + 1)..=max).rev() {
                let start = s.len() - k;
                if s.is_char_boundary(start) && secret.starts_with(&s[start..]) {
                    best = k;
                    break;
                }
            }
        }
        best
    }

    /// A captured stream as text, masked: the whole text when nothing was
    /// dropped; otherwise head and tail masked separately (each guarded at
    /// its cut edge) around the marker line.
    pub fn mask_captured(&self, captured: &crate::capture::Captured) -> String {
        if !captured.truncated() || self.is_empty() {
            let s = captured.to_string_lossy();
            return match self.mask(&s) {
                Cow::Borrowed(_) => s,
                Cow::Owned(o) => o,
            };
        }
        let head = String::from_utf8_lossy(&captured.head);
        let tail = String::from_utf8_lossy(&captured.tail);
        let mut out = self.mask_cut(&head, false, true).into_owned();
        out.push_str(&crate::capture::Captured::marker(captured.dropped));
        out.push_str(&self.mask_cut(&tail, true, false));
        out
    }

    /// Masks every string, object key and number inside a JSON value. A
    /// number whose digits contain a secret becomes the string `[REDACTED]`.
    pub fn mask_json(&self, value: &mut Value) {
        if self.is_empty() {
            return;
        }
        match value {
            Value::String(s) => {
                if let Cow::Owned(o) = self.mask(s) {
                    *s = o;
                }
            }
            Value::Number(n) => {
                let text = n.to_string();
                if let Cow::Owned(o) = self.mask(&text) {
                    *value = Value::String(o);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.mask_json(v)),
            Value::Object(map) => {
                let needs_key_mask = map.keys().any(|k| matches!(self.mask(k), Cow::Owned(_)));
                if needs_key_mask {
                    let old = std::mem::take(map);
                    for (k, v) in old {
                        map.insert(self.mask(&k).into_owned(), v);
                    }
                }
                map.values_mut().for_each(|v| self.mask_json(v));
            }
            Value::Null | Value::Bool(_) => {}
        }
    }
}

/// Adds `s` and its JSON-escaped form.
fn add_literal(all: &mut Vec<String>, s: String) {
    if let Ok(json) = serde_json::to_string(&s) {
        let inner = &json[1..json.len() - 1];
        if inner != s {
            all.push(inner.to_owned());
        }
    }
    all.push(s);
}

/// Adds `s`, its lines (for multi-line secrets), its JSON-escaped form and
/// (at least [`MIN_ENCODED_SECRET_LEN`] bytes) its encoded forms.
fn add_secret(all: &mut Vec<String>, s: &str) {
    if s.len() < MIN_SECRET_LEN {
        return;
    }
    add_literal(all, s.to_owned());
    for line in line_pieces(s) {
        add_literal(all, line);
    }
    if s.len() >= MIN_ENCODED_SECRET_LEN {
        let pct = percent_encoded(s);
        if pct != s {
            all.push(pct);
        }
        for form in base64_forms(s.as_bytes()) {
            if form.len() >= MIN_SECRET_LEN {
                all.push(form);
            }
        }
    }
}

/// Secrets at least this long are also masked base64- and percent-encoded
/// (shorter ones would give encoded forms that match by chance).
pub const MIN_ENCODED_SECRET_LEN: usize = 8;

/// The shortest piece of a secret (a line of it, a line of its wrapped
/// base64) masked on its own: shorter ones would match by chance, and a
/// guess at a few bytes is cheap.
pub const MIN_PIECE_LEN: usize = 8;

/// The columns base64 is wrapped at: PEM (RFC 7468) and MIME (RFC 2045).
pub const WRAP_COLUMNS: [usize; 2] = [64, 76];

/// Every whole piece of `secret` masked on its own, in no particular order
/// (with repeats): the secret's own lines when it has a line break
/// (`\n`, `\r\n` or `\r`; each trimmed), and the lines of its base64
/// (standard alphabet, padded and not) wrapped at each of [`WRAP_COLUMNS`]
/// when it is longer than one line. Only pieces of at least
/// [`MIN_PIECE_LEN`] bytes that are secret material ([`is_piece`]).
pub fn pieces(secret: &str) -> Vec<String> {
    let mut out = line_pieces(secret);
    out.extend(base64_pieces(secret));
    out
}

/// The lines of a secret that has a line break in it (trimmed), that are
/// pieces ([`is_piece`]).
fn line_pieces(secret: &str) -> Vec<String> {
    if !secret.contains(['\n', '\r']) {
        return Vec::new();
    }
    secret
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| is_piece(l))
        .map(str::to_owned)
        .collect()
}

/// The lines of the secret's base64 (standard alphabet) wrapped at each of
/// [`WRAP_COLUMNS`], with and without the padding of the last one, that
/// are pieces ([`is_piece`]). None when the base64 fits in one line: the
/// encoded forms of [`add_secret`] mask it whole. Not the first line when
/// the secret starts with an armour line (a PEM file): it encodes that line
/// and the start of a DER or OpenSSH header, the same in every key of one
/// type and size (`-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG`).
fn base64_pieces(secret: &str) -> Vec<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    if secret.len() < MIN_ENCODED_SECRET_LEN {
        return Vec::new();
    }
    let b64 = STANDARD.encode(secret);
    let armoured = secret.lines().next().is_some_and(|l| is_armour(l.trim()));
    let mut out = Vec::new();
    for width in WRAP_COLUMNS {
        if b64.len() <= width {
            continue;
        }
        // Base64 is ASCII: every byte offset is a character boundary.
        let mut start = if armoured { width } else { 0 };
        while start < b64.len() {
            let line = &b64[start..(start + width).min(b64.len())];
            for piece in [line, line.trim_end_matches('=')] {
                if is_piece(piece) {
                    out.push(piece.to_owned());
                }
            }
            start += width;
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Whether one line of a secret is masked on its own: at least
/// [`MIN_PIECE_LEN`] bytes, and secret material. Not: PEM (RFC 7468) and
/// SSH (RFC 4716) armour lines (`-----BEGIN PRIVATE KEY-----`, `---- END
/// SSH2 PUBLIC KEY ----`), RFC 1421 `Proc-Type:` headers, the first base64
/// line of an OpenSSH private key (`openssh-key-v1`, the cipher and KDF
/// names: the same for every key of one type), and lines of one repeated
/// byte (base64 of zero bytes, a rule of dashes). Masking those would
/// redact common text, and tell anyone who prints it that a secret holds it.
fn is_piece(line: &str) -> bool {
    const OPENSSH_MAGIC_B64: &str = "b3BlbnNzaC1rZXktdjE"; // "openssh-key-v1"
    if line.len() < MIN_PIECE_LEN {
        return false;
    }
    let bytes = line.as_bytes();
    if bytes.iter().all(|&b| b == bytes[0]) {
        return false;
    }
    !(is_armour(line) || line.starts_with("Proc-Type:") || line.starts_with(OPENSSH_MAGIC_B64))
}

/// A PEM (RFC 7468) or SSH (RFC 4716) armour line: `-----BEGIN X-----`,
/// `---- END X ----`.
fn is_armour(line: &str) -> bool {
    let inner = line.trim_matches('-').trim();
    line.starts_with("----")
        && line.ends_with("----")
        && (inner.starts_with("BEGIN ") || inner.starts_with("END "))
}

/// `s` percent-encoded as a URL component (RFC 3986: all but unreserved).
fn percent_encoded(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The base64 text (standard and URL-safe alphabets) that the secret's
/// bytes alone determine, wherever the secret starts in the encoded data:
/// after 0, 1 or 2 bytes of a 3-byte group. So `base64("user:" + secret)`
/// (HTTP basic auth) is masked too, except the 1–2 characters at each end
/// that it shares with its neighbours.
fn base64_forms(secret: &[u8]) -> Vec<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let mut forms = Vec::new();
    for offset in 0..3usize {
        let mut data = vec![0u8; offset];
        data.extend_from_slice(secret);
        // Characters are 6 bits: the first that holds no prefix bit, and
        // the end of the last that holds no bit after the secret.
        let first = (offset * 8).div_ceil(6);
        let end = data.len() * 8 / 6;
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let text = engine.encode(&data);
            if let Some(part) = text.get(first..end) {
                forms.push(part.to_owned());
            }
        }
    }
    forms.sort();
    forms.dedup();
    forms
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::CaptureBuffer;

    fn m(secrets: &[&str]) -> Masker {
        Masker::new(secrets.iter().map(|s| s.to_string()), &[])
    }

    #[test]
    fn base64_and_percent_encoded_secrets_are_masked() {
        use base64::Engine as _;
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let secret = "sk-live/Ab+cd=Ef?9_xyz";
        let mk = m(&[secret]);
        let leaks = [
            STANDARD.encode(secret),
            URL_SAFE_NO_PAD.encode(secret),
            // HTTP basic auth: the secret after 4, 5 and 6 bytes.
            STANDARD.encode(format!("user:{secret}")),
            STANDARD.encode(format!("admin:{secret}")),
            STANDARD.encode(format!("nobody:{secret}")),
            percent_encoded(secret),
        ];
        let followed = STANDARD.encode(format!("{secret} and more after it"));
        assert!(mk.mask(&followed).starts_with(REDACTED), "{followed}");
        for leak in &leaks {
            let line = format!("Authorization: Basic {leak} (sent)");
            let out = mk.mask(&line);
            assert!(out.contains(REDACTED), "not masked: {line} -> {out}");
            // What is left of the encoded text cannot give the secret back:
            // at most 2 characters at each end of it.
            let left = out
                .trim_start_matches("Authorization: Basic ")
                .trim_end_matches(" (sent)")
                .replace(REDACTED, "");
            assert!(left.len() <= 12, "{line} -> {out}");
        }
        // Short secrets get no encoded forms (they would match by chance).
        let short = m(&["abc12"]);
        let b64 = STANDARD.encode("abc12");
        assert_eq!(short.mask(&b64), b64);
    }

    #[test]
    fn empty_masker_borrows() {
        let masker = Masker::default();
        assert!(masker.is_empty());
        assert!(matches!(masker.mask("anything"), Cow::Borrowed("anything")));
        let masker = m(&["abc"]); // too short: ignored
        assert!(masker.is_empty());
    }

    #[test]
    fn replaces_every_occurrence() {
        let masker = m(&["hunter22"]);
        assert_eq!(
            masker.mask("pw=hunter22 again hunter22!"),
            "pw=[REDACTED] again [REDACTED]!"
        );
        assert!(matches!(masker.mask("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn longest_secret_wins() {
        let masker = m(&["abcd", "abcdefgh"]);
        assert_eq!(
            masker.mask("x abcdefgh y abcd"),
            "x [REDACTED] y [REDACTED]"
        );
        assert!(!masker.mask("abcdefgh").contains("efgh"));
    }

    #[test]
    fn regex_metacharacters_are_literal() {
        let masker = m(&["p.ss(w)*rd"]);
        assert_eq!(
            masker.mask("a p.ss(w)*rd b passwrd"),
            "a [REDACTED] b passwrd"
        );
    }

    #[test]
    fn patterns_apply_too() {
        let re = Regex::new(r"ghp_[A-Za-z0-9]{8,}").unwrap_or_else(|e| panic!("{e}"));
        let masker = Masker::new(Vec::<String>::new(), &[re]);
        assert_eq!(
            masker.mask("token ghp_abcdefgh123 end"),
            "token [REDACTED] end"
        );
    }

    #[test]
    fn from_env_picks_secret_names() {
        let env: BTreeMap<String, String> = [
            ("DB_PASSWORD", "pa55word!"),
            ("api_key", "k-12345"),
            ("GITHUB_TOKEN", "tok-abcdef"),
            ("AWS_CREDENTIALS", "cred-xyz1"),
            ("MY_SECRET", "s3cr3t"),
            ("SHORT_TOKEN", "abc"),
            ("HOME", "/home/user"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let masker = Masker::from_env(&env, &[]);
        let line = "pa55word! k-12345 tok-abcdef cred-xyz1 s3cr3t abc /home/user";
        assert_eq!(
            masker.mask(line),
            "[REDACTED] [REDACTED] [REDACTED] [REDACTED] [REDACTED] abc /home/user"
        );
    }

    #[test]
    fn multiline_and_json_escaped_secrets() {
        let masker = m(&[
            "-----BEGIN KEY-----\nMIIEabcdef\n-----END KEY-----",
            "a\"quote\\d",
        ]);
        assert_eq!(masker.mask("line: MIIEabcdef"), "line: [REDACTED]");
        assert_eq!(
            masker.mask(r#"{"v":"a\"quote\\d"}"#),
            r#"{"v":"[REDACTED]"}"#
        );
    }

    #[test]
    fn mask_json_strings_keys_numbers() {
        let masker = m(&["s3cr3t", "987654"]);
        let mut v = serde_json::json!({"a": "x s3cr3t", "s3cr3t": 1, "n": 19876543, "l": [true, null, "s3cr3t"]});
        masker.mask_json(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"a": "x [REDACTED]", "[REDACTED]": 1, "n": "1[REDACTED]3", "l": [true, null, "[REDACTED]"]})
        );
    }

    #[test]
    fn cut_edges_redact_partial_secrets() {
        let masker = m(&["SUPERSECRETVALUE"]);
        assert_eq!(
            masker.mask_cut("output SUPERSEC", false, true),
            "output [REDACTED]"
        );
        assert_eq!(
            masker.mask_cut("RETVALUE tail", true, false),
            "[REDACTED] tail"
        );
        // Without a cut, a fragment is just text (inside a line or at its
        // end: guessing there would be an oracle, see
        // `one_line_is_masked_only_where_a_whole_secret_is`).
        assert_eq!(
            masker.mask_cut("output SUPERSEC here", false, false),
            "output SUPERSEC here"
        );
        assert_eq!(
            masker.mask_cut("output SUPERSEC", false, false),
            "output SUPERSEC"
        );
        // Fragments shorter than MIN_PARTIAL are left alone.
        assert_eq!(masker.mask_cut("end SU", false, true), "end SU");
    }

    #[test]
    fn truncated_capture_never_leaks_a_straddling_secret() {
        let secret = "TOPSECRET-0123456789";
        let masker = m(&[secret]);
        // Place the secret at every offset relative to the head/tail cut.
        for pad in 0..40 {
            let mut c = CaptureBuffer::new(32);
            let mut data = "x".repeat(pad);
            data.push_str(secret);
            data.push_str(&"y".repeat(40));
            data.push_str(secret);
            c.push(data.as_bytes());
            let text = masker.mask_captured(&c.finish());
            for w in secret.as_bytes().windows(MIN_PARTIAL + 1) {
                let w = std::str::from_utf8(w).unwrap_or_default();
                assert!(!text.contains(w), "pad {pad}: {text:?} leaks {w:?}");
            }
        }
    }

    #[test]
    fn untruncated_capture_is_masked_whole() {
        let masker = m(&["abcdef"]);
        let mut c = CaptureBuffer::new(100);
        c.push(b"abc");
        c.push(b"def and more");
        assert_eq!(masker.mask_captured(&c.finish()), "[REDACTED] and more");
    }

    /// Every event the line protocol makes of `text` (Debug form), and the
    /// whole text masked as a capture is.
    fn streamed(masker: &Masker, text: &str) -> (Vec<String>, String) {
        use crate::lineproto::{ProtocolLimits, StdoutProtocol};
        let mut events = Vec::new();
        let mut p = StdoutProtocol::new(ProtocolLimits::default()).with_masker(masker.clone());
        // Reads of 7 bytes: lines are joined across reads.
        for chunk in text.as_bytes().chunks(7) {
            p.feed(chunk, &mut |e| events.push(format!("{e:?}")));
        }
        p.finish(&mut |e| events.push(format!("{e:?}")));
        (events, masker.mask(text).into_owned())
    }

    /// No 4-byte window of `form` in any of `texts`.
    fn assert_no_piece(texts: &[String], form: &str, what: &str) {
        for w in form.as_bytes().windows(4) {
            let w = std::str::from_utf8(w).unwrap_or_default();
            for t in texts {
                assert!(!t.contains(w), "{what}: {t:?} shows {w:?} of {form:?}");
            }
        }
    }

    #[test]
    fn a_secret_wrapped_across_lines_never_shows_in_captures() {
        let secret = "sk-live-9Qz7Wm2Rt5Yx8Kp3Lv6Nb1Hc4Jd0Fg";
        let masker = m(&[secret]);
        // Split once, at every position, by \n and by \r\n.
        for cut in 1..secret.len() {
            for brk in ["\n", "\r\n"] {
                let text = format!(
                    "token: {}{brk}{} (end)\nnext line\n",
                    &secret[..cut],
                    &secret[cut..]
                );
                let (_, captured) = streamed(&masker, &text);
                assert_no_piece(
                    std::slice::from_ref(&captured),
                    secret,
                    &format!("capture, cut {cut}"),
                );
                assert_eq!(captured.lines().count(), 3, "lines stay: {captured:?}");
            }
        }
        // Wrapped at every width from 5 columns (three lines and more).
        for width in 5..secret.len() {
            let wrapped: Vec<&str> = secret
                .as_bytes()
                .chunks(width)
                .map(|c| std::str::from_utf8(c).unwrap_or_default())
                .collect();
            let text = format!("{}\n", wrapped.join("\n"));
            let (_, captured) = streamed(&masker, &text);
            assert_no_piece(&[captured], secret, &format!("capture, width {width}"));
        }
    }

    #[test]
    fn base64_of_a_secret_wrapped_like_pem_or_mime_never_shows_in_captures() {
        use base64::Engine as _;
        use base64::engine::general_purpose::STANDARD;
        let secret = "AKIAIOSFODNN7EXAMPLE/wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let masker = m(&[secret]);
        for prefix in ["", "u:", "user:", "admin:"] {
            let b64 = STANDARD.encode(format!("{prefix}{secret}").repeat(3));
            for (width, brk) in [(64, "\n"), (76, "\r\n"), (60, "\n"), (13, "\n")] {
                let wrapped: Vec<&str> = b64
                    .as_bytes()
                    .chunks(width)
                    .map(|c| std::str::from_utf8(c).unwrap_or_default())
                    .collect();
                let text = format!(
                    "-----BEGIN-----{brk}{}{brk}-----END-----{brk}",
                    wrapped.join(brk)
                );
                let (_, captured) = streamed(&masker, &text);
                for form in base64_forms(secret.as_bytes()) {
                    let what = format!("{prefix:?} at {width}");
                    assert_no_piece(std::slice::from_ref(&captured), &form, &what);
                }
            }
        }
    }

    /// Found by review: redacting a line's end that looks like the start of
    /// a secret told a guesser, byte by byte, whether a prefix was right, and
    /// redacted ordinary words and numbers.
    #[test]
    fn one_line_is_masked_only_where_a_whole_secret_is() {
        let secret = "sk_live_Q7xv93kPz";
        let masker = m(&[secret]);
        let alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let known = "sk_live_";
        for c in alphabet.chars() {
            let line = format!("echo {known}{c}");
            assert_eq!(masker.mask(&line), line, "a prefix guess changed the line");
        }
        assert_eq!(masker.mask(&format!("echo {secret}")), "echo [REDACTED]");
        let masker = m(&["admin12345", "20261126"]);
        assert_eq!(masker.mask("logged in as admin"), "logged in as admin");
        let mut v = serde_json::json!({"user": "admin", "year": 2026});
        masker.mask_json(&mut v);
        assert_eq!(v, serde_json::json!({"user": "admin", "year": 2026}));
    }

    /// `text` wrapped at `width` columns with `brk` between the lines.
    fn wrap_at(text: &str, width: usize, brk: &str) -> String {
        text.as_bytes()
            .chunks(width)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(brk)
    }

    /// A PEM private key made of made-up base64 (64 columns, a short last
    /// line).
    fn pem_key() -> String {
        use base64::Engine as _;
        use base64::engine::general_purpose::STANDARD;
        let der: Vec<u8> = (0u32..700)
            .map(|i| u8::try_from((i * 7919 + 13) % 251).unwrap_or(0))
            .collect();
        let body = STANDARD.encode(&der);
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            wrap_at(&body, 64, "\n")
        )
    }

    #[test]
    fn pieces_are_the_lines_of_a_secret_and_of_its_wrapped_base64() {
        use base64::Engine as _;
        use base64::engine::general_purpose::STANDARD;
        let pem = pem_key();
        let p = pieces(&pem);
        let body: Vec<&str> = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        for line in &body {
            assert_eq!(p.contains(&line.to_string()), line.len() >= MIN_PIECE_LEN);
        }
        assert!(!p.iter().any(|l| l.contains("PRIVATE KEY")), "armour");
        let b64 = STANDARD.encode(&pem);
        for width in WRAP_COLUMNS {
            let wrapped = wrap_at(&b64, width, "\n");
            let mut lines = wrapped.lines();
            // The armour and the start of the DER header: not secret.
            let first = lines.next().unwrap_or_default();
            assert!(!p.contains(&first.to_string()), "{width}: {first}");
            for line in lines {
                assert!(p.contains(&line.to_string()), "{width}: {line}");
                let bare = line.trim_end_matches('=');
                assert_eq!(p.contains(&bare.to_string()), bare.len() >= MIN_PIECE_LEN);
            }
        }
        // A secret whose base64 fits in one line has no pieces: its encoded
        // forms mask that line whole.
        assert!(pieces(&"k".repeat(48)).is_empty());
        assert!(!pieces(&"kx".repeat(25)).is_empty());
    }

    #[test]
    fn common_lines_are_not_pieces() {
        for line in [
            "-----BEGIN RSA PRIVATE KEY-----",
            "-----END ENCRYPTED PRIVATE KEY-----",
            "---- BEGIN SSH2 PUBLIC KEY ----",
            "Proc-Type: 4,ENCRYPTED",
            "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAABlwAAAAdzc2gtcn",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "================",
            "short",
        ] {
            assert!(!is_piece(line), "{line}");
        }
        assert!(is_piece("MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"));
        // The key's own lines are masked, its armour is not (it is the same
        // text in every PEM file, and printing it must tell nothing).
        let masker = m(&[&pem_key()]);
        for line in [
            "-----BEGIN PRIVATE KEY-----",
            "-----END PRIVATE KEY-----",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(masker.mask(line), line);
        }
        // Zero bytes base64-encode to `A`s: no piece of them.
        let zeros = String::from_utf8(vec![0u8; 120]).unwrap_or_default();
        assert!(pieces(&zeros).is_empty());
    }

    /// Issue #5: a PEM key printed line by line, and a long token's base64
    /// wrapped at 64 and 76 columns (with and without padding, `\n` and
    /// `\r\n`), streamed one line per event: no event shows a piece, as a
    /// log line, a progress message, plain output or JSON-escaped.
    #[test]
    fn a_secret_printed_line_by_line_never_shows_a_piece_in_streamed_events() {
        use crate::lineproto::{ProtocolLimits, StdoutProtocol};
        use base64::Engine as _;
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
        use tsbridge_proto::ChildEvent;
        let pem = pem_key();
        let token = "tsb-live-7Qm2Wx9Rk4Tz6Yp1Lc8Vb3Nd5Hf0Jg-aX9eR2tY7uI4oP1sD6fG3hJ8kL5zX0cV";
        let config = "id = 7\npassword = \"pa55\\w0rd-Xy7\"\n";
        let masker = m(&[&pem, token, config]);
        let mut text = String::new();
        for line in pem.lines().chain(config.lines()) {
            text.push_str(&format!(
                "{line}\nINFO: key {line}\nPROGRESS: 1/2 - {line}\n{}\n",
                serde_json::json!({ "line": line })
            ));
        }
        for secret in [token, pem.as_str()] {
            for b64 in [STANDARD.encode(secret), STANDARD_NO_PAD.encode(secret)] {
                for (width, brk) in [(64, "\n"), (76, "\r\n")] {
                    let wrapped = wrap_at(&b64, width, brk);
                    text.push_str(&format!("{wrapped}\n"));
                    for line in wrapped.lines() {
                        text.push_str(&format!("[t] WARN: {line} end\nPROGRESS: 2/2 - {line}\n"));
                    }
                }
            }
        }
        // The text of every event, one line each, and the whole capture.
        let mut events = Vec::new();
        let mut p = StdoutProtocol::new(ProtocolLimits::default()).with_masker(masker.clone());
        let mut text_of = |e: ChildEvent| match e {
            ChildEvent::Log { message, .. } => events.push(message),
            ChildEvent::Progress(p) => events.push(p.message),
            ChildEvent::Output { line, .. } => events.push(line),
            ChildEvent::Result { value } => events.push(value.to_string()),
        };
        for chunk in text.as_bytes().chunks(7) {
            p.feed(chunk, &mut text_of);
        }
        p.finish(&mut text_of);
        assert!(events.len() > 200, "one event per line: {}", events.len());
        events.push(masker.mask(&text).into_owned());
        let all: Vec<String> = [pem.as_str(), token, config]
            .iter()
            .flat_map(|s| pieces(s))
            .collect();
        assert!(all.len() > 40, "{}", all.len());
        assert!(all.iter().any(|p| p == "password = \"pa55\\w0rd-Xy7\""));
        for piece in &all {
            let json = serde_json::to_string(piece).unwrap_or_default();
            let escaped = &json[1..json.len() - 1];
            for e in &events {
                assert!(!e.contains(piece.as_str()), "{e:?} shows {piece:?}");
                assert!(!e.contains(escaped), "{e:?} shows {escaped:?}");
            }
        }
        assert!(
            events
                .iter()
                .any(|e| e.contains("-----BEGIN PRIVATE KEY-----"))
        );
        assert!(events.iter().any(|e| e.contains("id = 7")), "short line");
    }

    /// The pieces are whole secrets: a line's end that is the start of one
    /// is left alone (no byte-by-byte oracle, see
    /// `one_line_is_masked_only_where_a_whole_secret_is`).
    #[test]
    fn a_part_of_a_piece_is_not_guessed_at() {
        let pem = pem_key();
        let masker = m(&[&pem]);
        let piece = pem.lines().nth(1).unwrap_or_default();
        assert_eq!(piece.len(), 64);
        for k in 1..piece.len() {
            for line in [
                format!("echo {}", &piece[..k]),
                format!("{} x", &piece[k..]),
            ] {
                assert_eq!(masker.mask(&line), line);
            }
        }
        assert_eq!(masker.mask(&format!("echo {piece} x")), "echo [REDACTED] x");
    }

    #[test]
    fn debug_hides_secrets() {
        assert!(!format!("{:?}", m(&["hunter22"])).contains("hunter"));
    }
}
