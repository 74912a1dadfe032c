//! A 1 GiB stdout flood captured with max_output = 16 MiB: the dropped count
//! is exact (total - kept), head and tail hold the first and last 8 MiB of
//! the stream byte for byte, and the capturing process's peak RSS (measured
//! in a clean probe process, VmHWM) stays under 64 MiB.

use crate::common;

use std::process::Command;

use sha2::{Digest, Sha256};

const GIB: u64 = 1 << 30;
const CAP: usize = 16 << 20;

/// Byte i of flood.js's stream.
fn pattern(range: std::ops::Range<u64>) -> Vec<u8> {
    range.map(|i| b'A' + ((i % (1 << 20)) % 26) as u8).collect()
}

#[test]
fn one_gib_flood_is_bounded_and_exact() {
    let out = Command::new(env!("CARGO_BIN_EXE_tsbridge-engine-probe"))
        .args(["--max-output", &CAP.to_string(), "--"])
        .arg(common::node())
        .arg(common::fixture("flood.js"))
        .arg(GIB.to_string())
        .output()
        .expect("probe runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let json = stdout.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["exit_code"], 0, "{v}");
    assert_eq!(v["stdout_total"], GIB);
    let half = (CAP / 2) as u64;
    assert_eq!(v["head_len"], half);
    assert_eq!(v["tail_len"], half);
    assert_eq!(
        v["stdout_dropped"],
        GIB - CAP as u64,
        "dropped = total - kept"
    );
    let head = hex::encode(Sha256::digest(pattern(0..half)));
    let tail = hex::encode(Sha256::digest(pattern(GIB - half..GIB)));
    assert_eq!(v["head_sha256"], head.as_str(), "head is the first 8 MiB");
    assert_eq!(v["tail_sha256"], tail.as_str(), "tail is the last 8 MiB");
    let hwm_kib = v["vm_hwm_kib"].as_u64().unwrap();
    assert!(hwm_kib > 0);
    assert!(
        hwm_kib < 64 * 1024,
        "tsbridge peak RSS {hwm_kib} KiB >= 64 MiB"
    );
    eprintln!("flood: peak RSS {} KiB, wall {} ms", hwm_kib, v["wall_ms"]);
}
