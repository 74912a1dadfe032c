//! Warm worker pools (being written).
