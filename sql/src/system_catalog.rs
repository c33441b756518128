//! A read-only `pg_catalog` and `information_schema` (`tables`, `columns`, `schemata`),
//! built from the catalog when a query reads them, so that psql's
//! `\dt`, `\dv`, `\dm`, `\d name` and drivers' metadata queries work: `pg_class`,
//! `pg_namespace`, `pg_attribute`, `pg_type`, `pg_am`, `pg_database`, `pg_roles`, empty
//! tables for what changeflow does not have (indexes, constraints, triggers, policies...),
//! and the functions those queries call (`pg_get_userbyid`, `pg_table_is_visible`,
//! `format_type`, ...). Queries are first normalized: `pg_catalog.` prefixes of functions
//! go, `OPERATOR(pg_catalog.~)` becomes `~`, `COLLATE` and `::regclass`-style casts vanish.

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;
use datafusion::error::Result as DFResult;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use datafusion::scalar::ScalarValue;
use datafusion::sql::sqlparser::ast::{self, visit_expressions_mut, visit_relations_mut};

use crate::catalog::{Catalog, RelationKind};

pub const SCHEMA: &str = "pg_catalog";
pub const INFORMATION_SCHEMA: &str = "information_schema";
const PUBLIC_OID: i64 = 2200;
const CATALOG_OID: i64 = 11;
const FIRST_RELATION_OID: i64 = 16384;
const OWNER_OID: i64 = 10;
const OWNER: &str = "changeflow";

/// Whether a table reference names the system catalog (`pg_catalog.x`, or an unqualified
/// `pg_x` the catalog does not have).
pub fn is_system(schema: Option<&str>, table: &str, catalog: &Catalog) -> bool {
    match schema {
        Some(INFORMATION_SCHEMA) => information_schema(table).is_some(),
        Some(schema) => schema == SCHEMA && table_schema(table).is_some(),
        None => catalog.relation(table).is_none() && table_schema(table).is_some(),
    }
}

/// The PostgreSQL oid and type modifier of an Arrow type, as changeflow sends it.
pub fn type_oid(data_type: &DataType) -> (i64, i64) {
    match data_type {
        DataType::Boolean => (16, -1),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => (21, -1),
        DataType::Int32 | DataType::UInt16 => (23, -1),
        DataType::Int64 | DataType::UInt32 => (20, -1),
        DataType::Float16 | DataType::Float32 => (700, -1),
        DataType::Float64 => (701, -1),
        DataType::Decimal128(p, s) => (1700, ((i64::from(*p) << 16) | i64::from(*s).max(0)) + 4),
        DataType::UInt64 => (1700, -1),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => (17, -1),
        DataType::Date32 | DataType::Date64 => (1082, -1),
        DataType::Timestamp(_, None) => (1114, -1),
        DataType::Timestamp(_, Some(_)) => (1184, -1),
        DataType::Time32(_) | DataType::Time64(_) => (1083, -1),
        DataType::Interval(_) | DataType::Duration(TimeUnit::Microsecond) => (1186, -1),
        DataType::List(item) => {
            let (element, modifier) = type_oid(item.data_type());
            (array_type_oid(element), modifier)
        }
        _ => (25, -1),
    }
}

/// (oid, name as `format_type` writes it, pg_type.typname, typlen)
const TYPES: &[(i64, &str, &str, i64)] = &[
    (16, "boolean", "bool", 1),
    (17, "bytea", "bytea", -1),
    (20, "bigint", "int8", 8),
    (21, "smallint", "int2", 2),
    (23, "integer", "int4", 4),
    (25, "text", "text", -1),
    (700, "real", "float4", 4),
    (701, "double precision", "float8", 8),
    (1043, "character varying", "varchar", -1),
    (1082, "date", "date", 4),
    (1083, "time without time zone", "time", 8),
    (1114, "timestamp without time zone", "timestamp", 8),
    (1184, "timestamp with time zone", "timestamptz", 8),
    (1186, "interval", "interval", 16),
    (1700, "numeric", "numeric", -1),
    (3802, "jsonb", "jsonb", -1),
    (1000, "boolean[]", "_bool", -1),
    (1001, "bytea[]", "_bytea", -1),
    (1005, "smallint[]", "_int2", -1),
    (1007, "integer[]", "_int4", -1),
    (1009, "text[]", "_text", -1),
    (1015, "character varying[]", "_varchar", -1),
    (1016, "bigint[]", "_int8", -1),
    (1021, "real[]", "_float4", -1),
    (1022, "double precision[]", "_float8", -1),
    (1115, "timestamp without time zone[]", "_timestamp", -1),
    (1182, "date[]", "_date", -1),
    (1183, "time without time zone[]", "_time", -1),
    (1185, "timestamp with time zone[]", "_timestamptz", -1),
    (1187, "interval[]", "_interval", -1),
    (1231, "numeric[]", "_numeric", -1),
    (3807, "jsonb[]", "_jsonb", -1),
];

/// The oid of the array type of an element type's oid (text's is 1009).
fn array_type_oid(element: i64) -> i64 {
    let element_name = TYPES.iter().find(|t| t.0 == element).map_or("text", |t| t.2);
    let array_name = format!("_{element_name}");
    TYPES.iter().find(|t| t.2 == array_name).map_or(1009, |t| t.0)
}

fn format_type(oid: Option<i64>, modifier: Option<i64>) -> Option<String> {
    let (_, name, _, _) = TYPES.iter().find(|t| Some(t.0) == oid)?;
    Some(match (*name, modifier) {
        ("numeric", Some(m)) if m >= 4 => format!("numeric({},{})", (m - 4) >> 16, (m - 4) & 0xffff),
        ("numeric[]", Some(m)) if m >= 4 => format!("numeric({},{})[]", (m - 4) >> 16, (m - 4) & 0xffff),
        _ => name.to_string(),
    })
}

fn field(name: &str, data_type: DataType) -> Field {
    Field::new(name, data_type, true)
}

/// The columns of each system table (those psql and common drivers read).
fn table_schema(table: &str) -> Option<SchemaRef> {
    use DataType::{Boolean as B, Float64 as F, Int64 as I, Utf8 as T};
    let columns: &[(&str, DataType)] = match table {
        "pg_namespace" => &[("oid", I), ("nspname", T), ("nspowner", I), ("nspacl", T)],
        "pg_class" => &[
            ("oid", I),
            ("relname", T),
            ("relnamespace", I),
            ("reltype", I),
            ("relowner", I),
            ("relam", I),
            ("reltuples", F),
            ("relkind", T),
            ("relnatts", I),
            ("relchecks", I),
            ("relhasindex", B),
            ("relhasrules", B),
            ("relhastriggers", B),
            ("relrowsecurity", B),
            ("relforcerowsecurity", B),
            ("relispartition", B),
            ("relispopulated", B),
            ("reltablespace", I),
            ("reloftype", I),
            ("relpersistence", T),
            ("relreplident", T),
            ("reltoastrelid", I),
            ("relacl", T),
            ("reloptions", T),
            ("relpartbound", T),
        ],
        "pg_attribute" => &[
            ("attrelid", I),
            ("attname", T),
            ("atttypid", I),
            ("atttypmod", I),
            ("attnum", I),
            ("attlen", I),
            ("attnotnull", B),
            ("atthasdef", B),
            ("atthasmissing", B),
            ("attisdropped", B),
            ("attidentity", T),
            ("attgenerated", T),
            ("attcollation", I),
            ("attstattarget", I),
            ("attstorage", T),
            ("attcompression", T),
        ],
        "pg_type" => &[
            ("oid", I),
            ("typname", T),
            ("typnamespace", I),
            ("typowner", I),
            ("typlen", I),
            ("typtype", T),
            ("typcategory", T),
            ("typrelid", I),
            ("typelem", I),
            ("typarray", I),
            ("typbasetype", I),
            ("typtypmod", I),
            ("typnotnull", B),
            ("typcollation", I),
        ],
        "pg_am" => &[("oid", I), ("amname", T), ("amtype", T)],
        "pg_database" => &[
            ("oid", I),
            ("datname", T),
            ("datdba", I),
            ("encoding", I),
            ("datallowconn", B),
            ("datcollate", T),
            ("datctype", T),
            ("daticulocale", T),
            ("daticurules", T),
            ("datlocprovider", T),
            ("datacl", T),
        ],
        "pg_proc" => &[
            ("oid", I),
            ("proname", T),
            ("pronamespace", I),
            ("prokind", T),
            ("prorettype", I),
            ("proargtypes", T),
            ("proretset", B),
            ("provolatile", T),
            ("prolang", I),
        ],
        "pg_roles" | "pg_user" => &[("oid", I), ("rolname", T), ("rolsuper", B), ("usename", T), ("usesysid", I)],
        "pg_index" => &[
            ("indexrelid", I),
            ("indrelid", I),
            ("indisunique", B),
            ("indisprimary", B),
            ("indisclustered", B),
            ("indisvalid", B),
            ("indisreplident", B),
            ("indkey", T),
            ("indnatts", I),
        ],
        "pg_constraint" => &[
            ("oid", I),
            ("conname", T),
            ("connamespace", I),
            ("contype", T),
            ("conrelid", I),
            ("confrelid", I),
            ("conindid", I),
            ("conparentid", I),
            ("conkey", T),
            ("convalidated", B),
        ],
        "pg_attrdef" => &[("oid", I), ("adrelid", I), ("adnum", I), ("adbin", T)],
        "pg_collation" => &[("oid", I), ("collname", T), ("collnamespace", I)],
        "pg_description" => &[("objoid", I), ("classoid", I), ("objsubid", I), ("description", T)],
        "pg_inherits" => &[("inhrelid", I), ("inhparent", I), ("inhseqno", I), ("inhdetachpending", B)],
        "pg_trigger" => {
            &[("oid", I), ("tgrelid", I), ("tgname", T), ("tgisinternal", B), ("tgenabled", T), ("tgparentid", I)]
        }
        "pg_policy" => &[
            ("oid", I),
            ("polname", T),
            ("polrelid", I),
            ("polcmd", T),
            ("polpermissive", B),
            ("polroles", T),
            ("polqual", T),
            ("polwithcheck", T),
        ],
        "pg_rewrite" => &[("oid", I), ("rulename", T), ("ev_class", I), ("ev_type", T), ("is_instead", B)],
        "pg_statistic_ext" => &[
            ("oid", I),
            ("stxrelid", I),
            ("stxname", T),
            ("stxnamespace", I),
            ("stxkind", T),
            ("stxstattarget", I),
            ("stxkeys", T),
        ],
        "pg_publication" => &[("oid", I), ("pubname", T), ("puballtables", B)],
        "pg_publication_rel" => &[("oid", I), ("prpubid", I), ("prrelid", I), ("prqual", T), ("prattrs", T)],
        "pg_publication_namespace" => &[("oid", I), ("pnpubid", I), ("pnnspid", I)],
        "pg_foreign_table" => &[("ftrelid", I), ("ftserver", I), ("ftoptions", T)],
        "pg_partitioned_table" => &[("partrelid", I), ("partstrat", T), ("partnatts", I)],
        "pg_tablespace" => &[("oid", I), ("spcname", T)],
        "pg_settings" => &[("name", T), ("setting", T), ("unit", T), ("category", T), ("short_desc", T)],
        _ => return None,
    };
    Some(Arc::new(Schema::new(columns.iter().map(|(n, t)| field(n, t.clone())).collect::<Vec<_>>())))
}

/// The columns of the `information_schema` views changeflow answers.
fn information_schema(table: &str) -> Option<SchemaRef> {
    use DataType::{Int64 as I, Utf8 as T};
    let columns: &[(&str, DataType)] = match table {
        "tables" => &[("table_catalog", T), ("table_schema", T), ("table_name", T), ("table_type", T)],
        "columns" => &[
            ("table_catalog", T),
            ("table_schema", T),
            ("table_name", T),
            ("column_name", T),
            ("ordinal_position", I),
            ("column_default", T),
            ("is_nullable", T),
            ("data_type", T),
            ("numeric_precision", I),
            ("numeric_scale", I),
        ],
        "schemata" => &[("catalog_name", T), ("schema_name", T), ("schema_owner", T)],
        _ => return None,
    };
    Some(Arc::new(Schema::new(columns.iter().map(|(n, t)| field(n, t.clone())).collect::<Vec<_>>())))
}

/// The contents of an `information_schema` view, from the catalog as it is now.
pub fn information_schema_table(catalog: &Catalog, name: &str) -> DFResult<Option<Arc<dyn TableProvider>>> {
    let Some(schema) = information_schema(name) else { return Ok(None) };
    let relations = relations(catalog);
    let columns: Vec<ArrayRef> = match name {
        "tables" => vec![
            texts(relations.iter().map(|_| "changeflow")),
            texts(relations.iter().map(|_| "public")),
            texts(relations.iter().map(|(_, r)| r.name.as_str())),
            texts(relations.iter().map(|(_, r)| match r.kind {
                RelationKind::View | RelationKind::MaterializedView | RelationKind::ChangeStream => "VIEW",
                RelationKind::Table | RelationKind::SourceRelation => "BASE TABLE",
            })),
        ],
        "columns" => {
            let rows: Vec<(&str, usize, &Field, bool)> = relations
                .iter()
                .flat_map(|(_, r)| {
                    r.schema.fields().iter().enumerate().map(move |(i, f)| {
                        let nullable =
                            !r.primary_key.contains(&i) && (f.is_nullable() || r.kind != RelationKind::Table);
                        (r.name.as_str(), i + 1, f.as_ref(), nullable)
                    })
                })
                .collect();
            let n = rows.len();
            let type_name = |f: &Field| {
                let (oid, _) = type_oid(f.data_type());
                TYPES.iter().find(|t| t.0 == oid).map_or("text", |t| t.1)
            };
            let decimal = |f: &Field| match f.data_type() {
                DataType::Decimal128(p, s) => (Some(i64::from(*p)), Some(i64::from(*s))),
                _ => (None, None),
            };
            vec![
                texts(rows.iter().map(|_| "changeflow")),
                texts(rows.iter().map(|_| "public")),
                texts(rows.iter().map(|r| r.0)),
                texts(rows.iter().map(|r| r.2.name().as_str())),
                ints(rows.iter().map(|r| r.1 as i64)),
                nulls(&DataType::Utf8, n),
                texts(rows.iter().map(|r| if r.3 { "YES" } else { "NO" })),
                texts(rows.iter().map(|r| type_name(r.2))),
                Arc::new(Int64Array::from_iter(rows.iter().map(|r| decimal(r.2).0))),
                Arc::new(Int64Array::from_iter(rows.iter().map(|r| decimal(r.2).1))),
            ]
        }
        _ => vec![texts(["changeflow"]), texts(["public"]), texts([OWNER])],
    };
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
    Ok(Some(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?)))
}

/// The relations of the catalog with their oids, in a stable order (by name).
fn relations(catalog: &Catalog) -> Vec<(i64, &crate::catalog::Relation)> {
    let mut relations: Vec<_> = catalog.relations().collect();
    relations.sort_by(|a, b| a.name.cmp(&b.name));
    relations.into_iter().enumerate().map(|(i, r)| (FIRST_RELATION_OID + i as i64, r)).collect()
}

fn ints(values: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(values))
}

fn texts<'a>(values: impl IntoIterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn bools(values: impl IntoIterator<Item = bool>) -> ArrayRef {
    Arc::new(BooleanArray::from_iter(values.into_iter().map(Some)))
}

fn nulls(data_type: &DataType, len: usize) -> ArrayRef {
    datafusion::arrow::array::new_null_array(data_type, len)
}

/// The contents of a system table, from the catalog as it is now.
pub fn table(catalog: &Catalog, name: &str) -> DFResult<Option<Arc<dyn TableProvider>>> {
    let Some(schema) = table_schema(name) else { return Ok(None) };
    let relations = relations(catalog);
    let columns: Vec<ArrayRef> = match name {
        "pg_namespace" => vec![
            ints([CATALOG_OID, PUBLIC_OID]),
            texts([SCHEMA, "public"]),
            ints([OWNER_OID, OWNER_OID]),
            nulls(&DataType::Utf8, 2),
        ],
        "pg_class" => {
            let n = relations.len();
            let kind = |k: RelationKind| match k {
                RelationKind::Table | RelationKind::SourceRelation => "r",
                RelationKind::View | RelationKind::ChangeStream => "v",
                RelationKind::MaterializedView => "m",
            };
            vec![
                ints(relations.iter().map(|(oid, _)| *oid)),
                texts(relations.iter().map(|(_, r)| r.name.as_str())),
                ints(relations.iter().map(|_| PUBLIC_OID)),
                ints(relations.iter().map(|_| 0)),
                ints(relations.iter().map(|_| OWNER_OID)),
                ints(relations.iter().map(|(_, r)| if r.kind == RelationKind::View { 0 } else { 2 })),
                Arc::new(Float64Array::from_iter_values(relations.iter().map(|_| -1.0))),
                texts(relations.iter().map(|(_, r)| kind(r.kind))),
                ints(relations.iter().map(|(_, r)| r.schema.fields().len() as i64)),
                ints(relations.iter().map(|_| 0)),
                bools(relations.iter().map(|_| false)),
                bools(relations.iter().map(|_| false)),
                bools(relations.iter().map(|_| false)),
                bools(relations.iter().map(|_| false)),
                bools(relations.iter().map(|_| false)),
                bools(relations.iter().map(|_| false)),
                bools(relations.iter().map(|_| true)),
                ints(relations.iter().map(|_| 0)),
                ints(relations.iter().map(|_| 0)),
                texts(relations.iter().map(|_| "p")),
                texts(relations.iter().map(|_| "d")),
                ints(relations.iter().map(|_| 0)),
                nulls(&DataType::Utf8, n),
                nulls(&DataType::Utf8, n),
                nulls(&DataType::Utf8, n),
            ]
        }
        "pg_attribute" => {
            let rows: Vec<(i64, i64, &Field, bool)> = relations
                .iter()
                .flat_map(|(oid, r)| {
                    r.schema.fields().iter().enumerate().map(move |(i, f)| {
                        let not_null =
                            r.primary_key.contains(&i) || (!f.is_nullable() && r.kind == RelationKind::Table);
                        (*oid, i as i64 + 1, f.as_ref(), not_null)
                    })
                })
                .collect();
            let n = rows.len();
            vec![
                ints(rows.iter().map(|r| r.0)),
                texts(rows.iter().map(|r| r.2.name().as_str())),
                ints(rows.iter().map(|r| type_oid(r.2.data_type()).0)),
                ints(rows.iter().map(|r| type_oid(r.2.data_type()).1)),
                ints(rows.iter().map(|r| r.1)),
                ints(
                    rows.iter().map(|r| TYPES.iter().find(|t| t.0 == type_oid(r.2.data_type()).0).map_or(-1, |t| t.3)),
                ),
                bools(rows.iter().map(|r| r.3)),
                bools(rows.iter().map(|_| false)),
                bools(rows.iter().map(|_| false)),
                bools(rows.iter().map(|_| false)),
                texts(rows.iter().map(|_| "")),
                texts(rows.iter().map(|_| "")),
                ints(rows.iter().map(|_| 0)),
                ints(rows.iter().map(|_| -1)),
                texts(rows.iter().map(|_| "p")),
                nulls(&DataType::Utf8, n),
            ]
        }
        "pg_type" => {
            let n = TYPES.len();
            vec![
                ints(TYPES.iter().map(|t| t.0)),
                texts(TYPES.iter().map(|t| t.2)),
                ints(TYPES.iter().map(|_| CATALOG_OID)),
                ints(TYPES.iter().map(|_| OWNER_OID)),
                ints(TYPES.iter().map(|t| t.3)),
                texts(TYPES.iter().map(|_| "b")),
                texts(TYPES.iter().map(|_| "U")),
                ints(TYPES.iter().map(|_| 0)),
                ints(TYPES.iter().map(|_| 0)),
                ints(TYPES.iter().map(|_| 0)),
                ints(TYPES.iter().map(|_| 0)),
                ints(TYPES.iter().map(|_| -1)),
                bools(TYPES.iter().map(|_| false)),
                ints(std::iter::repeat_n(0, n)),
            ]
        }
        "pg_am" => vec![ints([2]), texts(["heap"]), texts(["t"])],
        "pg_database" => vec![
            ints([16383]),
            texts(["changeflow"]),
            ints([OWNER_OID]),
            ints([6]),
            bools([true]),
            texts(["C"]),
            texts(["C"]),
            nulls(&DataType::Utf8, 1),
            nulls(&DataType::Utf8, 1),
            texts(["c"]),
            nulls(&DataType::Utf8, 1),
        ],
        "pg_roles" | "pg_user" => {
            vec![ints([OWNER_OID]), texts([OWNER]), bools([true]), texts([OWNER]), ints([OWNER_OID])]
        }
        "pg_index" => {
            let keyed: Vec<(i64, &crate::catalog::Relation)> =
                relations.iter().filter(|(_, r)| !r.primary_key.is_empty()).copied().collect();
            let keys: Vec<String> = keyed
                .iter()
                .map(|(_, r)| r.primary_key.iter().map(|k| (k + 1).to_string()).collect::<Vec<_>>().join(" "))
                .collect();
            vec![
                ints(keyed.iter().map(|(oid, _)| oid + 100_000)),
                ints(keyed.iter().map(|(oid, _)| *oid)),
                bools(keyed.iter().map(|_| true)),
                bools(keyed.iter().map(|_| true)),
                bools(keyed.iter().map(|_| false)),
                bools(keyed.iter().map(|_| true)),
                bools(keyed.iter().map(|_| false)),
                texts(keys.iter().map(String::as_str)),
                ints(keyed.iter().map(|(_, r)| r.primary_key.len() as i64)),
            ]
        }
        _ => schema.fields().iter().map(|f| nulls(f.data_type(), 0)).collect(),
    };
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
    Ok(Some(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?)))
}

fn constant_udf(name: &str, inputs: Vec<DataType>, output: ScalarValue) -> ScalarUDF {
    let data_type = output.data_type();
    create_udf(
        name,
        inputs,
        data_type,
        Volatility::Stable,
        Arc::new(move |_args: &[ColumnarValue]| Ok(ColumnarValue::Scalar(output.clone()))),
    )
}

/// Registers the functions catalog queries call.
pub fn register_functions(state: &mut SessionState) {
    use datafusion::execution::FunctionRegistry;
    let text = |s: &str| ScalarValue::Utf8(Some(s.to_string()));
    let mut udfs = vec![
        constant_udf("pg_get_userbyid", vec![DataType::Int64], text(OWNER)),
        constant_udf("pg_table_is_visible", vec![DataType::Int64], ScalarValue::Boolean(Some(true))),
        constant_udf("pg_type_is_visible", vec![DataType::Int64], ScalarValue::Boolean(Some(true))),
        constant_udf("current_database", vec![], text(crate::postgres_functions::DATABASE)),
        constant_udf("current_schema", vec![], text("public")),
        constant_udf("pg_backend_pid", vec![], ScalarValue::Int64(Some(0))),
        constant_udf("obj_description", vec![DataType::Int64, DataType::Utf8], ScalarValue::Utf8(None)),
        constant_udf("col_description", vec![DataType::Int64, DataType::Int64], ScalarValue::Utf8(None)),
        constant_udf("pg_get_expr", vec![DataType::Utf8, DataType::Int64, DataType::Boolean], ScalarValue::Utf8(None)),
        constant_udf("pg_encoding_to_char", vec![DataType::Int64], text("UTF8")),
        // psql's \df reads pg_proc, which is empty here: these only need to plan.
        constant_udf("pg_get_function_result", vec![DataType::Int64], ScalarValue::Utf8(None)),
        constant_udf("pg_get_function_arguments", vec![DataType::Int64], ScalarValue::Utf8(None)),
        constant_udf("pg_function_is_visible", vec![DataType::Int64], ScalarValue::Boolean(Some(true))),
    ];
    udfs.push(create_udf(
        "format_type",
        vec![DataType::Int64, DataType::Int64],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let oids = datafusion::common::cast::as_int64_array(&arrays[0])?;
            let modifiers = datafusion::common::cast::as_int64_array(&arrays[1])?;
            let names: StringArray =
                oids.iter().zip(modifiers.iter()).map(|(oid, modifier)| format_type(oid, modifier)).collect();
            Ok(ColumnarValue::Array(Arc::new(names)))
        }),
    ));
    for udf in udfs {
        // Registering replaces an existing function of the same name; nothing can fail.
        let _ = state.register_udf(Arc::new(udf));
    }
}

/// System tables that are always empty here (changeflow has no defaults, collations,
/// triggers, policies, ...).
fn always_empty(table: &str) -> bool {
    table_schema(table).is_some()
        && !matches!(
            table,
            "pg_namespace"
                | "pg_class"
                | "pg_attribute"
                | "pg_type"
                | "pg_am"
                | "pg_database"
                | "pg_roles"
                | "pg_user"
                | "pg_index"
        )
}

/// `array_to_string(x.datacl, ...)` (an access-privilege column, NULL here) or
/// `ARRAY(subquery)` over an always-empty table.
fn is_null_array_call(function: &ast::Function) -> bool {
    let name = function.name.0.last().map(|part| part.to_string().to_ascii_lowercase()).unwrap_or_default();
    let ast::FunctionArguments::List(list) = &function.args else {
        return match &function.args {
            ast::FunctionArguments::Subquery(query) => name == "array" && reads_nothing(query),
            _ => false,
        };
    };
    let first = list.args.first().and_then(|arg| match arg {
        ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(expr)) => Some(expr),
        _ => None,
    });
    // Arrays changeflow keeps NULL: privileges (`datacl`, ...) and options (`reloptions`).
    fn null_array(expr: &ast::Expr) -> bool {
        let null_name = |name: &str| {
            let name = name.to_ascii_lowercase();
            name.ends_with("acl") || name.ends_with("options")
        };
        match expr {
            ast::Expr::Identifier(ident) => null_name(&ident.value),
            ast::Expr::CompoundIdentifier(parts) => parts.last().is_some_and(|p| null_name(&p.value)),
            // `c.reloptions || array(...)`
            ast::Expr::BinaryOp { left, op: ast::BinaryOperator::StringConcat, .. } => null_array(left),
            _ => false,
        }
    }
    name == "array_to_string" && first.is_some_and(null_array)
}

/// Whether a subquery inner-joins an always-empty system table, so it returns no rows.
fn reads_nothing(query: &ast::Query) -> bool {
    let ast::SetExpr::Select(select) = query.body.as_ref() else { return false };
    let empty_table = |factor: &ast::TableFactor| match factor {
        ast::TableFactor::Table { name, .. } => name
            .0
            .last()
            .and_then(|part| part.as_ident())
            .is_some_and(|ident| always_empty(&ident.value.to_ascii_lowercase())),
        _ => false,
    };
    select.from.iter().any(|from| {
        empty_table(&from.relation)
            && from
                .joins
                .iter()
                .all(|j| matches!(j.join_operator, ast::JoinOperator::Inner(_) | ast::JoinOperator::Join(_)))
    })
}

/// A SELECT that reads an always-empty system table returns no rows whatever it computes:
/// its expressions (which may use functions changeflow lacks) become NULLs.
fn empty_selects(body: &mut ast::SetExpr) -> bool {
    match body {
        ast::SetExpr::Select(select) => {
            let probe = ast::Query { body: Box::new(ast::SetExpr::Select(select.clone())), ..empty_query() };
            if !reads_nothing(&probe) {
                return false;
            }
            for (i, item) in select.projection.iter_mut().enumerate() {
                match item {
                    ast::SelectItem::ExprWithAlias { expr, .. } => *expr = ast::Expr::value(ast::Value::Null),
                    ast::SelectItem::UnnamedExpr(_) => {
                        *item = ast::SelectItem::ExprWithAlias {
                            expr: ast::Expr::value(ast::Value::Null),
                            alias: ast::Ident::new(format!("column{}", i + 1)),
                        };
                    }
                    _ => {}
                }
            }
            select.selection = Some(ast::Expr::value(ast::Value::Boolean(false)));
            true
        }
        ast::SetExpr::SetOperation { left, right, .. } => {
            let left = empty_selects(left);
            let right = empty_selects(right);
            left && right
        }
        ast::SetExpr::Query(query) => empty_selects(&mut query.body),
        _ => false,
    }
}

fn empty_query() -> ast::Query {
    ast::Query {
        with: None,
        body: Box::new(ast::SetExpr::Values(ast::Values {
            explicit_row: false,
            value_keyword: false,
            rows: Vec::new(),
        })),
        order_by: None,
        limit_clause: None,
        fetch: None,
        locks: Vec::new(),
        for_clause: None,
        settings: None,
        format_clause: None,
        pipe_operators: Vec::new(),
    }
}

/// Rewrites PostgreSQL catalog idioms DataFusion does not plan into equivalents it does.
pub fn normalize(statement: &mut ast::Statement) {
    if let ast::Statement::Query(query) = statement
        && empty_selects(&mut query.body)
    {
        // Nothing to order; the ORDER BY may use what changeflow lacks.
        query.order_by = None;
    }
    let _ = visit_relations_mut(statement, |name| {
        // `pg_catalog.pg_class` and `public.x` resolve by their last part.
        if name.0.len() == 2
            && let Some(ast::ObjectNamePart::Identifier(schema)) = name.0.first()
            && schema.value.eq_ignore_ascii_case(SCHEMA)
        {
            name.0.remove(0);
        }
        ControlFlow::<()>::Continue(())
    });
    let _ = visit_expressions_mut(statement, |expr| {
        match expr {
            // Access privileges (`datacl`, `nspacl`, `relacl`) are always NULL here, and
            // `ARRAY(SELECT ...)` over a table kept empty has no elements: psql's `\l`,
            // `\dn+` and `\d+` print them.
            ast::Expr::Function(function) if is_null_array_call(function) => *expr = ast::Expr::value(ast::Value::Null),
            ast::Expr::Function(function) if function.name.0.len() == 2 => {
                if let Some(ast::ObjectNamePart::Identifier(schema)) = function.name.0.first()
                    && schema.value.eq_ignore_ascii_case(SCHEMA)
                {
                    function.name.0.remove(0);
                }
            }
            ast::Expr::BinaryOp { op, .. } => {
                if let ast::BinaryOperator::PGCustomBinaryOperator(parts) = op
                    && let Some(last) = parts.last()
                {
                    *op = match last.as_str() {
                        "~" => ast::BinaryOperator::PGRegexMatch,
                        "~*" => ast::BinaryOperator::PGRegexIMatch,
                        "!~" => ast::BinaryOperator::PGRegexNotMatch,
                        "=" => ast::BinaryOperator::Eq,
                        "<>" => ast::BinaryOperator::NotEq,
                        _ => return ControlFlow::Continue(()),
                    };
                }
            }
            // psql's correlated lookups into tables changeflow keeps empty: no rows.
            ast::Expr::Subquery(query) if reads_nothing(query) => *expr = ast::Expr::value(ast::Value::Null),
            ast::Expr::Exists { subquery, negated } if reads_nothing(subquery) => {
                *expr = ast::Expr::value(ast::Value::Boolean(*negated));
            }
            ast::Expr::Collate { expr: inner, .. } => {
                *expr = std::mem::replace(inner.as_mut(), ast::Expr::value(ast::Value::Null));
            }
            ast::Expr::Cast { expr: inner, data_type, .. } => {
                let name = data_type.to_string().to_ascii_lowercase();
                let name = name.trim_start_matches("pg_catalog.");
                if matches!(name, "regclass" | "regtype" | "regproc" | "regnamespace" | "oid" | "regrole") {
                    *expr = std::mem::replace(inner.as_mut(), ast::Expr::value(ast::Value::Null));
                } else if let ast::DataType::Custom(type_name, _) = data_type
                    && type_name.0.len() == 2
                {
                    // `::pg_catalog.text` and the like: the type without its schema.
                    let plain = match name {
                        "name" | "char" | "\"char\"" => "text",
                        other => other,
                    };
                    let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
                    if let Ok(parsed) = datafusion::sql::sqlparser::parser::Parser::new(&dialect)
                        .try_with_sql(plain)
                        .and_then(|mut parser| parser.parse_data_type())
                    {
                        *data_type = parsed;
                    }
                }
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
}
