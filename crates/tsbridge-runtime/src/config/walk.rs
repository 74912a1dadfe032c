//! A small walker over toml's spanned document tree ([`DeTable`]). It reads
//! one key at a time, so that every error of a config file is collected (not
//! only the first, as a single serde pass would), each with its dotted key and
//! the line it is on.

use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::errors::ConfigIssue;

/// The source text and the issues found so far.
#[derive(Debug)]
pub(crate) struct Issues<'s> {
    src: &'s str,
    pub(crate) list: Vec<ConfigIssue>,
}

impl<'s> Issues<'s> {
    pub(crate) fn new(src: &'s str) -> Self {
        Self {
            src,
            list: Vec::new(),
        }
    }

    /// The 1-based line of a byte offset.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.src.len());
        self.src.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    /// A TOML syntax error at `span`, under the dotted key it is about
    /// ([`key_at`]): the parser's message alone does not name it.
    pub(crate) fn push_syntax(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        let key = span
            .as_ref()
            .map(|s| key_at(self.src, s.start))
            .unwrap_or_default();
        self.push(&key, span, message);
    }

    pub(crate) fn push(
        &mut self,
        key: &str,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) {
        let line = span.map(|s| self.line_of(s.start));
        self.list.push(ConfigIssue {
            key: key.to_owned(),
            line,
            message: message.into(),
        });
    }
}

/// One table of the document, with its dotted path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Section<'a, 'i> {
    pub(crate) table: &'a DeTable<'i>,
    pub(crate) path: &'a str,
    /// Where the table starts (its `[header]`, or its inline `{`), for
    /// problems that have no span of their own (a missing key).
    pub(crate) header: Option<(usize, usize)>,
}

impl<'a, 'i> Section<'a, 'i> {
    /// Opens a table and reports every key of it not in `allowed`.
    pub(crate) fn open(
        issues: &mut Issues<'_>,
        table: &'a DeTable<'i>,
        path: &'a str,
        allowed: &[&str],
    ) -> Self {
        for (k, _) in table.iter() {
            let name: &str = k.get_ref();
            if !allowed.contains(&name) {
                let key = join(path, name);
                issues.push(
                    &key,
                    Some(k.span()),
                    format!("unknown key (expected one of: {})", allowed.join(", ")),
                );
            }
        }
        Self {
            table,
            path,
            header: None,
        }
    }

    /// The same section, with the span of its table (see [`Section::header`]).
    pub(crate) fn at(mut self, span: Range<usize>) -> Self {
        self.header = Some((span.start, span.end));
        self
    }

    /// Reports `name` as missing, on the line of the table's header.
    pub(crate) fn missing(&self, issues: &mut Issues<'_>, name: &str, message: &str) {
        let span = self.header.map(|(s, e)| s..e);
        issues.push(&self.key(name), span, format!("missing {message}"));
    }

    pub(crate) fn key(&self, name: &str) -> String {
        join(self.path, name)
    }

    pub(crate) fn raw(&self, name: &str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.table
            .iter()
            .find(|(k, _)| {
                let s: &str = k.get_ref();
                s == name
            })
            .map(|(_, v)| v)
    }

    /// Reads `name` as a `T`; a value of the wrong shape is reported and
    /// yields `None`, as does an absent key.
    pub(crate) fn get<T: DeserializeOwned>(
        &self,
        issues: &mut Issues<'_>,
        name: &str,
    ) -> Option<Spanned<T>> {
        let v = self.raw(name)?;
        let span = v.span();
        match T::deserialize(ValueDeserializer::from(v.clone())) {
            Ok(t) => Some(Spanned::new(span, t)),
            Err(e) => {
                let espan = e.span().unwrap_or_else(|| span.clone());
                issues.push(&self.key(name), Some(espan), e.message().to_owned());
                None
            }
        }
    }

    /// Reads `name` with a `FromStr` parser (durations, sizes, addresses).
    pub(crate) fn parse<T>(&self, issues: &mut Issues<'_>, name: &str) -> Option<Spanned<T>>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        let s = self.get::<String>(issues, name)?;
        let span = s.span();
        match s.get_ref().parse::<T>() {
            Ok(t) => Some(Spanned::new(span, t)),
            Err(e) => {
                issues.push(&self.key(name), Some(span), e.to_string());
                None
            }
        }
    }

    /// Opens the sub-table `name` (absent: `None`; not a table: reported).
    pub(crate) fn table(
        &self,
        issues: &mut Issues<'_>,
        name: &str,
        path: &'a str,
        allowed: &[&str],
    ) -> Option<Section<'a, 'i>> {
        let v = self.raw(name)?;
        match v.get_ref() {
            DeValue::Table(t) => Some(Section::open(issues, t, path, allowed).at(v.span())),
            other => {
                issues.push(
                    path,
                    Some(v.span()),
                    format!("expected a table, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// The span of the key's value, for semantic errors found later.
    pub(crate) fn span_of(&self, name: &str) -> Option<Range<usize>> {
        self.raw(name).map(|v| v.span())
    }
}

pub(crate) fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// The dotted key a syntax error at byte `offset` is about, read from the
/// text, since a file that does not parse has no tree to ask: the line's
/// own `[table]` header, or the key before the line's `=` under the header
/// in effect there. Empty when the line shows none (a value continued over
/// several lines, a line that is not `key = value`).
pub(crate) fn key_at(src: &str, offset: usize) -> String {
    let offset = offset.min(src.len());
    let start = src[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = src[offset..].find('\n').map_or(src.len(), |i| offset + i);
    let line = &src[start..end];
    if let Some(header) = table_header(line) {
        return header;
    }
    let Some(key) = line.split_once('=').and_then(|(k, _)| dotted_key(k)) else {
        return String::new();
    };
    let table = src[..start]
        .lines()
        .rev()
        .find_map(table_header)
        .unwrap_or_default();
    join(&table, &key)
}

/// The dotted name of a `[table]` or `[[array]]` header line.
fn table_header(line: &str) -> Option<String> {
    let l = line.trim();
    let inner = match l.strip_prefix("[[") {
        Some(rest) => rest.split_once("]]")?.0,
        None => l.strip_prefix('[')?.split_once(']')?.0,
    };
    dotted_key(inner)
}

/// `a.b."c d"` as `a.b.c d`; `None` unless every part is a bare or a
/// simply quoted key.
fn dotted_key(text: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in text.split('.') {
        let p = part.trim();
        let p = p
            .strip_prefix('"')
            .and_then(|q| q.strip_suffix('"'))
            .or_else(|| p.strip_prefix('\'').and_then(|q| q.strip_suffix('\'')))
            .unwrap_or(p);
        let bare = p
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
        if p.is_empty() || !bare {
            return None;
        }
        parts.push(p);
    }
    Some(parts.join("."))
}
