//! examples/slurm/backup-array.sbatch run by bash as Slurm runs an array element (its
//! variables set, `scontrol` a stand-in that records what it was asked): the real
//! Slurm cluster test is `.ci/slurm-test`; this one signals the batch shell, which
//! that cluster cannot do on cue.

mod common;
use common::*;

use std::process::{Command, Stdio};

/// Slurm's time limit (and `--signal=B:TERM@300` before it) sends SIGTERM to the batch
/// shell: bash died of it while snapring ran, the element ended TIMEOUT and never
/// requeued itself, and the finalize job found units not committed. Now the shell
/// passes the signal on, snapring stops at a safe point (exit 3) and the element
/// requeues itself (`scontrol requeue JOB_TASK`).
#[test]
fn the_array_script_passes_sigterm_on_to_snapring_and_requeues_itself() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for d in 0..3 {
        for f in 0..20 {
            write(&src.join(format!("d{d}/f{f}")), b"data");
        }
    }
    std::fs::create_dir(t.path().join("backup")).unwrap();
    let bin_dir = t.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    std::os::unix::fs::symlink(bin(), bin_dir.join("snapring")).unwrap();
    let asked = t.path().join("scontrol.args");
    std::fs::write(
        bin_dir.join("scontrol"),
        format!("#!/bin/sh\necho \"$@\" >> {}\n", asked.display()),
    )
    .unwrap();
    chmod(&bin_dir.join("scontrol"), 0o755);
    let paused = t.path().join("paused");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/slurm/backup-array.sbatch");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let w = Command::new("bash")
        .arg(&script)
        .env("PATH", path)
        .env("SNAPRING_SOURCE", &src)
        .env("SNAPRING_DEST", t.path().join("backup"))
        .env("SNAPRING_FOLDER", "fs-1")
        .env("SNAPRING_CATALOG", "off")
        .env("SLURM_ARRAY_JOB_ID", "77")
        .env("SLURM_ARRAY_TASK_ID", "1")
        .env("SLURM_ARRAY_TASK_MIN", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "2")
        .env(
            "SNAPRING_FAILPOINTS",
            format!("shard.unit_started=pause:{}@1", paused.display()),
        )
        .env_remove("SNAPRING_RUN_ID")
        .env_remove("SLURM_RESTART_COUNT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&paused);
    let shell = rustix::process::Pid::from_raw(w.id() as i32).unwrap();
    rustix::process::kill_process(shell, rustix::process::Signal::TERM).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::fs::remove_file(&paused).unwrap();
    let o = w.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(
        err.contains("snapring worker exited 3 (retryable): requeueing element 1"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&asked).unwrap_or_default(),
        "requeue 77_1\n",
        "{err}"
    );
}
