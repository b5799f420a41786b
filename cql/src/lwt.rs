//! Lightweight transaction results.

use crate::{CqlError, Result};
use scylla::response::query_result::QueryResult;
use scylla::value::{CqlValue, Row};

/// Whether a conditional statement (`IF ...`, `IF NOT EXISTS`) applied.
///
/// Reads only the first column: Cassandra returns `[applied]` alone on
/// success, ScyllaDB always adds the old row, so decoding the whole row as a
/// fixed tuple would fail on one of them.
pub fn applied(result: QueryResult) -> Result<bool> {
    let rows = result.into_rows_result().map_err(CqlError::query)?;
    let row: Row = rows.first_row().map_err(CqlError::query)?;
    match row.columns.first() {
        Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
        other => Err(CqlError::MissingApplied(format!("{other:?}"))),
    }
}
