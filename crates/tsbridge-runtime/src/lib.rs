//! Jobs: the dispatcher (the one writer of job state), the priority queue,
//! retries, warm worker pools, the job store and the event bus.

pub mod pool;
