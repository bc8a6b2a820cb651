//! What the testnet's test binaries share.

use std::{path::PathBuf, process::Command};

/// The `capmesh` binary of this tree, built with the same cargo and profile.
pub(crate) fn capmesh_bin() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "--locked", "-p", "capmesh", "--bin", "capmesh"]);
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    assert!(build.status().unwrap().success(), "building capmesh failed");
    let testnet = PathBuf::from(env!("CARGO_BIN_EXE_capmesh-testnet"));
    testnet.with_file_name(format!("capmesh{}", std::env::consts::EXE_SUFFIX))
}
