//! Shell metacharacters, quotes, newlines and non-UTF-8 bytes in arguments
//! reach the child verbatim: no shell is involved anywhere.

use crate::common;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use tsbridge_process::run;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_arguments_arrive_verbatim() {
    let args: Vec<OsString> = vec![
        "$(rm -rf /)".into(),
        "; ls".into(),
        "a | b".into(),
        "`id`".into(),
        "'single' \"double\"".into(),
        "line1\nline2".into(),
        "".into(),
        "*".into(),
        "$HOME".into(),
        OsString::from_vec(vec![0xff, 0xfe, b'x', 0x80]),
    ];
    let spec = common::node_fixture("env-argv.js")
        .args(args.clone())
        .build()
        .unwrap();
    let o = run(spec).await.unwrap();
    assert!(
        o.exit.success(),
        "{:?}",
        String::from_utf8_lossy(&o.stderr.head)
    );
    let v = o
        .result
        .expect("env-argv prints JSON, which is the fallback result");
    let got: Vec<Vec<u8>> = v["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| hex::decode(h.as_str().unwrap()).unwrap())
        .collect();
    let want: Vec<Vec<u8>> = args.into_iter().map(|a| a.into_vec()).collect();
    assert_eq!(got, want);
}
