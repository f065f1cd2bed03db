//! Errors of the engine, classified for the reader: a problem in the user's pipeline file
//! ([`ConfigError`], fix your config), a failure of something outside (I/O, a peer: retry),
//! or a bug in Isthmus (please report).

use std::fmt;
use std::path::PathBuf;

/// One problem found in a pipeline file, with its location and key path.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigError {
    /// The pipeline file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted key path, for example `transforms.detect.threshold`.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when we can tell.
    pub help: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "`{}`: ", self.key)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n    help: {help}")?;
        }
        Ok(())
    }
}

/// Every problem found in one or more pipeline files: validation reports them together.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {e}")?;
        }
        write!(
            f,
            "\n{} problem{} found; nothing was run",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )
    }
}

/// A problem a component finds in its own configuration while it is checked: the engine
/// adds the file, line, column and full key path.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// The key inside the component's table (for example `columns`), if one is to blame.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

impl Problem {
    /// A problem with the key `key` of the component.
    pub fn at(key: &str, message: impl Into<String>) -> Self {
        Problem {
            key: Some(key.to_string()),
            message: message.into(),
            help: None,
        }
    }

    /// A problem with the component as a whole.
    pub fn general(message: impl Into<String>) -> Self {
        Problem {
            key: None,
            message: message.into(),
            help: None,
        }
    }

    /// Adds a hint on how to fix it.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Errors while building or running a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The pipeline files are invalid (the user's to fix).
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// A file could not be read or written (external; check the path and permissions).
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An Arrow operation failed.
    #[error("{context}: {source}")]
    Arrow {
        /// What we were doing.
        context: String,
        /// The Arrow error.
        source: arrow::error::ArrowError,
    },
    /// A component failed while it was built or run.
    #[error("component `{component}`: {message}")]
    Component {
        /// The component's name.
        component: String,
        /// What went wrong.
        message: String,
    },
    /// A worker thread failed: a bug in Isthmus, please report it.
    #[error("internal error (please report): {0}")]
    Internal(String),
}

impl EngineError {
    /// An error of the named component.
    pub fn component(component: &str, message: impl fmt::Display) -> Self {
        EngineError::Component {
            component: component.to_string(),
            message: message.to_string(),
        }
    }

    /// An I/O error with what we were doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        EngineError::Io {
            context: context.into(),
            source,
        }
    }
}
