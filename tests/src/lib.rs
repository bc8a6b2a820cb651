//! Harness of the system tests: the real `capmesh` binary, driven as a user drives it, each
//! test with its own temporary data directory. Multi-node harnesses join here as the node grows.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

/// Path of the `capmesh` binary, built once per test run with the same cargo and profile.
pub fn capmesh_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // Same profile as these tests, and the same lock file, so the binary is the one this
        // run built from this tree.
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "--locked", "-p", "capmesh", "--bin", "capmesh"]);
        if !cfg!(debug_assertions) {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building the capmesh binary failed");
        // target/debug/deps/<this test> -> target/debug/capmesh
        let exe = std::env::current_exe().expect("test executable path");
        let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
        dir.join(format!("capmesh{}", std::env::consts::EXE_SUFFIX))
    })
}

/// A user of one data directory.
#[derive(Debug)]
pub struct User {
    pub data_dir: tempfile::TempDir,
}

impl User {
    pub fn new() -> Self {
        Self { data_dir: tempfile::tempdir().expect("temp dir") }
    }

    /// `capmesh --data-dir <dir> args…` with a clean environment (no CAPMESH_DATA_DIR).
    pub fn run(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(capmesh_bin());
        cmd.arg("--data-dir").arg(self.data_dir.path()).args(args).env_remove("CAPMESH_DATA_DIR");
        Run::of(cmd.output().expect("capmesh runs"))
    }
}

impl Default for User {
    fn default() -> Self {
        Self::new()
    }
}

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn of(out: Output) -> Self {
        Self {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn success(self) -> String {
        assert!(self.ok, "expected success, stderr:\n{}", self.stderr);
        self.stdout
    }

    /// Asserts failure and returns stderr.
    #[track_caller]
    pub fn failure(self) -> String {
        assert!(!self.ok, "expected failure, stdout:\n{}", self.stdout);
        self.stderr
    }
}

/// specs/ of this repository.
pub fn specs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../specs")
}
