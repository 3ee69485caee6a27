//! Typed values between the API and PostgreSQL's wire formats.
//!
//! Parameters are sent in binary when the value's kind is exactly the
//! parameter's type, and otherwise as text that PostgreSQL parses itself (a
//! numeric from a decimal string, an interval from "1 day", an array from
//! its literal). Results come back in binary and are decoded here for the
//! types the API names; any other column type is refused before the
//! statement runs, with a hint to cast it.

use std::error::Error as StdError;
use std::fmt::Write as _;

use bytes::BytesMut;
use postgres_protocol::types as wire;
use tokio_postgres::types::{Format, FromSql, IsNull, Kind, ToSql, Type, to_sql_checked};

type BoxError = Box<dyn StdError + Sync + Send>;

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days between 1970-01-01 and 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;

/// A value of a parameter or a result cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int64(i64),
    Float64(f64),
    /// Decimal text, exactly as PostgreSQL prints it.
    Numeric(String),
    Text(String),
    Bytea(Vec<u8>),
    Uuid(uuid::Uuid),
    /// YYYY-MM-DD, or `infinity` / `-infinity`.
    Date(String),
    /// Microseconds since the Unix epoch (UTC). PostgreSQL's infinities are
    /// `i64::MAX` and `i64::MIN`.
    Timestamptz(i64),
    /// JSON text (json or jsonb).
    Json(String),
    Array(Vec<Value>),
}

impl Value {
    /// Bytes this value takes in a response, roughly: at least what its
    /// protobuf encoding takes, with the framing.
    pub fn approximate_size(&self) -> usize {
        match self {
            Value::Null | Value::Bool(_) => 4,
            Value::Int64(_) => 13,
            Value::Float64(_) => 11,
            Value::Timestamptz(_) => 20,
            Value::Uuid(_) => 40,
            Value::Numeric(s) | Value::Text(s) | Value::Date(s) | Value::Json(s) => s.len() + 8,
            Value::Bytea(b) => b.len() + 8,
            Value::Array(values) => 8 + values.iter().map(Value::approximate_size).sum::<usize>(),
        }
    }

    /// Bytes this value holds in memory, decoded.
    pub fn footprint(&self) -> usize {
        std::mem::size_of::<Value>()
            + match self {
                Value::Numeric(s) | Value::Text(s) | Value::Date(s) | Value::Json(s) => s.len(),
                Value::Bytea(b) => b.len(),
                Value::Array(values) => values.iter().map(Value::footprint).sum(),
                _ => 0,
            }
    }

    /// The text form PostgreSQL parses for a parameter of another type.
    fn write_text(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("NULL"),
            Value::Bool(b) => out.push_str(if *b { "t" } else { "f" }),
            Value::Int64(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Float64(f) => write_float(*f, out),
            Value::Numeric(s) | Value::Text(s) | Value::Date(s) | Value::Json(s) => out.push_str(s),
            Value::Bytea(b) => {
                out.push_str("\\x");
                out.push_str(&hex::encode(b));
            }
            Value::Uuid(u) => {
                let _ = write!(out, "{}", u.hyphenated());
            }
            Value::Timestamptz(micros) => write_timestamp(*micros, out),
            Value::Array(values) => {
                out.push('{');
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    match v {
                        Value::Null => out.push_str("NULL"),
                        Value::Array(_) => v.write_text(out),
                        _ => {
                            let mut element = String::new();
                            v.write_text(&mut element);
                            out.push('"');
                            for c in element.chars() {
                                if c == '"' || c == '\\' {
                                    out.push('\\');
                                }
                                out.push(c);
                            }
                            out.push('"');
                        }
                    }
                }
                out.push('}');
            }
        }
    }

    /// Sent in binary: the value's kind is exactly the parameter's type.
    fn binary_for(&self, ty: &Type) -> bool {
        match self {
            Value::Null => true,
            Value::Bool(_) => *ty == Type::BOOL,
            Value::Int64(_) => matches!(*ty, Type::INT8 | Type::INT4 | Type::INT2),
            Value::Float64(_) => matches!(*ty, Type::FLOAT8 | Type::FLOAT4),
            Value::Bytea(_) => *ty == Type::BYTEA,
            Value::Uuid(_) => *ty == Type::UUID,
            Value::Timestamptz(_) => matches!(*ty, Type::TIMESTAMPTZ | Type::TIMESTAMP),
            _ => false,
        }
    }
}

fn write_float(f: f64, out: &mut String) {
    if f.is_nan() {
        out.push_str("NaN");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        let _ = write!(out, "{f:?}");
    }
}

fn write_timestamp(micros: i64, out: &mut String) {
    match micros {
        i64::MAX => out.push_str("infinity"),
        i64::MIN => out.push_str("-infinity"),
        _ => match chrono::DateTime::from_timestamp_micros(micros) {
            Some(t) => {
                let _ = write!(out, "{}", t.format("%Y-%m-%dT%H:%M:%S%.6fZ"));
            }
            None => out.push_str("invalid"),
        },
    }
}

/// Why a parameter could not be encoded; tokio-postgres adds its index.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ParamError(pub String);

impl Value {
    /// Whether this value can be sent for a parameter of type `ty`; the
    /// error says why not. (PostgreSQL checks text it parses itself.)
    pub fn check_param(&self, ty: &Type) -> Result<(), String> {
        match (self, ty) {
            (Value::Int64(i), &Type::INT4) if i32::try_from(*i).is_err() => {
                Err(format!("{i} is out of range for type int4"))
            }
            (Value::Int64(i), &Type::INT2) if i16::try_from(*i).is_err() => {
                Err(format!("{i} is out of range for type int2"))
            }
            (Value::Bytea(_), ty) if *ty != Type::BYTEA => {
                Err(format!("bytes given for a parameter of type {}", ty.name()))
            }
            (Value::Timestamptz(m), &Type::TIMESTAMPTZ | &Type::TIMESTAMP)
                if *m != i64::MAX && *m != i64::MIN && m.checked_sub(PG_EPOCH_MICROS).is_none() =>
            {
                Err("timestamp out of PostgreSQL's range".to_owned())
            }
            (Value::Array(_), ty) if !matches!(ty.kind(), Kind::Array(_)) && !is_text(ty) => Err(
                format!("an array given for a parameter of type {}", ty.name()),
            ),
            _ if self.holds_nul() => {
                Err("text cannot hold the character U+0000 (NUL) in PostgreSQL".to_owned())
            }
            _ => self.fits(ty),
        }
    }

    /// Whether the text this value is sent as holds a NUL, which no
    /// PostgreSQL text can.
    fn holds_nul(&self) -> bool {
        match self {
            Value::Text(s) | Value::Json(s) | Value::Numeric(s) | Value::Date(s) => {
                s.contains('\0')
            }
            Value::Array(values) => values.iter().any(Value::holds_nul),
            _ => false,
        }
    }

    /// Whether this value's kind can be a value of `ty`, for the types the
    /// API names (text is PostgreSQL's to parse, and so is any value for a
    /// type the API does not name); arrays must be rectangular.
    fn fits(&self, ty: &Type) -> Result<(), String> {
        if matches!(self, Value::Null | Value::Text(_)) {
            return Ok(());
        }
        if let Kind::Array(member) = ty.kind() {
            let Value::Array(values) = self else {
                return Err(format!(
                    "{} given for a parameter of type {}: send an array",
                    self.kind_name(),
                    ty.name()
                ));
            };
            dimensions(values)?;
            return values.iter().try_for_each(|v| match v {
                Value::Array(_) => v.fits(ty),
                _ => v.fits(member),
            });
        }
        let fits = match *ty {
            Type::BOOL => matches!(self, Value::Bool(_)),
            Type::INT2 | Type::INT4 | Type::INT8 => matches!(self, Value::Int64(_)),
            Type::FLOAT4 | Type::FLOAT8 | Type::NUMERIC => {
                matches!(
                    self,
                    Value::Float64(_) | Value::Int64(_) | Value::Numeric(_)
                )
            }
            Type::UUID => matches!(self, Value::Uuid(_)),
            Type::DATE | Type::TIMESTAMP | Type::TIMESTAMPTZ => {
                matches!(self, Value::Date(_) | Value::Timestamptz(_))
            }
            Type::JSON | Type::JSONB => match self {
                Value::Json(_) | Value::Int64(_) | Value::Numeric(_) => true,
                Value::Float64(f) => f.is_finite(),
                _ => false,
            },
            _ => true,
        };
        if fits {
            Ok(())
        } else {
            Err(format!(
                "{} given for a parameter of type {}",
                self.kind_name(),
                ty.name()
            ))
        }
    }

    /// The API's name for this value's kind, for messages.
    fn kind_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a bool",
            Value::Int64(_) => "an int64",
            Value::Float64(f) if f.is_nan() => "a float64 NaN",
            Value::Float64(f) if f.is_infinite() => "an infinite float64",
            Value::Float64(_) => "a float64",
            Value::Numeric(_) => "a numeric",
            Value::Text(_) => "text",
            Value::Bytea(_) => "bytes",
            Value::Uuid(_) => "a uuid",
            Value::Date(_) => "a date",
            Value::Timestamptz(_) => "a timestamp",
            Value::Json(_) => "json",
            Value::Array(_) => "an array",
        }
    }
}

/// The dimensions of an array value: PostgreSQL's arrays are rectangular,
/// so at each level either every member is an array, all of one shape, or
/// none is.
fn dimensions(values: &[Value]) -> Result<Vec<usize>, String> {
    let arrays = values
        .iter()
        .filter(|v| matches!(v, Value::Array(_)))
        .count();
    if arrays == 0 {
        return Ok(vec![values.len()]);
    }
    if values
        .iter()
        .any(|v| matches!(v, Value::Array(m) if m.is_empty()))
    {
        return Err(
            "an array holds an empty sub-array: only a whole array can be empty in PostgreSQL"
                .to_owned(),
        );
    }
    if arrays != values.len() {
        return Err(
            "an array mixes arrays and other values at one level: PostgreSQL's arrays are \
             rectangular"
                .to_owned(),
        );
    }
    let mut inner: Option<Vec<usize>> = None;
    for v in values {
        let Value::Array(members) = v else {
            continue;
        };
        let shape = dimensions(members)?;
        match &inner {
            Some(first) if *first != shape => {
                return Err(
                    "an array's sub-arrays differ in shape: PostgreSQL's arrays are rectangular"
                        .to_owned(),
                );
            }
            Some(_) => {}
            None => inner = Some(shape),
        }
    }
    let mut shape = vec![values.len()];
    shape.extend(inner.unwrap_or_default());
    Ok(shape)
}

fn is_text(ty: &Type) -> bool {
    matches!(
        *ty,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::UNKNOWN
    )
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        if let Value::Null = self {
            return Ok(IsNull::Yes);
        }
        self.check_param(ty).map_err(ParamError)?;
        if !self.binary_for(ty) {
            let mut text = String::new();
            self.write_text(&mut text);
            out.extend_from_slice(text.as_bytes());
            return Ok(IsNull::No);
        }
        match (self, ty) {
            (Value::Bool(b), _) => wire::bool_to_sql(*b, out),
            (Value::Int64(i), &Type::INT8) => wire::int8_to_sql(*i, out),
            (Value::Int64(i), &Type::INT4) => wire::int4_to_sql(*i as i32, out),
            (Value::Int64(i), _) => wire::int2_to_sql(*i as i16, out),
            (Value::Float64(f), &Type::FLOAT8) => wire::float8_to_sql(*f, out),
            (Value::Float64(f), _) => wire::float4_to_sql(*f as f32, out),
            (Value::Bytea(b), _) => wire::bytea_to_sql(b, out),
            (Value::Uuid(u), _) => wire::uuid_to_sql(*u.as_bytes(), out),
            (Value::Timestamptz(micros), _) => {
                let pg = match *micros {
                    m @ (i64::MAX | i64::MIN) => m,
                    m => m - PG_EPOCH_MICROS,
                };
                wire::timestamp_to_sql(pg, out)
            }
            _ => unreachable!("binary_for admits only the kinds above"),
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, ty: &Type) -> Format {
        if self.binary_for(ty) {
            Format::Binary
        } else {
            Format::Text
        }
    }

    to_sql_checked!();
}

/// Whether result columns of this type can be decoded; the error names what
/// to do otherwise.
pub fn check_column_type(ty: &Type) -> Result<(), String> {
    if decodable(ty) {
        Ok(())
    } else {
        Err(format!(
            "type {} is not one the API returns; cast the column, e.g. `::text`",
            ty.name()
        ))
    }
}

fn decodable(ty: &Type) -> bool {
    match ty.kind() {
        Kind::Enum(_) => true,
        Kind::Array(member) => decodable(member),
        Kind::Domain(base) => decodable(base),
        // A function returning nothing, read as NULL.
        Kind::Pseudo => *ty == Type::VOID,
        Kind::Simple => {
            matches!(
                *ty,
                Type::BOOL
                    | Type::INT2
                    | Type::INT4
                    | Type::INT8
                    | Type::OID
                    | Type::FLOAT4
                    | Type::FLOAT8
                    | Type::NUMERIC
                    | Type::TEXT
                    | Type::VARCHAR
                    | Type::BPCHAR
                    | Type::NAME
                    | Type::CHAR
                    | Type::UNKNOWN
                    | Type::BYTEA
                    | Type::UUID
                    | Type::DATE
                    | Type::TIMESTAMPTZ
                    | Type::TIMESTAMP
                    | Type::JSON
                    | Type::JSONB
            ) || ty.name() == "citext"
        }
        _ => false,
    }
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        decode(ty, raw)
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Value::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// What the rows of a call may still take: bytes of response (their
/// protobuf encoding, roughly) and bytes of memory once decoded. A value is
/// measured in its wire form before it is decoded, and an array by its
/// element count, so nothing larger than the budget is ever built.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub response: usize,
    pub memory: usize,
}

impl Budget {
    /// Takes `value` out of the budget, if it fits.
    fn charge(&mut self, value: Value) -> Option<Value> {
        let (response, memory) = (value.approximate_size(), value.footprint());
        if response > self.response || memory > self.memory {
            return None;
        }
        self.response -= response;
        self.memory -= memory;
        Some(value)
    }

    /// Decodes a cell of type `ty` (`None`: SQL NULL) if it fits; `Ok(None)`
    /// when it does not.
    pub fn decode(&mut self, ty: &Type, raw: Option<&[u8]>) -> Result<Option<Value>, BoxError> {
        let Some(raw) = raw else {
            return Ok(self.charge(Value::Null));
        };
        if raw.len() > self.response {
            return Ok(None);
        }
        let value = match ty.kind() {
            Kind::Domain(base) => return self.decode(base, Some(raw)),
            Kind::Array(member) => {
                let elements = array_len(raw)?;
                let fits = elements
                    .checked_mul(std::mem::size_of::<Value>())
                    .is_some_and(|m| m <= self.memory)
                    && elements.saturating_mul(2) <= self.response;
                if !fits {
                    return Ok(None);
                }
                decode_array(member, raw)?
            }
            _ => decode(ty, raw)?,
        };
        Ok(self.charge(value))
    }
}

/// Elements of an array in its binary form, from its header alone.
fn array_len(raw: &[u8]) -> Result<usize, BoxError> {
    use fallible_iterator::FallibleIterator as _;
    let array = wire::array_from_sql(raw)?;
    array.dimensions().fold(1usize, |n, d| {
        let len = usize::try_from(d.len).map_err(|_| "negative array dimension")?;
        Ok(n.saturating_mul(len))
    })
}

fn decode(ty: &Type, raw: &[u8]) -> Result<Value, BoxError> {
    match ty.kind() {
        Kind::Enum(_) => return Ok(Value::Text(wire::text_from_sql(raw)?.to_owned())),
        Kind::Domain(base) => return decode(base, raw),
        Kind::Array(member) => return decode_array(member, raw),
        _ => {}
    }
    Ok(match *ty {
        Type::BOOL => Value::Bool(wire::bool_from_sql(raw)?),
        Type::INT2 => Value::Int64(wire::int2_from_sql(raw)?.into()),
        Type::INT4 => Value::Int64(wire::int4_from_sql(raw)?.into()),
        Type::INT8 => Value::Int64(wire::int8_from_sql(raw)?),
        Type::OID => Value::Int64(wire::oid_from_sql(raw)?.into()),
        Type::FLOAT4 => Value::Float64(wire::float4_from_sql(raw)?.into()),
        Type::FLOAT8 => Value::Float64(wire::float8_from_sql(raw)?),
        Type::NUMERIC => Value::Numeric(numeric_from_sql(raw)?),
        Type::CHAR => Value::Text(char::from(wire::char_from_sql(raw)? as u8).to_string()),
        Type::BYTEA => Value::Bytea(wire::bytea_from_sql(raw).to_vec()),
        Type::UUID => Value::Uuid(uuid::Uuid::from_bytes(wire::uuid_from_sql(raw)?)),
        Type::DATE => Value::Date(date_text(wire::date_from_sql(raw)?)),
        Type::TIMESTAMPTZ | Type::TIMESTAMP => timestamp(wire::timestamp_from_sql(raw)?),
        Type::VOID => Value::Null,
        Type::JSON => Value::Json(wire::text_from_sql(raw)?.to_owned()),
        Type::JSONB => match raw.split_first() {
            Some((1, json)) => Value::Json(std::str::from_utf8(json)?.to_owned()),
            _ => return Err("unsupported jsonb format version".into()),
        },
        ref t if decodable(t) => Value::Text(wire::text_from_sql(raw)?.to_owned()),
        ref t => return Err(check_column_type(t).unwrap_err().into()),
    })
}

/// Microseconds since the Unix epoch of 0001-01-01 and of the end of
/// 9999-12-31: what `google.protobuf.Timestamp` can hold.
const TIMESTAMP_MIN_MICROS: i128 = -62_135_596_800_000_000;
const TIMESTAMP_MAX_MICROS: i128 = 253_402_300_799_999_999;

/// A timestamp (PostgreSQL's microseconds since 2000-01-01). One that a
/// protobuf Timestamp cannot hold (the infinities, years past 9999) comes
/// back as its ISO text, as a text value.
fn timestamp(pg_micros: i64) -> Value {
    match pg_micros {
        i64::MAX => return Value::Text("infinity".to_owned()),
        i64::MIN => return Value::Text("-infinity".to_owned()),
        _ => {}
    }
    let micros = i128::from(pg_micros) + i128::from(PG_EPOCH_MICROS);
    match i64::try_from(micros) {
        Ok(m) if (TIMESTAMP_MIN_MICROS..=TIMESTAMP_MAX_MICROS).contains(&micros) => {
            Value::Timestamptz(m)
        }
        _ => Value::Text(iso_timestamp(micros)),
    }
}

/// `micros` since the Unix epoch as ISO 8601 UTC text, for any year
/// PostgreSQL allows (days to a civil date after Howard Hinnant).
fn iso_timestamp(micros: i128) -> String {
    let seconds = micros.div_euclid(1_000_000);
    let fraction = micros.rem_euclid(1_000_000);
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    // Any i64 of microseconds is ±2.9e5 years: the days fit an i64.
    let (year, month, day) = civil_from_days(days as i64);
    let (year, era_suffix) = if year > 0 {
        (year, "")
    } else {
        (1 - year, " BC")
    };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{fraction:06}Z{era_suffix}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

fn decode_array(member: &Type, raw: &[u8]) -> Result<Value, BoxError> {
    use fallible_iterator::FallibleIterator as _;
    let array = wire::array_from_sql(raw)?;
    let dims: Vec<usize> = array
        .dimensions()
        .map(|d| usize::try_from(d.len).map_err(|_| "negative array dimension".into()))
        .collect()?;
    let flat: Vec<Value> = array
        .values()
        .map(|v| match v {
            Some(raw) => decode(member, raw),
            None => Ok(Value::Null),
        })
        .collect()?;
    Ok(nest(&dims, &mut flat.into_iter()))
}

/// Rebuilds a multi-dimensional array from its elements in row-major order.
fn nest(dims: &[usize], flat: &mut impl Iterator<Item = Value>) -> Value {
    match dims.split_first() {
        None => Value::Array(Vec::new()),
        Some((&n, [])) => Value::Array(flat.take(n).collect()),
        Some((&n, rest)) => Value::Array((0..n).map(|_| nest(rest, flat)).collect()),
    }
}

/// A date as PostgreSQL prints it (ISO): every date it can hold, from
/// 4714-11-24 BC to 5874897-12-31 and the infinities, BC years spelled out.
fn date_text(days: i32) -> String {
    match days {
        i32::MAX => "infinity".to_owned(),
        i32::MIN => "-infinity".to_owned(),
        d => {
            let (year, month, day) = civil_from_days(i64::from(d) + i64::from(PG_EPOCH_DAYS));
            if year > 0 {
                format!("{year:04}-{month:02}-{day:02}")
            } else {
                format!("{:04}-{month:02}-{day:02} BC", 1 - year)
            }
        }
    }
}

/// The proleptic Gregorian year (0 is 1 BC), month and day of a count of
/// days since 1970-01-01, for any count (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// PostgreSQL's binary numeric: digit count, weight (of the first base-10000
/// digit), sign, display scale, then base-10000 digits.
fn numeric_from_sql(raw: &[u8]) -> Result<String, BoxError> {
    let field = |i: usize| -> Result<u16, BoxError> {
        raw.get(i * 2..i * 2 + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated numeric".into())
    };
    let ndigits = usize::from(field(0)?);
    let weight = field(1)? as i16;
    let sign = field(2)?;
    let dscale = usize::from(field(3)?);
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Ok("NaN".to_owned()),
        0xD000 => return Ok("Infinity".to_owned()),
        0xF000 => return Ok("-Infinity".to_owned()),
        _ => return Err("bad numeric sign".into()),
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|i| field(4 + i))
        .collect::<Result<_, _>>()?;
    let digit = |i: i32| -> u16 {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=i32::from(weight) {
            let d = digit(i);
            if i == 0 {
                let _ = write!(out, "{d}");
            } else {
                let _ = write!(out, "{d:04}");
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut frac = String::with_capacity(dscale + 4);
        let mut i = i32::from(weight) + 1;
        while frac.len() < dscale {
            let _ = write!(frac, "{:04}", digit(i));
            i += 1;
        }
        frac.truncate(dscale);
        out.push_str(&frac);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Days since 2000-01-01 and PostgreSQL 15's own `date::text` of them,
    /// over its whole range (chrono's stops at year 262142).
    #[test]
    fn dates_print_as_postgresql_prints_them() {
        for (days, text) in [
            (-2_451_545, "4714-11-24 BC"),
            (-1_424_021, "1900-03-01 BC"),
            (-730_120, "0001-12-31 BC"),
            (-730_119, "0001-01-01"),
            (-10_957, "1970-01-01"),
            (-1, "1999-12-31"),
            (0, "2000-01-01"),
            (59, "2000-02-29"),
            (2_921_939, "9999-12-31"),
            (2_921_940, "10000-01-01"),
            (95_015_279, "262142-12-31"),
            (95_015_280, "262143-01-01"),
            (2_145_031_948, "5874897-12-31"),
            (i32::MAX, "infinity"),
            (i32::MIN, "-infinity"),
        ] {
            assert_eq!(date_text(days), text, "{days}");
        }
    }

    #[test]
    fn parameters_of_the_wrong_kind_or_shape_are_refused_before_postgresql() {
        use Value as V;
        let array = |values: Vec<Value>| V::Array(values);
        let int_array = Type::INT4_ARRAY;
        for (value, ty, ok) in [
            // Text is PostgreSQL's to parse, null fits anything.
            (V::Text("twelve".into()), Type::INT4, true),
            (V::Null, Type::UUID, true),
            (V::Bool(true), Type::BOOL, true),
            (V::Bool(true), Type::UUID, false),
            (V::Int64(1), Type::BOOL, false),
            (V::Float64(f64::NAN), Type::INT4, false),
            (V::Float64(1.0), Type::INT8, false),
            (V::Float64(f64::NAN), Type::FLOAT8, true),
            (V::Float64(f64::NAN), Type::NUMERIC, true),
            (V::Int64(5), Type::NUMERIC, true),
            (V::Int64(5), Type::JSONB, true),
            (V::Float64(1.5), Type::JSONB, true),
            (V::Float64(f64::INFINITY), Type::JSONB, false),
            (V::Bool(true), Type::JSON, false),
            (V::Timestamptz(0), Type::DATE, true),
            (V::Date("2026-01-01".into()), Type::TIMESTAMPTZ, true),
            (V::Uuid(uuid::Uuid::nil()), Type::TEXT, true),
            (V::Int64(1), Type::INTERVAL, true),
            (V::Text("a\0b".into()), Type::TEXT, false),
            (V::Json("\"\0\"".into()), Type::JSONB, false),
            (array(vec![V::Text("a\0".into())]), Type::TEXT_ARRAY, false),
            (V::Int64(1), int_array.clone(), false),
            (array(vec![V::Int64(1), V::Null]), int_array.clone(), true),
            (array(vec![V::Bool(true)]), int_array.clone(), false),
            (array(vec![]), int_array.clone(), true),
            (
                array(vec![array(vec![V::Int64(1)]), array(vec![V::Int64(2)])]),
                int_array.clone(),
                true,
            ),
            (
                array(vec![array(vec![V::Int64(1)]), V::Int64(2)]),
                int_array.clone(),
                false,
            ),
            (
                array(vec![
                    array(vec![V::Int64(1), V::Int64(2)]),
                    array(vec![V::Int64(3)]),
                ]),
                int_array.clone(),
                false,
            ),
            (
                array(vec![array(vec![]), array(vec![])]),
                int_array.clone(),
                false,
            ),
            (
                array(vec![array(vec![V::Float64(0.5)])]),
                int_array.clone(),
                false,
            ),
        ] {
            assert_eq!(
                value.check_param(&ty).is_ok(),
                ok,
                "{value:?} for {ty}: {:?}",
                value.check_param(&ty)
            );
        }
    }

    fn numeric(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        for f in [ndigits, weight as u16, sign, dscale] {
            v.extend_from_slice(&f.to_be_bytes());
        }
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numerics_print_as_postgresql_does() {
        let cases = [
            (numeric(0, 0, 0, 0, &[]), "0"),
            (numeric(0, 0, 0, 2, &[]), "0.00"),
            (numeric(1, 0, 0, 0, &[12]), "12"),
            (numeric(2, 1, 0, 0, &[1, 2345]), "12345"),
            (numeric(2, 0, 0x4000, 2, &[12, 5000]), "-12.50"),
            (numeric(1, -1, 0, 4, &[10]), "0.0010"),
            (numeric(1, -2, 0, 8, &[10]), "0.00000010"),
            (numeric(1, 2, 0, 0, &[7]), "700000000"),
            (numeric(0, 0, 0xC000, 0, &[]), "NaN"),
            (numeric(2, 0, 0, 3, &[3, 1415]), "3.141"),
        ];
        for (raw, want) in cases {
            assert_eq!(numeric_from_sql(&raw).unwrap(), want);
        }
    }

    #[test]
    fn array_literals_quote_and_escape_elements() {
        let v = Value::Array(vec![
            Value::Text("a\"b".into()),
            Value::Null,
            Value::Array(vec![Value::Int64(1), Value::Text("x\\y".into())]),
        ]);
        let mut s = String::new();
        v.write_text(&mut s);
        assert_eq!(s, r#"{"a\"b",NULL,{"1","x\\y"}}"#);
    }

    #[test]
    fn timestamps_a_protobuf_timestamp_cannot_hold_come_back_as_text() {
        assert_eq!(timestamp(i64::MAX), Value::Text("infinity".into()));
        assert_eq!(timestamp(i64::MIN), Value::Text("-infinity".into()));
        assert_eq!(timestamp(0), Value::Timestamptz(PG_EPOCH_MICROS));
        // PostgreSQL's largest: 294276-12-31 23:59:59.999999.
        assert_eq!(
            timestamp(9_223_371_331_199_999_999),
            Value::Text("294276-12-31T23:59:59.999999Z".into())
        );
        assert_eq!(
            iso_timestamp(TIMESTAMP_MAX_MICROS + 1),
            "10000-01-01T00:00:00.000000Z"
        );
        assert_eq!(iso_timestamp(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            iso_timestamp(TIMESTAMP_MIN_MICROS),
            "0001-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            iso_timestamp(TIMESTAMP_MIN_MICROS - 1),
            "0001-12-31T23:59:59.999999Z BC"
        );
        assert!(matches!(
            timestamp((TIMESTAMP_MAX_MICROS - i128::from(PG_EPOCH_MICROS)) as i64),
            Value::Timestamptz(_)
        ));
    }

    fn int4_array(n: i32) -> Vec<u8> {
        // ndim 1, no nulls flag, element oid int4, then (len, lower bound),
        // then each element as length -1 (NULL).
        let mut v = Vec::new();
        for f in [1i32, 1, 23, n, 1] {
            v.extend_from_slice(&f.to_be_bytes());
        }
        for _ in 0..n {
            v.extend_from_slice(&(-1i32).to_be_bytes());
        }
        v
    }

    #[test]
    fn arrays_larger_than_the_budget_are_not_built() {
        let raw = int4_array(100_000);
        let mut budget = Budget {
            response: 3 << 20,
            memory: 1 << 20,
        };
        // 400 kB on the wire, but 100,000 values of memory: refused by count.
        assert_eq!(budget.decode(&Type::INT4_ARRAY, Some(&raw)).unwrap(), None);
        assert_eq!(budget.memory, 1 << 20);
        let raw = int4_array(1000);
        let value = budget
            .decode(&Type::INT4_ARRAY, Some(&raw))
            .unwrap()
            .unwrap();
        assert_eq!(value, Value::Array(vec![Value::Null; 1000]));
        assert_eq!(budget.memory, (1 << 20) - value.footprint());
    }

    #[test]
    fn values_larger_than_the_response_are_not_decoded() {
        let mut budget = Budget {
            response: 10,
            memory: 1000,
        };
        assert_eq!(
            budget.decode(&Type::TEXT, Some(b"0123456789ab")).unwrap(),
            None
        );
        assert_eq!(
            budget.decode(&Type::TEXT, Some(b"ab")).unwrap(),
            Some(Value::Text("ab".into()))
        );
        assert_eq!(
            budget.decode(&Type::TEXT, None).unwrap(),
            None,
            "nothing is left, and a NULL costs 4"
        );
    }

    #[test]
    fn nesting_follows_dimensions() {
        let flat: Vec<Value> = (1..=6).map(Value::Int64).collect();
        let nested = nest(&[2, 3], &mut flat.into_iter());
        let Value::Array(rows) = nested else {
            panic!("not an array")
        };
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[1],
            Value::Array(vec![Value::Int64(4), Value::Int64(5), Value::Int64(6)])
        );
    }
}
