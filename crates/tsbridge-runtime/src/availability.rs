//! [`Availability`]: whether each workflow of the config can run on this
//! host, and if not, why.
//!
//! Decided once at start for every workflow (its executor's check of the
//! host: isolation it requires, a runtime it needs), with one exception: a
//! pool workflow whose pool failed to start is unavailable only until a
//! later start succeeds (see `Runtime::start`'s retries), so a pool that
//! failed on a passing cause (a package not yet installed, a file system
//! not yet mounted) does not need a restart of the server.

use std::collections::BTreeMap;
use std::sync::RwLock;

/// Per workflow: `Ok` or why it cannot run here. The set of names is fixed
/// when it is built; a name's answer may change ([`Availability::set`]).
#[derive(Debug, Default)]
pub(crate) struct Availability(BTreeMap<String, RwLock<Result<(), String>>>);

impl Availability {
    /// Adds (or replaces, while it is being built) a workflow's answer.
    pub(crate) fn insert(&mut self, name: String, answer: Result<(), String>) {
        self.0.insert(name, RwLock::new(answer));
    }

    /// A workflow's answer; `None` for a name the config does not have.
    pub(crate) fn get(&self, name: &str) -> Option<Result<(), String>> {
        self.0
            .get(name)
            .map(|a| a.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Whether the workflow can run here now (without copying a reason).
    pub(crate) fn is_available(&self, name: &str) -> bool {
        self.0
            .get(name)
            .is_some_and(|a| a.read().unwrap_or_else(|p| p.into_inner()).is_ok())
    }

    /// Changes a known workflow's answer; a name the config does not have
    /// is ignored.
    pub(crate) fn set(&self, name: &str, answer: Result<(), String>) {
        if let Some(a) = self.0.get(name) {
            *a.write().unwrap_or_else(|p| p.into_inner()) = answer;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_changes_only_for_a_known_name() {
        let mut a = Availability::default();
        a.insert(
            "pooled".into(),
            Err("its worker pool failed to start".into()),
        );
        assert!(!a.is_available("pooled"));
        assert_eq!(
            a.get("pooled"),
            Some(Err("its worker pool failed to start".into()))
        );
        a.set("pooled", Ok(()));
        assert!(a.is_available("pooled"));
        assert_eq!(a.get("pooled"), Some(Ok(())));
        a.set("other", Ok(()));
        assert_eq!(a.get("other"), None);
        assert!(!a.is_available("other"));
    }
}
