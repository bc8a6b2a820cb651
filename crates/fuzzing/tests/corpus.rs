//! Replays every file of `fuzz/corpus/<target>/` through its target, so the inputs the fuzzer
//! found (and the crashes it found, kept as regressions) are checked by a normal `cargo test`.

use std::{
    collections::BTreeSet,
    fs,
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
};

use capmesh_fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn replay(name: &str) {
    let (_, target) = TARGETS.iter().find(|(n, _)| *n == name).expect("a target of that name");
    let dir = fuzz_dir().join("corpus").join(name);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("no corpus for {name} at {}: {e}", dir.display()))
        .map(|entry| entry.expect("a readable directory").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus of {name} at {} is empty", dir.display());
    let failed: Vec<String> = files
        .iter()
        .filter(|path| {
            let data = fs::read(path).expect("a readable corpus file");
            panic::catch_unwind(AssertUnwindSafe(|| target(&data))).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{name}: {} of {} inputs failed:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

macro_rules! corpus_tests {
    ($($name:ident)*) => {
        $(#[test]
        fn $name() {
            replay(stringify!($name));
        })*

        /// Every target has a test here and a wrapper in fuzz/fuzz_targets, and nothing else does.
        #[test]
        fn every_target_is_replayed() {
            let here: BTreeSet<&str> = [$(stringify!($name)),*].into();
            let listed: BTreeSet<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
            assert_eq!(here, listed);
            let wrappers: BTreeSet<String> = fs::read_dir(fuzz_dir().join("fuzz_targets"))
                .expect("fuzz/fuzz_targets")
                .map(|entry| {
                    let path = entry.expect("a readable directory").path();
                    path.file_stem().expect("a file name").to_string_lossy().into_owned()
                })
                .collect();
            assert_eq!(wrappers, listed.iter().map(|s| s.to_string()).collect());
        }
    };
}

corpus_tests!(decode records kinds contract policy rpc_frame api_body);
