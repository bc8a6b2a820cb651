//! Harness of the system tests: the real `capmesh` binary, driven as a user drives it, each
//! test with its own temporary data directory. Multi-node harnesses join here as the node grows.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{OnceLock, mpsc},
    thread,
    time::Duration,
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
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(capmesh_bin());
        cmd.arg("--data-dir").arg(self.data_dir.path()).args(args).env_remove("CAPMESH_DATA_DIR");
        cmd
    }

    /// Runs `capmesh args…` (see [`User::command`]) to the end.
    pub fn run(&self, args: &[&str]) -> Run {
        Run::of(self.command(args).output().expect("capmesh runs"))
    }

    /// Runs `capmesh args…` with `input` on stdin.
    pub fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Run {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("capmesh runs");
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // Written from a thread so that a command that stops reading cannot block the test.
        let input = input.to_vec();
        let writer = thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().expect("capmesh runs");
        let _ = writer.join();
        Run::of(out)
    }

    /// Runs `capmesh args…` and panics if it has not ended within `limit` (the child is killed):
    /// for commands that must fail fast rather than wait.
    #[track_caller]
    pub fn run_within(&self, limit: Duration, args: &[&str]) -> Run {
        let mut child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("capmesh runs");
        // Readers end at EOF, i.e. when the child exits (or is killed).
        let read_all = |mut pipe: Box<dyn Read + Send>, done: Option<mpsc::Sender<()>>| {
            thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = pipe.read_to_end(&mut buf);
                if let Some(done) = done {
                    let _ = done.send(());
                }
                buf
            })
        };
        let (done_tx, done_rx) = mpsc::channel();
        let stdout = read_all(Box::new(child.stdout.take().expect("piped")), Some(done_tx));
        let stderr = read_all(Box::new(child.stderr.take().expect("piped")), None);
        if done_rx.recv_timeout(limit).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = stderr.join().unwrap_or_default();
            panic!(
                "capmesh {args:?} still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        let status = child.wait().expect("capmesh ends");
        Run::of(Output {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        })
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
