//! One child process from spawn to reap. See docs/design/termination.md.

pub mod capture;
pub mod ipc;
pub mod lineproto;
pub mod mask;
