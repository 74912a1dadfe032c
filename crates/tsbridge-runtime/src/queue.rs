//! The ready queue of the dispatcher: jobs waiting for a slot, ordered by
//! priority (highest first), then by id (oldest first: ids are UUIDv7). One
//! ordered set per workflow, so that a workflow at its concurrency limit is
//! skipped without scanning its jobs.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use tsbridge_proto::JobId;

type Key = (Reverse<i32>, JobId);

/// Jobs ready to run, per workflow.
#[derive(Debug, Default)]
pub struct ReadyQueue {
    by_workflow: HashMap<String, BTreeSet<Key>>,
    index: HashMap<JobId, (String, i32)>,
}

impl ReadyQueue {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn contains(&self, id: JobId) -> bool {
        self.index.contains_key(&id)
    }

    pub fn push(&mut self, id: JobId, workflow: &str, priority: i32) {
        if self.index.contains_key(&id) {
            return;
        }
        self.by_workflow
            .entry(workflow.to_owned())
            .or_default()
            .insert((Reverse(priority), id));
        self.index.insert(id, (workflow.to_owned(), priority));
    }

    /// Removes a job; false if it was not queued.
    pub fn remove(&mut self, id: JobId) -> bool {
        let Some((wf, prio)) = self.index.remove(&id) else {
            return false;
        };
        if let Some(set) = self.by_workflow.get_mut(&wf) {
            set.remove(&(Reverse(prio), id));
            if set.is_empty() {
                self.by_workflow.remove(&wf);
            }
        }
        true
    }

    /// Takes the best job among the workflows `may_run` accepts.
    pub fn pop(&mut self, mut may_run: impl FnMut(&str) -> bool) -> Option<(JobId, String)> {
        let best = self
            .by_workflow
            .iter()
            .filter(|(wf, _)| may_run(wf))
            .filter_map(|(wf, set)| set.first().map(|k| (*k, wf)))
            .min_by_key(|(k, _)| *k)
            .map(|(k, wf)| (k.1, wf.clone()))?;
        self.remove(best.0);
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_then_fifo_with_blocked_workflows() {
        let mut q = ReadyQueue::new();
        let ids: Vec<JobId> = (0..5).map(|_| JobId::new()).collect();
        q.push(ids[0], "a", 0);
        q.push(ids[1], "b", 5);
        q.push(ids[2], "a", 5);
        q.push(ids[3], "a", 0);
        q.push(ids[4], "b", -1);
        assert_eq!(q.len(), 5);
        // b is at its limit: the best of a.
        assert_eq!(q.pop(|wf| wf != "b"), Some((ids[2], "a".to_owned())));
        assert_eq!(q.pop(|_| true), Some((ids[1], "b".to_owned())));
        assert!(q.remove(ids[3]));
        assert!(!q.remove(ids[3]));
        assert_eq!(q.pop(|_| true), Some((ids[0], "a".to_owned())));
        assert_eq!(q.pop(|wf| wf == "a"), None);
        assert_eq!(q.pop(|_| true), Some((ids[4], "b".to_owned())));
        assert!(q.is_empty());
    }
}
