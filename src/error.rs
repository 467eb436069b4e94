//! The one error type of cnnc's public API: a variant per class of user mistake.
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// I/O failure on a file the user named.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The YAML could not be parsed, or does not follow the graph format.
    #[error("{0}")]
    Format(String),
    /// The graph is well-formed YAML but not a valid network (names, inputs, cycles, op arity).
    #[error("{0}")]
    Graph(String),
    /// Shape inference failed; the message shows the arithmetic.
    #[error("{0}")]
    Shape(String),
    /// A weights file is missing a tensor, or holds one of the wrong shape or dtype.
    #[error("{0}")]
    Weights(String),
    /// An input tensor or file does not fit the graph.
    #[error("{0}")]
    Input(String),
    /// A feature that is not available in this build or engine.
    #[error("{0}")]
    Unsupported(String),
    /// Bad compiler options: an unknown pass name or optimisation level.
    #[error("{0}")]
    Options(String),
    /// A pass left the graph invalid (a bug in cnnc, caught by the check after each pass).
    #[error("pass `{pass}` broke the graph: {source}")]
    Pass {
        pass: String,
        #[source]
        source: Box<Error>,
    },
    /// Code generation failed (a bug in cnnc, reported instead of panicking).
    #[error("code generation failed: {0}")]
    Codegen(String),
    /// A broken internal invariant (a bug in cnnc, reported instead of panicking).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The same error as seen from layer `name`: its message prefixed with `name: ` (a
    /// kernel's checks know the shapes, not which layer they came from).
    pub fn in_layer(self, name: &str) -> Self {
        let at = |m: String| format!("{name}: {m}");
        match self {
            Error::Format(m) => Error::Format(at(m)),
            Error::Graph(m) => Error::Graph(at(m)),
            Error::Shape(m) => Error::Shape(at(m)),
            Error::Weights(m) => Error::Weights(at(m)),
            Error::Input(m) => Error::Input(at(m)),
            Error::Unsupported(m) => Error::Unsupported(at(m)),
            Error::Options(m) => Error::Options(at(m)),
            Error::Codegen(m) => Error::Codegen(at(m)),
            Error::Internal(m) => Error::Internal(at(m)),
            other => other,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
