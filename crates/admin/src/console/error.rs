//! What a console command can fail with, and the ErrorResponse each becomes. The connection
//! stays usable after every one of them.

use switchyard_proto::backend::ErrorFields;
use switchyard_proto::sqlstate;

/// Every command, for the error an unknown one gets (and SHOW HELP).
pub const COMMANDS: &str = "SHOW POOLS | CLIENTS | SERVERS | STATS | DATABASES | CONFIG | CLUSTERS | EVENTS | INCIDENTS | HELP; \
     PAUSE [db]; RESUME [db]; RELOAD; SHUTDOWN; RECONNECT [db]; FENCE member; UNFENCE member";

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("unknown command {0:?}")]
    Unknown(String),
    #[error("usage: {0}")]
    Usage(&'static str),
    #[error("no site serves database {0:?}")]
    NoSuchDatabase(String),
    #[error("no cluster has a member {0:?}")]
    NoSuchMember(String),
    #[error("database {0:?} is not paused")]
    NotPaused(String),
    #[error("nothing is paused")]
    NothingPaused,
    #[error("everything is paused: RESUME without a database resumes it")]
    AllPaused,
    #[error("RELOAD needs a config file, and this proxy was started without one")]
    NoConfigFile,
    #[error("config reload refused, the running config stays: {0}")]
    ReloadRefused(String),
    #[error(
        "the admin console speaks the simple query protocol only (psql, or a driver's simple mode)"
    )]
    ExtendedProtocol,
    #[error("the query is not valid UTF-8")]
    NotUtf8,
    /// A `stats_users` user tried a command that changes something.
    #[error("user {user:?} may only look (admin.stats_users); {command} needs admin.users")]
    NotOperator { user: String, command: String },
}

impl ConsoleError {
    pub fn sqlstate(&self) -> &'static str {
        use sqlstate::*;
        match self {
            Self::Unknown(_) | Self::Usage(_) => SYNTAX_ERROR,
            Self::NoSuchDatabase(_) => INVALID_CATALOG_NAME,
            Self::NoSuchMember(_) => UNDEFINED_OBJECT,
            Self::NotPaused(_) | Self::NothingPaused | Self::AllPaused | Self::NoConfigFile => {
                OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            Self::ReloadRefused(_) => CONFIG_FILE_ERROR,
            Self::ExtendedProtocol => FEATURE_NOT_SUPPORTED,
            Self::NotUtf8 => CHARACTER_NOT_IN_REPERTOIRE,
            Self::NotOperator { .. } => INSUFFICIENT_PRIVILEGE,
        }
    }

    pub fn to_fields(&self) -> ErrorFields {
        let fields = ErrorFields::error(self.sqlstate(), format!("switchyard: {self}"));
        match self {
            Self::Unknown(_) => fields.with_hint(format!("commands: {COMMANDS}")),
            _ => fields,
        }
    }
}
