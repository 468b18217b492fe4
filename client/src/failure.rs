//! What a command's failure tells the user, and the exit code scripts see.

use mysocket_api::ClientError;

/// A failure with the exit code it maps to.
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        let code = match e.status().map(|s| s.as_u16()) {
            Some(401) | Some(403) if matches!(&e, ClientError::Api { message, .. } if message.contains("token")) => 3,
            Some(401) => 3,
            Some(404) => 4,
            Some(409) | Some(403) | Some(429) => 5,
            Some(400) | Some(413) | Some(422) => 2,
            _ => 1,
        };
        Failure { code, message: e.to_string() }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure { code: 1, message: format!("{e:#}") }
    }
}

pub fn fail(code: i32, message: impl Into<String>) -> Failure {
    Failure { code, message: message.into() }
}
