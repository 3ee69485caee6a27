//! Values through the data plane: every type round trips, malformed values
//! are bad requests (never INTERNAL), and timestamps past what protobuf
//! holds come back as text.

use tenantd::pb::{self, value::Kind};
use tonic::Code;

use super::{int, scalar, sqlstate, text, v};
use crate::common::data::{exec, read};
use crate::common::{TestServer, bad_fields};

/// A value sent as `$1::ty`, and the name of the type its column is
/// answered with.
struct RoundTrip {
    ty: &'static str,
    value: pb::Value,
    type_name: &'static str,
}

#[tokio::test]
async fn every_value_type_round_trips() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let t = c.tenant("types").await;
    let uuid = "0b5e2d0c-7c37-4a67-9a0e-2f1f3c1e9d11";
    let at = prost_types::Timestamp {
        seconds: 1_795_000_000,
        nanos: 123_456_000,
    };
    let cases = vec![
        RoundTrip {
            ty: "bool",
            value: v(Kind::Bool(true)),
            type_name: "bool",
        },
        RoundTrip {
            ty: "int8",
            value: int(-9_007_199_254_740_993),
            type_name: "int8",
        },
        RoundTrip {
            ty: "int4",
            value: int(2_147_483_647),
            type_name: "int4",
        },
        RoundTrip {
            ty: "int2",
            value: int(-32_768),
            type_name: "int2",
        },
        RoundTrip {
            ty: "float8",
            value: v(Kind::Float64(-1.5e300)),
            type_name: "float8",
        },
        RoundTrip {
            ty: "float4",
            value: v(Kind::Float64(0.25)),
            type_name: "float4",
        },
        RoundTrip {
            ty: "numeric",
            value: v(Kind::Numeric(
                "-123456789012345678901234567890.000012".into(),
            )),
            type_name: "numeric",
        },
        RoundTrip {
            ty: "text",
            value: text("héllo, \"world\" \\ ☃"),
            type_name: "text",
        },
        RoundTrip {
            ty: "varchar",
            value: text("short"),
            type_name: "varchar",
        },
        RoundTrip {
            ty: "bytea",
            value: v(Kind::Bytea(vec![0, 1, 2, 255, 0])),
            type_name: "bytea",
        },
        RoundTrip {
            ty: "uuid",
            value: v(Kind::Uuid(uuid.into())),
            type_name: "uuid",
        },
        RoundTrip {
            ty: "date",
            value: v(Kind::Date("2026-11-23".into())),
            type_name: "date",
        },
        RoundTrip {
            ty: "date",
            value: v(Kind::Date("infinity".into())),
            type_name: "date",
        },
        RoundTrip {
            ty: "timestamptz",
            value: v(Kind::Timestamptz(at)),
            type_name: "timestamptz",
        },
        // PostgreSQL's -infinity, i64::MIN microseconds.
        RoundTrip {
            ty: "timestamptz",
            value: v(Kind::Timestamptz(prost_types::Timestamp {
                seconds: i64::MIN.div_euclid(1_000_000),
                nanos: (i64::MIN.rem_euclid(1_000_000) * 1000) as i32,
            })),
            type_name: "timestamptz",
        },
        RoundTrip {
            ty: "date",
            value: v(Kind::Date("0044-03-15 BC".into())),
            type_name: "date",
        },
        RoundTrip {
            ty: "json",
            value: v(Kind::Json(r#"{"a": [1, 2]}"#.into())),
            type_name: "json",
        },
        RoundTrip {
            ty: "jsonb",
            value: v(Kind::Json(r#"{"a": [1, 2]}"#.into())),
            type_name: "jsonb",
        },
        RoundTrip {
            ty: "int8[]",
            value: v(Kind::Array(pb::Array {
                values: vec![int(1), v(Kind::Null(0)), int(3)],
            })),
            type_name: "_int8",
        },
        RoundTrip {
            ty: "text[]",
            value: v(Kind::Array(pb::Array {
                values: vec![text("a,b"), text("\"q\""), text("NULL")],
            })),
            type_name: "_text",
        },
        RoundTrip {
            ty: "numeric[]",
            value: v(Kind::Array(pb::Array {
                values: vec![v(Kind::Numeric("1.50".into()))],
            })),
            type_name: "_numeric",
        },
        RoundTrip {
            ty: "uuid[]",
            value: v(Kind::Array(pb::Array {
                values: vec![v(Kind::Uuid(uuid.into()))],
            })),
            type_name: "_uuid",
        },
        RoundTrip {
            ty: "int4[][]",
            value: v(Kind::Array(pb::Array {
                values: vec![
                    v(Kind::Array(pb::Array {
                        values: vec![int(1), int(2)],
                    })),
                    v(Kind::Array(pb::Array {
                        values: vec![int(3), int(4)],
                    })),
                ],
            })),
            type_name: "_int4",
        },
        RoundTrip {
            ty: "text",
            value: v(Kind::Null(0)),
            type_name: "text",
        },
    ];
    for RoundTrip {
        ty,
        value,
        type_name,
    } in cases
    {
        let r = c
            .data
            .execute(pb::ExecuteRequest {
                read_only: true,
                ..exec(&t.id, &format!("SELECT $1::{ty} AS v"), vec![value.clone()])
            })
            .await
            .unwrap_or_else(|e| panic!("{ty}: {e:?}"))
            .into_inner();
        assert_eq!(r.columns[0].name, "v");
        assert_eq!(r.columns[0].r#type, type_name, "{ty}");
        let got = scalar(&r);
        let want = value.kind.clone().unwrap();
        match (ty, &got, &want) {
            // jsonb normalizes its text.
            ("jsonb", Kind::Json(g), Kind::Json(w)) => {
                let g: serde_json::Value = serde_json::from_str(g).unwrap();
                let w: serde_json::Value = serde_json::from_str(w).unwrap();
                assert_eq!(g, w);
            }
            ("float4", Kind::Float64(g), Kind::Float64(w)) => assert_eq!(*g as f32, *w as f32),
            // -infinity goes in as PostgreSQL's own microseconds and comes
            // back as text: a protobuf Timestamp cannot hold it.
            ("timestamptz", Kind::Text(g), Kind::Timestamptz(w)) if w.seconds < -62_135_596_800 => {
                assert_eq!(g, "-infinity")
            }
            _ => assert_eq!(got, want, "{ty} round trip"),
        }
    }

    // Text is parsed by PostgreSQL for types the API has no kind of, and a
    // column of such a type is refused with a hint to cast it.
    let r = c
        .data
        .execute(exec(
            &t.id,
            "SELECT ($1::interval * 2)::text",
            vec![text("1 day 2 hours")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(scalar(&r), Kind::Text("2 days 04:00:00".into()));
    let err = c
        .data
        .execute(read(&t.id, "SELECT interval '1 day' AS span"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("span") && err.message().contains("::text"),
        "{err:?}"
    );

    // Literals of each type decode too (not only what was sent).
    let r = c
        .data
        .execute(read(
            &t.id,
            "SELECT 12.50::numeric(10,2), 0.001::numeric, 'NaN'::numeric, 1e20::numeric, \
             '-infinity'::timestamptz, '1999-12-31'::date, '0044-03-15 BC'::date, \
             'x'::char(3), 'y'::name, true, 3::oid",
        ))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<Kind> = r.rows[0]
        .values
        .iter()
        .map(|v| v.kind.clone().unwrap())
        .collect();
    assert_eq!(got[0], Kind::Numeric("12.50".into()));
    assert_eq!(got[1], Kind::Numeric("0.001".into()));
    assert_eq!(got[2], Kind::Numeric("NaN".into()));
    assert_eq!(got[3], Kind::Numeric("100000000000000000000".into()));
    assert_eq!(got[4], Kind::Text("-infinity".into()));
    assert_eq!(got[5], Kind::Date("1999-12-31".into()));
    assert_eq!(got[6], Kind::Date("0044-03-15 BC".into()));
    assert_eq!(got[7], Kind::Text("x  ".into()));
    assert_eq!(got[8], Kind::Text("y".into()));
    assert_eq!(got[9], Kind::Bool(true));
    assert_eq!(got[10], Kind::Int64(3));
}

/// A bad value sent as parameter 1 of `sql`.
struct Malformed {
    sql: &'static str,
    value: pb::Value,
    /// Whether tenantd names the field itself; otherwise PostgreSQL refuses
    /// it with its SQLSTATE.
    named: bool,
}

/// A nested array parameter `depth` levels deep.
fn nested(depth: usize) -> pb::Value {
    let mut value = v(Kind::Int64(1));
    for _ in 0..depth {
        value = v(Kind::Array(pb::Array {
            values: vec![value],
        }));
    }
    value
}

#[tokio::test]
async fn malformed_values_are_invalid_arguments_never_internal() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let t = c.tenant("values").await;
    let timestamp =
        |seconds, nanos| v(Kind::Timestamptz(prost_types::Timestamp { seconds, nanos }));
    let cases = vec![
        Malformed {
            sql: "SELECT $1::int[]",
            value: nested(7),
            named: true,
        },
        Malformed {
            sql: "SELECT $1::int[]",
            value: nested(30),
            named: true,
        },
        Malformed {
            sql: "SELECT $1::int[]",
            value: nested(48),
            named: true,
        },
        Malformed {
            sql: "SELECT $1::int",
            value: v(Kind::Numeric("1x".into())),
            named: true,
        },
        Malformed {
            sql: "SELECT $1::uuid",
            value: v(Kind::Uuid("not-a-uuid".into())),
            named: true,
        },
        Malformed {
            sql: "SELECT $1::date",
            value: v(Kind::Date("2026-02-30".into())),
            named: true,
        },
        Malformed {
            sql: "SELECT $1::jsonb",
            value: v(Kind::Json("{".into())),
            named: true,
        },
        // Past what PostgreSQL's parser recurses through, in both JSON
        // types and both kinds of nesting.
        Malformed {
            sql: "SELECT $1::jsonb",
            value: v(Kind::Json(format!(
                "{}1{}",
                "[".repeat(20_000),
                "]".repeat(20_000)
            ))),
            named: true,
        },
        Malformed {
            sql: "SELECT $1::json",
            value: v(Kind::Json(format!(
                "{}1{}",
                r#"{"a":"#.repeat(1_001),
                "}".repeat(1_001)
            ))),
            named: true,
        },
        Malformed {
            sql: "SELECT $1::timestamptz",
            value: timestamp(0, -1),
            named: true,
        },
        Malformed {
            sql: "SELECT $1::timestamptz",
            value: timestamp(i64::MAX, 0),
            named: true,
        },
        Malformed {
            sql: "SELECT $1::int",
            value: v(Kind::Int64(i64::MAX)),
            named: true,
        },
        Malformed {
            sql: "SELECT $1::smallint",
            value: v(Kind::Int64(40_000)),
            named: true,
        },
        Malformed {
            sql: "SELECT $1::int",
            value: v(Kind::Bytea(vec![1, 2])),
            named: true,
        },
        Malformed {
            sql: "SELECT $1::int",
            value: nested(1),
            named: true,
        },
        Malformed {
            sql: "SELECT $1::int",
            value: v(Kind::Text("twelve".into())),
            named: false,
        },
        Malformed {
            sql: "SELECT $1::int",
            value: v(Kind::Float64(f64::NAN)),
            named: true,
        },
        Malformed {
            sql: "SELECT $1::text",
            value: v(Kind::Text("nul\0byte".into())),
            named: true,
        },
        Malformed {
            sql: "SELECT $1::text[]",
            value: v(Kind::Array(pb::Array {
                values: vec![v(Kind::Text("ok".into())), v(Kind::Text("\0".into()))],
            })),
            named: true,
        },
        Malformed {
            sql: "SELECT $1::jsonb",
            value: v(Kind::Json("\"a\0\"".into())),
            named: true,
        },
        Malformed {
            sql: "SELECT $1::uuid",
            value: v(Kind::Bool(true)),
            named: true,
        },
        Malformed {
            sql: "SELECT $1::bool",
            value: v(Kind::Int64(1)),
            named: true,
        },
        Malformed {
            sql: "SELECT $1::jsonb",
            value: v(Kind::Float64(f64::NAN)),
            named: true,
        },
        Malformed {
            sql: "SELECT $1::int[]",
            value: v(Kind::Int64(1)),
            named: true,
        },
        Malformed {
            sql: "SELECT $1::int[]",
            value: v(Kind::Array(pb::Array {
                values: vec![
                    v(Kind::Array(pb::Array {
                        values: vec![v(Kind::Int64(1)), v(Kind::Int64(2))],
                    })),
                    v(Kind::Array(pb::Array {
                        values: vec![v(Kind::Int64(3))],
                    })),
                ],
            })),
            named: true,
        },
        Malformed {
            sql: "SELECT $1::numeric",
            value: v(Kind::Numeric("1e999999999".into())),
            named: false,
        },
        Malformed {
            sql: "SELECT $1::int[]",
            value: v(Kind::Array(pb::Array {
                values: vec![nested(1), v(Kind::Int64(1))],
            })),
            named: true,
        },
        Malformed {
            sql: "SELECT $1::int[]",
            value: v(Kind::Array(pb::Array {
                values: vec![v(Kind::Text("x".into()))],
            })),
            named: false,
        },
    ];
    for Malformed { sql, value, named } in cases {
        let err = c
            .data
            .execute(exec(&t.id, sql, vec![value.clone()]))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{sql} {value:?}: {err:?}"
        );
        if named {
            let fields = bad_fields(&err);
            assert!(
                fields.len() == 1 && fields[0].starts_with("params[0]"),
                "{sql}: {err:?}"
            );
        } else {
            assert!(sqlstate(&err).is_some(), "{sql}: {err:?}");
        }
    }
    // Deeper than the message decoder goes: refused as a bad request.
    for depth in [60, 200] {
        let err = c
            .data
            .execute(exec(&t.id, "SELECT $1::int[]", vec![nested(depth)]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{depth}: {err:?}");
        assert_eq!(
            bad_fields(&err),
            vec!["params".to_owned()],
            "{depth}: {err:?}"
        );
    }
    // The tenant still answers.
    c.data
        .execute(exec(&t.id, "SELECT $1::int[]", vec![nested(6)]))
        .await
        .unwrap();
}

#[tokio::test]
async fn timestamps_past_what_protobuf_holds_come_back_as_text() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let t = c.tenant("infinity").await;
    let r = c
        .data
        .execute(exec(
            &t.id,
            "SELECT 'infinity'::timestamptz, '-infinity'::timestamptz, \
             '294276-12-31 23:59:59.999999+00'::timestamptz, '10000-01-01 00:00:00+00'::timestamptz, \
             '9999-12-31 23:59:59.999999+00'::timestamptz, '0001-01-01 00:00:00+00'::timestamptz, \
             ARRAY['infinity', '2026-01-01']::timestamptz[]",
            vec![],
        ))
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<Kind> = r.rows[0]
        .values
        .iter()
        .map(|v| v.kind.clone().unwrap())
        .collect();
    assert_eq!(kinds[0], Kind::Text("infinity".into()));
    assert_eq!(kinds[1], Kind::Text("-infinity".into()));
    assert_eq!(kinds[2], Kind::Text("294276-12-31T23:59:59.999999Z".into()));
    assert_eq!(kinds[3], Kind::Text("10000-01-01T00:00:00.000000Z".into()));
    for k in &kinds[4..6] {
        let Kind::Timestamptz(ts) = k else {
            panic!("{k:?}")
        };
        // Inside google.protobuf.Timestamp's range.
        assert!(
            (-62_135_596_800..=253_402_300_799).contains(&ts.seconds),
            "{ts:?}"
        );
    }
    let Kind::Array(a) = &kinds[6] else {
        panic!("{:?}", kinds[6])
    };
    assert_eq!(a.values[0].kind, Some(Kind::Text("infinity".into())));
    assert!(matches!(a.values[1].kind, Some(Kind::Timestamptz(_))));
}

/// Every date PostgreSQL holds comes back as it prints it, past the years a
/// date library holds too; a write that returns one is answered OK (its
/// COMMIT went with it: an unreadable value must never turn a committed
/// write into an error that invites sending it again).
#[tokio::test]
async fn every_date_postgresql_holds_comes_back_and_a_write_returning_one_is_ok() {
    let server = TestServer::start().await;
    let mut c = server.clients().await;
    let t = c.tenant("dates").await;
    let r = c
        .data
        .execute(read(
            &t.id,
            "SELECT d, d::text FROM (VALUES ('4714-11-24 BC'::date), ('0001-12-31 BC'), \
             ('0001-01-01'), ('9999-12-31'), ('10000-01-01'), ('262142-12-31'), \
             ('262143-01-01'), ('300000-02-29'), ('5874897-12-31'), ('infinity'), \
             ('-infinity')) AS v (d)",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.rows.len(), 11);
    for row in &r.rows {
        let Some(Kind::Text(printed)) = row.values[1].kind.clone() else {
            panic!("not text: {row:?}")
        };
        assert_eq!(row.values[0].kind, Some(Kind::Date(printed)));
    }
    for (i, sql) in [
        "INSERT INTO customers (code, name) VALUES ($1, 'far') RETURNING '262143-01-01'::date",
        "INSERT INTO customers (code, name) VALUES ($1, 'far') \
         RETURNING ARRAY['5874897-12-31'::date, '300000-01-01']",
        "WITH made AS (INSERT INTO customers (code, name) VALUES ($1, 'far') RETURNING code) \
         SELECT '262143-01-01'::date FROM made",
    ]
    .into_iter()
    .enumerate()
    {
        let code = format!("FAR-{i}");
        let r = c
            .data
            .execute(exec(&t.id, sql, vec![text(&code)]))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
            .into_inner();
        assert_eq!(r.rows.len(), 1, "{sql}");
        let again = c
            .data
            .execute(exec(&t.id, sql, vec![text(&code)]))
            .await
            .unwrap_err();
        assert_eq!(
            sqlstate(&again).as_deref(),
            Some("23505"),
            "{sql}: {again:?}"
        );
    }
}
