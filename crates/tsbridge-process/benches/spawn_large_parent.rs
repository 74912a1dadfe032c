//! Spawn cost with a large parent: the same spawn + wait of `/bin/true`
//! as the `spawn` bench, in a process holding 1 GiB it has written (4 KiB
//! pages, as a server's heap), against a bare fork + exec with a pre_exec
//! hook (what std's spawn does once there is one). A fork copies the page
//! tables of that gigabyte and the parent then takes a copy-on-write
//! fault on each page it writes; the engine's vfork-style clone (x86_64)
//! does neither. Each iteration rewrites one byte per page after the
//! spawn, so the copy-on-write faults are counted where they fall. Its
//! own binary, so that the gigabyte does not weigh on the other benches.
//!
//! Run: `cargo bench -p tsbridge-process --bench spawn_large_parent`.

use std::sync::{Mutex, OnceLock};

mod common;

const BALLAST: usize = 1 << 30;

fn main() {
    ballast();
    divan::main();
}

/// 1 GiB, written, in 4 KiB pages.
fn ballast() -> &'static Mutex<Vec<u8>> {
    static B: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    B.get_or_init(|| {
        let mut v = vec![0u8; BALLAST];
        // SAFETY: madvise on the live buffer's pages.
        unsafe {
            let start = (v.as_mut_ptr() as usize + 4095) & !4095;
            libc::madvise(
                start as *mut libc::c_void,
                BALLAST - 8192,
                libc::MADV_NOHUGEPAGE,
            );
        }
        for p in v.iter_mut().step_by(4096) {
            *p = 1;
        }
        Mutex::new(v)
    })
}

/// Writes one byte per page of the ballast, as a busy server writes its
/// heap between spawns.
fn rewrite() {
    if let Ok(mut v) = ballast().lock() {
        for p in v.iter_mut().step_by(4096) {
            *p = p.wrapping_add(1);
        }
    }
}

#[divan::bench(sample_count = 50)]
fn spawn_true_engine_then_rewrite() {
    common::true_engine();
    rewrite();
}

#[divan::bench(sample_count = 50)]
fn spawn_true_std_fork_pre_exec_then_rewrite() {
    common::true_std_fork_pre_exec();
    rewrite();
}

/// The floor of the rewrite itself (no spawn: no copy-on-write).
#[divan::bench(sample_count = 50)]
fn rewrite_only() {
    rewrite();
}
