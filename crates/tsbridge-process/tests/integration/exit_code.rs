//! A non-zero exit code is reported as such, with the stderr tail in the error.

use crate::common;

use tsbridge_process::{ExitKind, JobError, JobSpec, run};
use tsbridge_proto::EndReason;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_is_reported() {
    for code in [0, 3, 42, 255] {
        let spec = JobSpec::builder("/bin/sh")
            .arg(common::fixture("exit-code.sh"))
            .arg(code.to_string())
            .envs(common::base_env())
            .build()
            .unwrap();
        let o = run(spec).await.unwrap();
        assert_eq!(o.exit, ExitKind::Code(code));
        assert_eq!(o.reason, EndReason::Exited);
        assert_eq!(o.stdout.head, format!("exiting with {code}\n").into_bytes());
        assert!(o.cpu < std::time::Duration::from_secs(10));
        match JobError::from_outcome(&o) {
            None => assert_eq!(code, 0),
            Some(JobError::Execution {
                exit_code,
                signal,
                stderr_tail,
            }) => {
                assert_eq!(exit_code, Some(code));
                assert_eq!(signal, None);
                assert_eq!(stderr_tail, "this goes to stderr\n");
            }
            Some(other) => panic!("unexpected {other:?}"),
        }
    }
}
