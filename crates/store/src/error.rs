use capmesh_contract::ContractError;
use capmesh_types::{Cid, PeerId};
use capmesh_wire::VerifyError;

/// Why a record was not stored. Every refusal leaves the store untouched.
///
/// The messages carry their cause's text, so no variant names a `source`: an error chain
/// printed whole (`anyhow`'s `{:#}`) would say it twice.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("record refused ({code}): {0}", code = .0.code())]
    Verify(VerifyError),
    #[error("contract refused ({code}): {0}", code = .0.code())]
    Contract(ContractError),
    #[error(
        "record {id} has seq {got}, but seq {have} is already stored for this provider and capability"
    )]
    Stale { id: Cid, have: u64, got: u64 },
    #[error("{signer} already has {max} records here, the most this replica keeps per signer")]
    SignerCap { signer: PeerId, max: u64 },
    #[error("this replica holds its maximum of {max} records")]
    TotalCap { max: u64 },
    #[error("the replica at {} is in use by another process (one process at a time may open it)", .0.display())]
    Locked(std::path::PathBuf),
    #[error("storage failed: {0}")]
    Storage(sled::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the store is closed")]
    Closed,
}

impl From<VerifyError> for StoreError {
    fn from(e: VerifyError) -> Self {
        Self::Verify(e)
    }
}

impl From<ContractError> for StoreError {
    fn from(e: ContractError) -> Self {
        Self::Contract(e)
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        Self::Storage(e)
    }
}

impl StoreError {
    /// Stable machine name of the refusal.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Verify(e) => e.code(),
            Self::Contract(e) => e.code(),
            Self::Stale { .. } => "Stale",
            Self::SignerCap { .. } => "SignerCap",
            Self::TotalCap { .. } => "TotalCap",
            Self::Locked(_) => "Locked",
            Self::Storage(_) => "Storage",
            Self::Corrupt(_) => "Corrupt",
            Self::Closed => "Closed",
        }
    }
}
