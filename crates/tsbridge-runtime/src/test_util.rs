//! Helpers shared by the crate's unit tests.

use std::collections::BTreeMap;

/// An environment (name -> value) from pairs.
pub(crate) fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
