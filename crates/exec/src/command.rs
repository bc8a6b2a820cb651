//! The command runtime: a program with JSON on stdin and stdout, in a process group of its own.

use std::{
    io,
    process::{ExitStatus, Stdio},
};

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use serde_json::Value;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    process::{Child, ChildStdin, Command},
};

use crate::{
    CommandSpec, ExecError,
    builtin::Produced,
    executor::{Collector, MAX_CHUNK_BYTES, prefix},
};

/// How much of the end of stderr is kept for the message of a failure.
pub(crate) const STDERR_TAIL_BYTES: usize = 4 * 1024;

/// A started program and its process group. Dropping it kills the whole group (SIGKILL), then
/// the program itself if it was not reaped (`kill_on_drop`): whether the run ended, timed out,
/// was cancelled, or its future was dropped, nothing of the group outlives it.
///
/// The group is killed while the program, its leader, is unreaped whenever the run is stopped
/// early, so its id cannot have been reused. After a normal exit the program is reaped first;
/// its group id stays reserved as long as any member lives, and once none does, killing it can
/// only miss (or, if the pid space wrapped around within that instant, hit a new group that took
/// the same id — a race this design accepts).
struct Group {
    pgid: Pid,
    child: Child,
}

impl Group {
    fn kill(&self) {
        kill_group(self.pgid);
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

fn kill_group(pgid: Pid) {
    match killpg(pgid, Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(%pgid, error = %e, "cannot kill a command's process group"),
    }
}

/// Runs `spec` once with `args` on stdin; what it writes to stdout goes to `out`. Cancel-safe:
/// dropping the future kills the process group (see [`Group`]).
pub(crate) async fn run(
    spec: &CommandSpec,
    args: &Value,
    mut out: Collector,
) -> Result<Produced, ExecError> {
    let Some((program, rest)) = spec.argv.split_first() else {
        return Err(ExecError::Config("a command's argv is empty".into()));
    };
    let mut input = serde_json::to_vec(args)
        .map_err(|e| ExecError::Config(format!("cannot encode the arguments: {e}")))?;
    input.push(b'\n');

    let mut command = Command::new(program);
    command
        .args(rest)
        .env_clear()
        .envs(&spec.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    let mut child = command.spawn().map_err(|e| {
        let place = spec.cwd.as_ref().map(|d| format!(" in {}", d.display())).unwrap_or_default();
        ExecError::Io(io::Error::new(e.kind(), format!("cannot start {program}{place}: {e}")))
    })?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let pid = child.id().and_then(|pid| i32::try_from(pid).ok());
    let Some(pid) = pid else {
        // Not reachable: the program was just started and not awaited. Kill it before leaving.
        drop(child);
        return Err(ExecError::Io(io::Error::other(format!("{program} has no process id"))));
    };
    let mut group = Group { pgid: Pid::from_raw(pid), child };
    let (Some(stdin), Some(stdout), Some(stderr)) = (stdin, stdout, stderr) else {
        return Err(ExecError::Io(io::Error::other(format!("{program} has no stdio pipes"))));
    };
    tracing::debug!(program, pid, "command started");

    let pgid = group.pgid;
    let child = &mut group.child;
    let (status, (), (), tail) = tokio::try_join!(
        // The run ends when the program exits: whatever it left in its group goes with it, which
        // also closes pipes such leftovers held (a background job holding stdout open would
        // otherwise keep the run going until its timeout).
        async {
            let status = child.wait().await.map_err(|e| {
                ExecError::Io(io::Error::new(e.kind(), format!("cannot wait for {program}: {e}")))
            })?;
            kill_group(pgid);
            Ok::<ExitStatus, ExecError>(status)
        },
        read_stdout(stdout, &mut out),
        async {
            write_stdin(stdin, &input).await;
            Ok(())
        },
        async { Ok(tail(stderr, STDERR_TAIL_BYTES).await) },
    )?;
    if !status.success() {
        let tail = prefix(&tail, STDERR_TAIL_BYTES);
        let tail = if tail.is_empty() { "nothing on stderr".to_owned() } else { tail };
        return Err(ExecError::Failed(format!("{program} ended with {status}; stderr: {tail}")));
    }
    out.finish()
}

/// Writes `input` and closes stdin. A program that exits or closes stdin without reading it
/// all is its own business: the error (a broken pipe) is not the run's.
async fn write_stdin(mut stdin: ChildStdin, input: &[u8]) {
    if let Err(e) = stdin.write_all(input).await {
        tracing::debug!(error = %e, "a command did not read all its arguments");
    }
    drop(stdin);
}

/// Reads stdout to its end into `out`, up to 16 KiB a read.
async fn read_stdout(
    mut stdout: impl AsyncRead + Unpin,
    out: &mut Collector,
) -> Result<(), ExecError> {
    let mut buffer = vec![0; MAX_CHUNK_BYTES];
    loop {
        let n = stdout.read(&mut buffer).await.map_err(|e| {
            ExecError::Io(io::Error::new(e.kind(), format!("cannot read a command's stdout: {e}")))
        })?;
        if n == 0 {
            return Ok(());
        }
        out.push(&buffer[..n]).await?;
    }
}

/// Reads `r` to its end (or its first error) and keeps the last `keep` bytes, starting at a
/// UTF-8 character boundary when the text is UTF-8.
async fn tail(mut r: impl AsyncRead + Unpin, keep: usize) -> Vec<u8> {
    let mut kept = Vec::with_capacity(keep.min(4096) * 2);
    let mut buffer = vec![0; 4096];
    loop {
        match r.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buffer[..n]);
                if kept.len() > keep * 2 {
                    kept.drain(..kept.len() - keep);
                }
            }
        }
    }
    if kept.len() > keep {
        kept.drain(..kept.len() - keep);
    }
    // Do not start inside a character: skip continuation bytes.
    let start = kept.iter().take(3).take_while(|&&b| b & 0xC0 == 0x80).count();
    kept.drain(..start);
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tail_keeps_the_end() {
        let text = format!("{}END", "x".repeat(10_000));
        let kept = tail(text.as_bytes(), 100).await;
        assert_eq!(kept.len(), 100);
        assert!(kept.ends_with(b"END"));
        let short = tail(&b"short"[..], 100).await;
        assert_eq!(short, b"short");
        // 'é' is two bytes: a cut through it drops the continuation byte.
        let kept = tail("éééé".as_bytes(), 3).await;
        assert_eq!(kept, "é".as_bytes());
    }
}
