//! Integration tests of capmesh-net: real nodes in one process, on 127.0.0.1 only.
//!
//! Timeouts in these tests are hang guards, never assertions on speed. Set `RUST_LOG` (e.g.
//! `RUST_LOG=capmesh_net=debug,libp2p_kad=debug`) to see the nodes' logs.

mod gossip;
mod joining;
mod kad;
mod metrics;
mod relay;
mod rpc;
mod trim;
mod util;

/// Installs a log subscriber once when `RUST_LOG` is set.
pub(crate) fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}
