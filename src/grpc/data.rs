//! `tenantd.v1.TenantDataService`: checks the request and the caller, runs
//! the statements through the tenant's pool, and maps values both ways.

use tonic::{Request, Response, Status};

use super::auth::{caller, require_in_tenant};
use super::pb::{self, tenant_data_service_server::TenantDataService};
use super::status;
use crate::data::{Outcome, Statement, TenantData, Value};
use crate::domain::identity::{Permission, Scope};
use crate::domain::{TenantId, ValidationError};
use crate::identity::Identity;
use crate::usage::Usage;

/// Statements one Transaction call may hold.
const MAX_STATEMENTS: usize = 100;
/// Bytes of SQL text one statement may have.
const MAX_SQL_BYTES: usize = 256 * 1024;
/// Parameters one statement may have (PostgreSQL's own limit).
const MAX_PARAMS: usize = 65_535;

pub struct DataApi {
    data: TenantData,
    identity: Identity,
    usage: Usage,
}

impl DataApi {
    pub fn new(data: TenantData, identity: Identity, usage: Usage) -> Self {
        Self {
            data,
            identity,
            usage,
        }
    }

    /// Checks the caller, runs, and maps the outcome.
    async fn run<T>(
        &self,
        request: Request<T>,
        parts: impl FnOnce(T) -> Result<Call, ValidationError>,
    ) -> Result<Vec<Outcome>, Status> {
        let who = caller(&request)?;
        let call = parts(request.into_inner()).map_err(status::invalid)?;
        let permission = if call.read_only {
            Permission::DataRead
        } else {
            Permission::DataWrite
        };
        require_in_tenant(
            &self.identity,
            &who,
            Scope::Data,
            *call.tenant.as_uuid(),
            permission,
        )
        .await?;
        let started = std::time::Instant::now();
        let result = self
            .data
            .run(call.tenant, &call.statements, call.read_only, call.timeout)
            .await;
        // Counted once the caller may act in the tenant, so nobody adds to
        // another tenant's counts.
        self.usage
            .record_call(*call.tenant.as_uuid(), started.elapsed(), result.is_ok());
        result.map_err(|e| status::data(e, call.prefix))
    }

    fn statement(
        &self,
        prefix: &str,
        sql: String,
        params: Vec<pb::Value>,
        max_rows: u32,
    ) -> Result<Statement, ValidationError> {
        if sql.trim().is_empty() {
            return Err(ValidationError::single(
                format!("{prefix}sql"),
                "is required",
            ));
        }
        if sql.len() > MAX_SQL_BYTES {
            return Err(ValidationError::single(
                format!("{prefix}sql"),
                format!("at most {MAX_SQL_BYTES} bytes"),
            ));
        }
        if params.len() > MAX_PARAMS {
            return Err(ValidationError::single(
                format!("{prefix}params"),
                format!("at most {MAX_PARAMS} parameters"),
            ));
        }
        let params = params
            .into_iter()
            .enumerate()
            .map(|(i, v)| value_from_pb(v, &|| format!("{prefix}params[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(Statement {
            sql,
            params,
            max_rows: self.data.calls().rows(max_rows),
        })
    }
}

/// A checked request.
struct Call {
    tenant: TenantId,
    statements: Vec<Statement>,
    read_only: bool,
    timeout: std::time::Duration,
    /// How request fields of statement i are named: "" for Execute,
    /// "statements[i]." for Transaction.
    prefix: fn(usize) -> String,
}

#[tonic::async_trait]
impl TenantDataService for DataApi {
    async fn execute(
        &self,
        request: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        let outcomes = self
            .run(request, |r| {
                let tenant = TenantId::parse("tenant_id", &r.tenant_id)?;
                let statement = self.statement("", r.sql, r.params, r.max_rows)?;
                Ok(Call {
                    tenant,
                    statements: vec![statement],
                    read_only: r.read_only,
                    timeout: self.data.calls().timeout(r.timeout_ms),
                    prefix: |_| String::new(),
                })
            })
            .await?;
        let outcome = outcomes
            .into_iter()
            .next()
            .map(result_to_pb)
            .unwrap_or_default();
        Ok(Response::new(pb::ExecuteResponse {
            columns: outcome.columns,
            rows: outcome.rows,
            rows_affected: outcome.rows_affected,
            truncated: outcome.truncated,
        }))
    }

    async fn transaction(
        &self,
        request: Request<pb::TransactionRequest>,
    ) -> Result<Response<pb::TransactionResponse>, Status> {
        let outcomes = self
            .run(request, |r| {
                let tenant = TenantId::parse("tenant_id", &r.tenant_id)?;
                if r.statements.is_empty() {
                    return Err(ValidationError::single("statements", "is required"));
                }
                if r.statements.len() > MAX_STATEMENTS {
                    return Err(ValidationError::single(
                        "statements",
                        format!("at most {MAX_STATEMENTS} statements"),
                    ));
                }
                let statements = r
                    .statements
                    .into_iter()
                    .enumerate()
                    .map(|(i, s)| {
                        self.statement(&format!("statements[{i}]."), s.sql, s.params, s.max_rows)
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Call {
                    tenant,
                    statements,
                    read_only: r.read_only,
                    timeout: self.data.calls().timeout(r.timeout_ms),
                    prefix: |i| format!("statements[{i}]."),
                })
            })
            .await?;
        Ok(Response::new(pb::TransactionResponse {
            results: outcomes.into_iter().map(result_to_pb).collect(),
        }))
    }
}

fn result_to_pb(o: Outcome) -> pb::StatementResult {
    pb::StatementResult {
        columns: o
            .columns
            .into_iter()
            .map(|(name, r#type)| pb::Column { name, r#type })
            .collect(),
        rows: o
            .rows
            .into_iter()
            .map(|values| pb::Row {
                values: values.into_iter().map(value_to_pb).collect(),
            })
            .collect(),
        rows_affected: o.rows_affected,
        truncated: o.truncated,
    }
}

/// Dimensions an array may have: PostgreSQL's MAXDIM.
const MAX_ARRAY_DIMENSIONS: usize = 6;

/// How deep a JSON parameter may nest. PostgreSQL's parser recurses per
/// level and stops with 54001 (stack depth) some thousands of levels down;
/// a value refused here is the caller's, named by its field.
const MAX_JSON_DEPTH: usize = 1000;

/// The deepest nesting of arrays and objects in JSON text (already known
/// to be JSON).
fn json_depth(json: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
    for b in json.bytes() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if in_string => escaped = true,
            b'"' => in_string = !in_string,
            b'[' | b'{' if !in_string => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' if !in_string => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// A request value; `field` names it in errors (made only for one).
pub fn value_from_pb(v: pb::Value, field: &dyn Fn() -> String) -> Result<Value, ValidationError> {
    value_at_depth(v, field, 0)
}

/// A value inside `depth` arrays.
fn value_at_depth(
    v: pb::Value,
    field: &dyn Fn() -> String,
    depth: usize,
) -> Result<Value, ValidationError> {
    use pb::value::Kind;
    Ok(match v.kind {
        None | Some(Kind::Null(_)) => Value::Null,
        Some(Kind::Bool(b)) => Value::Bool(b),
        Some(Kind::Int64(i)) => Value::Int64(i),
        Some(Kind::Float64(f)) => Value::Float64(f),
        Some(Kind::Numeric(s)) => {
            let plain = s.trim_start_matches(['-', '+']);
            let numeric = !plain.is_empty()
                && (matches!(plain, "NaN" | "Infinity")
                    || plain
                        .chars()
                        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+')));
            if !numeric {
                return Err(ValidationError::single(field(), "must be a decimal number"));
            }
            Value::Numeric(s)
        }
        Some(Kind::Text(s)) => Value::Text(s),
        Some(Kind::Bytea(b)) => Value::Bytea(b),
        Some(Kind::Uuid(s)) => Value::Uuid(
            uuid::Uuid::parse_str(&s)
                .map_err(|_| ValidationError::single(field(), "must be a UUID"))?,
        ),
        Some(Kind::Date(s)) => {
            let valid = matches!(s.as_str(), "infinity" | "-infinity")
                || chrono::NaiveDate::parse_from_str(
                    s.strip_suffix(" BC").unwrap_or(&s),
                    "%Y-%m-%d",
                )
                .is_ok();
            if !valid {
                return Err(ValidationError::single(
                    field(),
                    "must be a date, YYYY-MM-DD (with \" BC\" for years before 1)",
                ));
            }
            Value::Date(s)
        }
        Some(Kind::Timestamptz(t)) => {
            // In i128: PostgreSQL's infinities (i64::MIN and MAX
            // microseconds) lie outside Timestamp's usual range.
            let micros = Some(i128::from(t.seconds) * 1_000_000 + i128::from(t.nanos) / 1000)
                .filter(|_| (0..1_000_000_000).contains(&t.nanos))
                .and_then(|m| i64::try_from(m).ok())
                .ok_or_else(|| ValidationError::single(field(), "is not a valid timestamp"))?;
            Value::Timestamptz(micros)
        }
        Some(Kind::Json(s)) => {
            serde_json::from_str::<serde::de::IgnoredAny>(&s)
                .map_err(|e| ValidationError::single(field(), format!("must be JSON: {e}")))?;
            if json_depth(&s) > MAX_JSON_DEPTH {
                return Err(ValidationError::single(
                    field(),
                    format!("JSON nests at most {MAX_JSON_DEPTH} levels deep"),
                ));
            }
            Value::Json(s)
        }
        Some(Kind::Array(_)) if depth >= MAX_ARRAY_DIMENSIONS => {
            return Err(ValidationError::single(
                field(),
                format!("arrays nest at most {MAX_ARRAY_DIMENSIONS} levels deep"),
            ));
        }
        Some(Kind::Array(a)) => Value::Array(
            a.values
                .into_iter()
                .enumerate()
                .map(|(i, v)| value_at_depth(v, &|| format!("{}[{i}]", field()), depth + 1))
                .collect::<Result<_, _>>()?,
        ),
    })
}

pub fn value_to_pb(v: Value) -> pb::Value {
    use pb::value::Kind;
    let kind = match v {
        Value::Null => Kind::Null(prost_types::NullValue::NullValue as i32),
        Value::Bool(b) => Kind::Bool(b),
        Value::Int64(i) => Kind::Int64(i),
        Value::Float64(f) => Kind::Float64(f),
        Value::Numeric(s) => Kind::Numeric(s),
        Value::Text(s) => Kind::Text(s),
        Value::Bytea(b) => Kind::Bytea(b),
        Value::Uuid(u) => Kind::Uuid(u.hyphenated().to_string()),
        Value::Date(s) => Kind::Date(s),
        Value::Timestamptz(micros) => Kind::Timestamptz(prost_types::Timestamp {
            seconds: micros.div_euclid(1_000_000),
            nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
        }),
        Value::Json(s) => Kind::Json(s),
        Value::Array(values) => Kind::Array(pb::Array {
            values: values.into_iter().map(value_to_pb).collect(),
        }),
    };
    pb::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_counts_brackets_outside_strings_only() {
        assert_eq!(json_depth("1"), 0);
        assert_eq!(json_depth(r#"{"a": "[[[[{{"}"#), 1);
        assert_eq!(json_depth(r#"["\"[", [[{}]], "\\"]"#), 4);
        assert_eq!(
            json_depth(&format!("{}{}", "[".repeat(1001), "]".repeat(1001))),
            1001
        );
    }

    #[test]
    fn values_round_trip_through_pb() {
        let values = [
            Value::Null,
            Value::Bool(true),
            Value::Int64(-5),
            Value::Float64(1.5),
            Value::Numeric("12.50".into()),
            Value::Text("x".into()),
            Value::Bytea(vec![0, 255]),
            Value::Uuid(uuid::Uuid::nil()),
            Value::Date("2026-11-23".into()),
            Value::Timestamptz(-1),
            Value::Json("{\"a\":1}".into()),
            Value::Array(vec![Value::Int64(1), Value::Null]),
        ];
        for v in values {
            assert_eq!(
                value_from_pb(value_to_pb(v.clone()), &|| "v".to_owned()).unwrap(),
                v
            );
        }
    }

    #[test]
    fn bad_values_name_their_field() {
        let bad = pb::Value {
            kind: Some(pb::value::Kind::Array(pb::Array {
                values: vec![pb::Value {
                    kind: Some(pb::value::Kind::Uuid("nope".into())),
                }],
            })),
        };
        let err = value_from_pb(bad, &|| "params[3]".to_owned()).unwrap_err();
        assert_eq!(err.violations[0].field, "params[3][0]");
    }
}
