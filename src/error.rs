//! The library's one error type.
//!
//! Shape contracts that the types can express never reach this enum: they fail to compile.
//! What remains are facts known only at run time (sequence lengths, token ids, files).

use std::path::PathBuf;

/// Everything that can go wrong at run time, with what was expected and what was found.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A sequence does not fit the positional table.
    #[error("sequence of {len} positions (starting at offset {offset}) does not fit the positional table of {max} positions")]
    SequenceTooLong {
        /// Length of the sequence.
        len: usize,
        /// First position of the sequence (non-zero during incremental decoding).
        offset: usize,
        /// Number of rows in the positional table (`P`).
        max: usize,
    },
    /// A conversation that has filled the model's context: the turn was not taken.
    #[error(
        "the context is full: the conversation so far and this turn need {needed} positions, the model's context \
         is {context}; start over (/reset in `typeformer chat`) to go on"
    )]
    ContextFull {
        /// Positions the conversation would need.
        needed: usize,
        /// The model's context.
        context: usize,
    },
    /// A token id outside the vocabulary.
    #[error("token id {token} at batch item {item}, position {position} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange {
        /// The offending id.
        token: usize,
        /// Which sequence of the batch.
        item: usize,
        /// Which position in that sequence.
        position: usize,
        /// Vocabulary size (`V`).
        vocab: usize,
    },
    /// Two run-time dimensions that must agree do not.
    #[error("{what}: expected {expected}, found {found}")]
    DimMismatch {
        /// Which dimension.
        what: &'static str,
        /// The value required.
        expected: usize,
        /// The value given.
        found: usize,
    },
    /// A configuration that cannot work (empty batch, zero steps, probabilities out of range, ...).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A checkpoint does not match the model it is loaded into.
    #[error("checkpoint {path} does not match the model:\n{problems}")]
    CheckpointMismatch {
        /// The file.
        path: PathBuf,
        /// One line per missing, unexpected or mis-shaped tensor.
        problems: String,
    },
    /// A file that is not a valid safetensors file.
    #[error("cannot read {path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Another rank of a data-parallel run failed (or left), so this one stops too instead of
    /// waiting for it: that rank's own error says why.
    #[error("rank {rank} of the {ranks} data-parallel ranks failed or left (its own error says why); this rank stops with it")]
    RankFailed {
        /// The rank that failed.
        rank: usize,
        /// Ranks in the run.
        ranks: usize,
    },
    /// Training stopped by a signal (Ctrl-C) after `step` steps.
    #[error("interrupted after step {step}")]
    Interrupted {
        /// Steps done.
        step: usize,
    },
    /// A run directory that another process is training in.
    #[error(
        "{path} is in use by {owner}, which is training there: wait for it to finish, or choose another directory"
    )]
    Busy {
        /// The run directory.
        path: PathBuf,
        /// Who holds it (`process 1234`).
        owner: String,
    },
    /// An I/O error, with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The optimizer found a parameter without a gradient, or another training-time failure.
    #[error("training: {0}")]
    Training(String),
    /// A device that cannot be opened (no CUDA driver, no GPU, no GPU of that ordinal).
    #[error("device: {0}")]
    Device(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// [`Error::SequenceTooLong`] unless positions `offset .. offset + len` fit a table of
    /// `max` positions: the one check every position scheme makes.
    pub(crate) fn check_positions(len: usize, offset: usize, max: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= max => Ok(()),
            _ => Err(Error::SequenceTooLong { len, offset, max }),
        }
    }
}
