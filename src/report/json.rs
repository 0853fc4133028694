//! The complete session as pretty-printed JSON: the only format annt reads back.

use std::path::Path;

use super::ReportError;
use crate::bench::result::{SCHEMA_VERSION, SessionResult};

/// Every field of the session, with its `schema_version`, ending in a newline.
pub fn render(s: &SessionResult) -> Result<String, ReportError> {
    serde_json::to_string_pretty(s)
        .map(|text| text + "\n")
        .map_err(|e| ReportError::Serialize(e.to_string()))
}

/// Parses a JSON report, refusing one written by a newer annt before looking at its fields
/// (their meaning may have changed).
pub fn parse(path: &Path, text: &str) -> Result<SessionResult, ReportError> {
    let mut value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ReportError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    // A report without a version predates versioning: read as the oldest schema.
    let version = value
        .get("schema_version")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    let found = u32::try_from(version).unwrap_or(u32::MAX);
    if found > SCHEMA_VERSION {
        return Err(ReportError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if version < 2
        && let Some(summary) = value.get_mut("summary")
    {
        // Schema 1's summary averaged failed and stopped runs and defined the speed-up by
        // training time: it is recomputed from the runs under today's definitions.
        *summary = serde_json::Value::Array(Vec::new());
    }
    let mut session: SessionResult =
        serde_json::from_value(value).map_err(|e| ReportError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if version < 2 {
        session.summarize();
        session.notes.push(format!(
            "Read from a schema {version} report: its host peaks are the process's high-water mark since it started, not each arm's own; the summary was recomputed from the runs."
        ));
        session.schema_version = SCHEMA_VERSION;
    }
    Ok(session)
}
