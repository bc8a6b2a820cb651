//! What is wrong with a plan: every [`Violation`], each with the JSON Pointer of its place in
//! the plan document and a stable [`Kind`].

use std::fmt;

/// Which rule a violation breaks. [`Kind::code`] is the stable name used in
/// `specs/examples/plans/expected.json` and by tools; [`Kind::in_schema`] says whether
/// `specs/schemas/plan/Plan.json` catches it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Kind {
    /// Not JSON / YAML, duplicate member names, or a value JSON cannot hold.
    Syntax,
    /// Over [`MAX_PLAN_BYTES`](crate::MAX_PLAN_BYTES) or nested deeper than
    /// [`MAX_DEPTH`](crate::MAX_DEPTH).
    TooLarge,
    /// A required member is absent.
    Missing,
    /// A member the format does not define.
    Unknown,
    /// A value of the wrong JSON type.
    WrongType,
    /// A value of the right type out of its range or pattern.
    BadValue,
    /// Not a reference (`/inputs/<name>…`, `/steps/<name>…`, `/item…`, `/index`, `/acc…`) or
    /// not a JSON Pointer.
    BadPointer,
    /// A step that is not exactly one of call, map, reduce, join.
    StepKind,
    /// More members than a bound allows (steps, inputs, bindings, …).
    TooMany,
    /// A reference to an input or step that does not exist, or to `/item`, `/index`, `/acc`
    /// where they are not defined.
    Unresolved,
    /// Steps that depend on each other in a circle.
    Cycle,
    /// A binding's target that cannot be filled (overlaps another, goes through a literal
    /// that is not an object or array, or replaces `args` given literally).
    BadTarget,
    /// A reference's path that cannot exist in what it refers to.
    Implausible,
    /// A `map` or `reduce` over something that is certainly not a list.
    NotAList,
    /// A literal list with more than [`MAX_MAP_ITEMS`](crate::MAX_MAP_ITEMS) items under a
    /// `map` or `reduce`.
    TooManyItems,
    /// An input's `schema` that is not a valid JSON Schema.
    BadSchema,
    /// A capability whose contract the resolver does not know (or that does not hash to the id).
    UnknownContract,
    /// A query that resolved to no capability fitting the step.
    NoCandidate,
    /// A wiring the schemas prove wrong: what is produced cannot be what is accepted.
    Incompatible,
    /// Literal arguments the capability's input schema refuses.
    InvalidArgs,
}

impl Kind {
    pub const ALL: [Kind; 20] = [
        Kind::Syntax,
        Kind::TooLarge,
        Kind::Missing,
        Kind::Unknown,
        Kind::WrongType,
        Kind::BadValue,
        Kind::BadPointer,
        Kind::StepKind,
        Kind::TooMany,
        Kind::Unresolved,
        Kind::Cycle,
        Kind::BadTarget,
        Kind::Implausible,
        Kind::NotAList,
        Kind::TooManyItems,
        Kind::BadSchema,
        Kind::UnknownContract,
        Kind::NoCandidate,
        Kind::Incompatible,
        Kind::InvalidArgs,
    ];

    /// Stable name.
    pub const fn code(self) -> &'static str {
        match self {
            Kind::Syntax => "Syntax",
            Kind::TooLarge => "TooLarge",
            Kind::Missing => "Missing",
            Kind::Unknown => "Unknown",
            Kind::WrongType => "WrongType",
            Kind::BadValue => "BadValue",
            Kind::BadPointer => "BadPointer",
            Kind::StepKind => "StepKind",
            Kind::TooMany => "TooMany",
            Kind::Unresolved => "Unresolved",
            Kind::Cycle => "Cycle",
            Kind::BadTarget => "BadTarget",
            Kind::Implausible => "Implausible",
            Kind::NotAList => "NotAList",
            Kind::TooManyItems => "TooManyItems",
            Kind::BadSchema => "BadSchema",
            Kind::UnknownContract => "UnknownContract",
            Kind::NoCandidate => "NoCandidate",
            Kind::Incompatible => "Incompatible",
            Kind::InvalidArgs => "InvalidArgs",
        }
    }

    /// The kind named `code`.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }

    /// Whether the plan's JSON Schema refuses a document with this violation too. The others
    /// are beyond JSON Schema (references, the graph, contracts) or before it (text, size).
    pub const fn in_schema(self) -> bool {
        matches!(
            self,
            Kind::Missing
                | Kind::Unknown
                | Kind::WrongType
                | Kind::BadValue
                | Kind::BadPointer
                | Kind::StepKind
                | Kind::TooMany
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// One thing wrong with a plan.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    /// JSON Pointer to the place in the plan document (`""`: the document itself).
    pub path: String,
    pub kind: Kind,
    /// What is wrong, and what would be right.
    pub message: String,
}

impl Violation {
    pub fn new(path: impl fmt::Display, kind: Kind, message: impl Into<String>) -> Self {
        Self { path: path.to_string(), kind, message: message.into() }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() { "(plan)" } else { &self.path };
        write!(f, "{path}: {} [{}]", self.message, self.kind)
    }
}

/// Every violation found, sorted by path (then kind), never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Violations(Vec<Violation>);

impl Violations {
    /// `None` when there is nothing wrong.
    pub(crate) fn of(mut list: Vec<Violation>) -> Option<Self> {
        list.sort();
        list.dedup();
        (!list.is_empty()).then_some(Self(list))
    }

    pub fn list(&self) -> &[Violation] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<Violation> {
        self.0
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "the plan has {n} violation{}:", if n == 1 { "" } else { "s" })?;
        for v in &self.0 {
            write!(f, "\n  {v}")?;
        }
        Ok(())
    }
}

/// Why a plan could not be checked or resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The plan is wrong: fix each violation.
    #[error(transparent)]
    Invalid(#[from] Violations),
    /// The resolver failed (not the plan's fault): try again, or check the node.
    #[error("resolving step {step:?}: {source}")]
    Resolver {
        step: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl PlanError {
    /// The violations, when the plan is what is wrong.
    pub fn violations(&self) -> Option<&Violations> {
        match self {
            PlanError::Invalid(v) => Some(v),
            PlanError::Resolver { .. } => None,
        }
    }
}
