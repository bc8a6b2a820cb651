//! The command runtime with real programs (/bin/sh, /bin/cat, /usr/bin/yes).

use std::time::Duration;

use capmesh_exec::{CommandSpec, ExecError, Executor, Output, Run, Runtime};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::util::{
    collect, contract, open_contract, read_pids, run, streaming_contract, wait_dead,
};

fn sh(script: &str) -> CommandSpec {
    CommandSpec::new(["/bin/sh", "-c", script])
}

fn executor(spec: CommandSpec) -> Executor {
    Executor::new(open_contract("test.command"), Runtime::Command(spec)).unwrap()
}

/// A command that starts `sleep 1000` in the background, writes "SHELL_PID SLEEP_PID\n" to
/// `$PIDFILE`, then `rest`.
fn with_grandchild(dir: &tempfile::TempDir, background: &str, rest: &str) -> CommandSpec {
    let mut spec = sh(&format!(
        "/bin/sleep 1000 {background} & echo $$ $! > \"$PIDFILE.tmp\"; \
         /bin/mv \"$PIDFILE.tmp\" \"$PIDFILE\"; {rest}"
    ));
    spec.env.insert("PIDFILE".into(), dir.path().join("pids").display().to_string());
    spec
}

#[tokio::test]
async fn cat_echoes_the_arguments_under_a_contract() {
    let schema = json!({
        "type": "object",
        "properties": {"x": {"type": "integer"}, "s": {"type": "string"}},
        "required": ["x"],
        "additionalProperties": false,
    });
    let c = contract("test.cat", schema.clone(), schema, false);
    let e = Executor::new(c, Runtime::Command(CommandSpec::new(["/bin/cat"]))).unwrap();
    let args = json!({"x": 5, "s": "héllo \"there\"\n"});
    assert_eq!(e.run(args.clone(), run()).await.unwrap(), Output::Value(args));
    assert_eq!(e.runs(), 1);

    let err = e.run(json!({"x": "five"}), run()).await.unwrap_err();
    assert!(matches!(&err, ExecError::InvalidArgs(v) if v.len() == 1), "{err:?}");
    assert_eq!(e.runs(), 1, "invalid arguments start nothing");
}

#[tokio::test]
async fn invalid_arguments_start_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let c = contract("test.strict", json!({"type": "object", "required": ["x"]}), json!({}), false);
    let spec = sh(&format!("/usr/bin/touch {}; echo '{{}}'", marker.display()));
    let e = Executor::new(c, Runtime::Command(spec)).unwrap();
    let err = e.run(json!({"y": 1}), run()).await.unwrap_err();
    assert_eq!(err.code(), capmesh_wire::Code::InvalidArgs);
    assert_eq!(e.runs(), 0);
    assert!(!marker.exists());
    e.run(json!({"x": 1}), run()).await.unwrap();
    assert!(marker.exists());
    assert_eq!(e.runs(), 1);
}

#[tokio::test]
async fn an_output_that_breaks_the_contract_is_refused_and_kept() {
    let c = contract(
        "test.out",
        json!({"type": "object"}),
        json!({"type": "object", "required": ["x"]}),
        false,
    );
    let e = Executor::new(c, Runtime::Command(sh(r#"echo '{"y": 1}'"#))).unwrap();
    let err = e.run(json!({}), run()).await.unwrap_err();
    let ExecError::OutputInvalid { output, violations } = &err else { panic!("{err:?}") };
    assert_eq!(output, &json!({"y": 1}));
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(err.code(), capmesh_wire::Code::OutputInvalid);
    assert_eq!(e.runs(), 1);
}

#[tokio::test]
async fn the_environment_is_cleared() {
    let c = contract(
        "test.env",
        json!({"type": "object"}),
        json!({
            "type": "object",
            "properties": {
                "home": {"type": "string"},
                "foo": {"type": "string"},
                "cargo": {"type": "string"},
            },
            "required": ["home", "foo", "cargo"],
            "additionalProperties": false,
        }),
        false,
    );
    let mut spec = sh(
        r#"printf '{"home": "%s", "foo": "%s", "cargo": "%s"}' "$HOME" "$FOO" "$CARGO_MANIFEST_DIR""#,
    );
    spec.env.insert("FOO".into(), "bar baz".into());
    // The test process has these; the program must not.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    let e = Executor::new(c, Runtime::Command(spec)).unwrap();
    let out = e.run(json!({}), run()).await.unwrap();
    assert_eq!(out, Output::Value(json!({"home": "", "foo": "bar baz", "cargo": ""})));
}

#[tokio::test]
async fn env_prints_only_what_is_configured() {
    // /usr/bin/env prints its environment, one NAME=value a line; wrapped into a JSON string.
    let mut spec = sh(r#"printf '"%s"' "$(/usr/bin/env | /usr/bin/sort | /usr/bin/tr '\n' ' ')""#);
    spec.env.insert("ONLY".into(), "this".into());
    let c = contract("test.env2", json!({"type": "object"}), json!({"type": "string"}), false);
    let e = Executor::new(c, Runtime::Command(spec)).unwrap();
    let Output::Value(out) = e.run(json!({}), run()).await.unwrap() else { panic!() };
    let vars: Vec<&str> = out.as_str().unwrap().split_whitespace().collect();
    assert!(vars.contains(&"ONLY=this"), "{vars:?}");
    // Besides ours, only what the shell itself sets (PWD, and a default PATH for some shells).
    for var in &vars {
        let name = var.split('=').next().unwrap();
        assert!(["ONLY", "PWD", "PATH", "OLDPWD", "SHLVL", "_"].contains(&name), "{vars:?}");
    }
    assert!(!vars.iter().any(|v| v.starts_with("HOME=") || v.starts_with("CARGO")), "{vars:?}");
}

#[tokio::test]
async fn the_working_directory_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = sh(r#"printf '{"cwd": "%s"}' "$(pwd -P)""#);
    spec.cwd = Some(dir.path().to_owned());
    let e = executor(spec);
    let out = e.run(json!({}), run()).await.unwrap();
    let real = dir.path().canonicalize().unwrap();
    assert_eq!(out, Output::Value(json!({"cwd": real.display().to_string()})));

    let mut spec = sh("true");
    spec.cwd = Some(dir.path().join("missing"));
    let err = executor(spec).run(json!({}), run()).await.unwrap_err();
    assert!(matches!(&err, ExecError::Io(_)), "{err:?}");
    assert!(err.to_string().contains("missing"), "{err}");
}

#[tokio::test]
async fn a_program_that_cannot_start_is_an_internal_retryable_error() {
    let e = executor(CommandSpec::new(["/nonexistent/program"]));
    let err = e.run(json!({}), run()).await.unwrap_err();
    assert!(matches!(&err, ExecError::Io(_)), "{err:?}");
    assert_eq!(err.code(), capmesh_wire::Code::Internal);
    assert!(err.retryable());
    assert!(err.to_string().contains("/nonexistent/program"), "{err}");
}

#[tokio::test]
async fn a_hanging_command_is_killed_at_its_timeout_with_its_grandchild() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = with_grandchild(&dir, "", "wait");
    spec.timeout_ms = 3000;
    let e = executor(spec);
    // The runtime's limit is the smaller one.
    let err = e.run(json!({}), run()).await.unwrap_err();
    assert!(matches!(err, ExecError::Timeout(d) if d == Duration::from_millis(3000)), "{err:?}");
    assert!(err.retryable());
    let pids = read_pids(&dir.path().join("pids")).await;
    assert_eq!(pids.len(), 2);
    wait_dead(&pids).await;
}

#[tokio::test]
async fn the_callers_timeout_applies_when_smaller() {
    let e = executor(sh("exec /bin/sleep 1000"));
    let limit = Duration::from_millis(300);
    let err = e.run(json!({}), Run::new(limit, CancellationToken::new())).await.unwrap_err();
    assert!(matches!(err, ExecError::Timeout(d) if d == limit), "{err:?}");
}

#[tokio::test]
async fn cancel_kills_the_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let e = executor(with_grandchild(&dir, "", "wait"));
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let (e, cancel) = (e.clone(), cancel.clone());
        async move { e.run(json!({}), Run::new(Duration::from_secs(1000), cancel)).await }
    });
    let pids = read_pids(&dir.path().join("pids")).await;
    cancel.cancel();
    let err = task.await.unwrap().unwrap_err();
    assert!(matches!(err, ExecError::Cancelled), "{err:?}");
    wait_dead(&pids).await;
}

#[tokio::test]
async fn dropping_the_run_kills_the_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let e = executor(with_grandchild(&dir, "", "wait"));
    let task = tokio::spawn({
        let e = e.clone();
        async move { e.run(json!({}), run()).await }
    });
    let pids = read_pids(&dir.path().join("pids")).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    wait_dead(&pids).await;
}

#[tokio::test]
async fn what_a_command_leaves_behind_is_killed_when_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    // The background sleep keeps stdout open: the run must still end when the shell exits.
    let e = executor(with_grandchild(&dir, "", r#"echo '{"done": true}'"#));
    let out = e.run(json!({}), run()).await.unwrap();
    assert_eq!(out, Output::Value(json!({"done": true})));
    wait_dead(&read_pids(&dir.path().join("pids")).await).await;

    let dir = tempfile::tempdir().unwrap();
    let e = executor(with_grandchild(&dir, ">/dev/null 2>&1", r#"echo '{"done": 2}'"#));
    let out = e.run(json!({}), run()).await.unwrap();
    assert_eq!(out, Output::Value(json!({"done": 2})));
    wait_dead(&read_pids(&dir.path().join("pids")).await).await;
}

#[tokio::test]
async fn a_non_zero_exit_fails_with_the_stderr_tail() {
    let e = executor(sh("echo '{}'; echo oops >&2; exit 3"));
    let err = e.run(json!({}), run()).await.unwrap_err();
    let ExecError::Failed(message) = &err else { panic!("{err:?}") };
    assert!(message.contains("exit status: 3"), "{message}");
    assert!(message.contains("oops"), "{message}");
    assert_eq!(err.code(), capmesh_wire::Code::Failed);
    assert!(!err.retryable());

    // Only the end of a long stderr is kept.
    let e = executor(sh(
        "i=0; while [ $i -lt 3000 ]; do echo line$i >&2; i=$((i+1)); done; echo LAST >&2; exit 1",
    ));
    let err = e.run(json!({}), run()).await.unwrap_err();
    let ExecError::Failed(message) = &err else { panic!("{err:?}") };
    assert!(message.contains("LAST") && message.contains("line2999"), "{message}");
    assert!(!message.contains("line0\n") && !message.contains("line100\n"), "{message}");
    assert!(message.len() < 4096 + 256, "{} bytes", message.len());

    let err = executor(sh("kill -9 $$")).run(json!({}), run()).await.unwrap_err();
    let ExecError::Failed(message) = &err else { panic!("{err:?}") };
    assert!(message.contains("signal: 9"), "{message}");
}

#[tokio::test]
async fn output_that_is_not_json_fails() {
    let err = executor(sh("echo hello")).run(json!({}), run()).await.unwrap_err();
    let ExecError::Failed(message) = &err else { panic!("{err:?}") };
    assert!(message.contains("not one JSON value") && message.contains("hello"), "{message}");
    let err = executor(sh("true")).run(json!({}), run()).await.unwrap_err();
    assert!(matches!(err, ExecError::Failed(_)), "{err:?}");
}

#[tokio::test]
async fn output_over_the_cap_fails_and_stops_the_program() {
    // `yes` never stops by itself: the cap must kill it.
    let mut spec = CommandSpec::new(["/usr/bin/yes"]);
    spec.max_output_bytes = 10_000;
    let err = executor(spec).run(json!({}), run()).await.unwrap_err();
    assert!(matches!(&err, ExecError::Failed(m) if m == "output over 10000 bytes"), "{err:?}");

    // `"aaaa"` and a newline are 7 bytes: allowed at 7, refused at 6.
    let mut spec = sh(r#"echo '"aaaa"'"#);
    spec.max_output_bytes = 7;
    assert_eq!(
        executor(spec.clone()).run(json!({}), run()).await.unwrap(),
        Output::Value(json!("aaaa"))
    );
    spec.max_output_bytes = 6;
    let err = executor(spec).run(json!({}), run()).await.unwrap_err();
    assert!(matches!(&err, ExecError::Failed(m) if m == "output over 6 bytes"), "{err:?}");
}

#[tokio::test]
async fn a_program_that_ignores_its_stdin_still_succeeds() {
    let e = executor(sh(r#"echo '{"ok": true}'"#));
    let args = json!({"big": "x".repeat(1 << 20)});
    assert_eq!(e.run(args, run()).await.unwrap(), Output::Value(json!({"ok": true})));
}

#[tokio::test]
async fn the_arguments_arrive_as_one_line_of_json() {
    let e = executor(sh(r#"read -r line; printf '{"line": %s}' "$line""#));
    let args = json!({"a": [1, 2], "b": "c"});
    assert_eq!(e.run(args.clone(), run()).await.unwrap(), Output::Value(json!({"line": args})));
}

#[tokio::test]
async fn a_streaming_command_forwards_stdout_in_order() {
    let spec = sh("echo one; /bin/sleep 0.1; echo two; /bin/sleep 0.1; echo three");
    let e = Executor::new(streaming_contract("test.stream"), Runtime::Command(spec)).unwrap();
    let (tx, rx) = mpsc::channel(1);
    let receiver = tokio::spawn(collect(rx));
    let out = e.run(json!({}), run().with_chunks(tx)).await.unwrap();
    let chunks = receiver.await.unwrap();
    assert_eq!(out, Output::Streamed { chunks: chunks.len() as u64 });
    assert!(!chunks.is_empty() && chunks.iter().all(|c| !c.is_empty()));
    assert_eq!(chunks.concat(), b"one\ntwo\nthree\n");
}

#[tokio::test]
async fn a_streaming_command_splits_large_reads_and_keeps_the_cap() {
    // 100 000 bytes, in chunks of at most 16 KiB.
    let spec = sh("/usr/bin/head -c 100000 /dev/zero");
    let e = Executor::new(streaming_contract("test.stream"), Runtime::Command(spec)).unwrap();
    let (tx, rx) = mpsc::channel(4);
    let receiver = tokio::spawn(collect(rx));
    let out = e.run(json!({}), run().with_chunks(tx)).await.unwrap();
    let chunks = receiver.await.unwrap();
    assert_eq!(out, Output::Streamed { chunks: chunks.len() as u64 });
    assert!(chunks.iter().all(|c| c.len() <= capmesh_exec::MAX_CHUNK_BYTES));
    assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), 100_000);

    let mut spec = CommandSpec::new(["/usr/bin/yes"]);
    spec.max_output_bytes = 50_000;
    let e = Executor::new(streaming_contract("test.stream"), Runtime::Command(spec)).unwrap();
    let (tx, rx) = mpsc::channel(4);
    let receiver = tokio::spawn(collect(rx));
    let err = e.run(json!({}), run().with_chunks(tx)).await.unwrap_err();
    assert!(matches!(&err, ExecError::Failed(m) if m == "output over 50000 bytes"), "{err:?}");
    let sent: usize = receiver.await.unwrap().iter().map(Vec::len).sum();
    assert!(sent <= 50_000, "{sent}");
}

#[tokio::test]
async fn a_streaming_command_that_fails_after_some_chunks_fails() {
    let spec = sh("echo partial; exit 2");
    let e = Executor::new(streaming_contract("test.stream"), Runtime::Command(spec)).unwrap();
    let (tx, rx) = mpsc::channel(4);
    let receiver = tokio::spawn(collect(rx));
    let err = e.run(json!({}), run().with_chunks(tx)).await.unwrap_err();
    assert!(matches!(&err, ExecError::Failed(m) if m.contains("exit status: 2")), "{err:?}");
    assert_eq!(receiver.await.unwrap().concat(), b"partial\n");
}

#[test]
fn a_misconfigured_command_is_refused() {
    for spec in [
        CommandSpec::new(Vec::<String>::new()),
        CommandSpec { timeout_ms: 0, ..CommandSpec::new(["/bin/true"]) },
        CommandSpec { max_output_bytes: 0, ..CommandSpec::new(["/bin/true"]) },
    ] {
        let err = Executor::new(open_contract("test.bad"), Runtime::Command(spec)).unwrap_err();
        assert!(matches!(err, ExecError::Config(_)), "{err:?}");
        assert_eq!(err.code(), capmesh_wire::Code::Internal);
    }
}
