//! The incremental dataflow plan: a tree of operators over change batches. Expressions stay
//! DataFusion expressions; the engine turns them into physical expressions over the input
//! schema of each node.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::DFSchemaRef;
use datafusion::logical_expr::Expr;

/// One operator of a view's dataflow, with the schema of the changes it emits.
#[derive(Debug, Clone)]
pub struct PlanNode {
    pub kind: NodeKind,
    pub schema: DFSchemaRef,
}

#[derive(Debug, Clone)]
pub enum NodeKind {
    /// The changes of a stored relation (table, materialized view, source relation);
    /// `columns` are the ones the view reads.
    Scan { relation: String, columns: Vec<String> },
    /// Keeps changes whose row satisfies the predicate; weights pass through.
    Filter { input: Box<PlanNode>, predicate: Expr },
    /// Computes new columns per change; weights pass through.
    Project { input: Box<PlanNode>, exprs: Vec<Expr> },
    /// Group-by with retractable per-group accumulators.
    Aggregate { input: Box<PlanNode>, group_exprs: Vec<Expr>, aggregates: Vec<AggregateCall> },
    /// Equi-join (or cross join when `on` is empty) over indexed arrangements of both sides.
    Join {
        left: Box<PlanNode>,
        right: Box<PlanNode>,
        on: Vec<(Expr, Expr)>,
        filter: Option<Expr>,
        join_type: JoinKind,
        nulls_equal: bool,
    },
    /// UNION ALL: the inputs' changes together.
    Union { inputs: Vec<PlanNode> },
    /// ORDER BY ... LIMIT: the first `skip + fetch` rows, of which the last `fetch` are emitted.
    TopK { input: Box<PlanNode>, order: Vec<SortKey>, skip: usize, fetch: usize },
    /// Rows known at planning time (VALUES, or a query without FROM), emitted once.
    Constant { rows: Vec<Vec<Expr>> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    Inner,
    Left,
    Right,
    Full,
    LeftSemi,
    LeftAnti,
    RightSemi,
    RightAnti,
}

impl JoinKind {
    /// Whether unmatched left rows are emitted padded with NULLs.
    pub fn pads_left(self) -> bool {
        matches!(self, JoinKind::Left | JoinKind::Full)
    }

    pub fn pads_right(self) -> bool {
        matches!(self, JoinKind::Right | JoinKind::Full)
    }

    /// Whether matched pairs are emitted (false for semi and anti joins).
    pub fn emits_pairs(self) -> bool {
        matches!(self, JoinKind::Inner | JoinKind::Left | JoinKind::Right | JoinKind::Full)
    }
}

#[derive(Debug, Clone)]
pub struct SortKey {
    pub expr: Expr,
    pub descending: bool,
    pub nulls_first: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateKind {
    /// count(*): the number of rows in the group.
    CountRows,
    /// count(x): rows where x is not NULL.
    Count,
    /// count(DISTINCT x).
    CountDistinct,
    Sum,
    Avg,
    Min,
    Max,
}

#[derive(Debug, Clone)]
pub struct AggregateCall {
    pub kind: AggregateKind,
    pub arg: Option<Expr>,
    /// The type of `arg` over the aggregate's input.
    pub arg_type: Option<DataType>,
    pub output_type: DataType,
    /// How the call reads in the query, for EXPLAIN.
    pub display: String,
}

impl PlanNode {
    pub fn inputs(&self) -> Vec<&PlanNode> {
        match &self.kind {
            NodeKind::Scan { .. } | NodeKind::Constant { .. } => Vec::new(),
            NodeKind::Filter { input, .. }
            | NodeKind::Project { input, .. }
            | NodeKind::Aggregate { input, .. }
            | NodeKind::TopK { input, .. } => vec![input],
            NodeKind::Join { left, right, .. } => vec![left, right],
            NodeKind::Union { inputs } => inputs.iter().collect(),
        }
    }

    /// Output columns that identify a row (at most one row per value), when the plan keeps
    /// such a key: the group columns of an aggregate, or a scanned relation's primary key
    /// carried through filters and plain column projections. `relation_key` gives the
    /// primary-key column names of a stored relation.
    pub fn unique_key(&self, relation_key: &dyn Fn(&str) -> Option<Vec<String>>) -> Option<Vec<usize>> {
        match &self.kind {
            NodeKind::Scan { relation, .. } => {
                let names = relation_key(relation)?;
                if names.is_empty() {
                    return None;
                }
                names.iter().map(|name| self.schema.fields().iter().position(|f| f.name() == name)).collect()
            }
            NodeKind::Filter { input, .. } | NodeKind::TopK { input, .. } => input.unique_key(relation_key),
            NodeKind::Aggregate { group_exprs, .. } if !group_exprs.is_empty() => {
                Some((0..group_exprs.len()).collect())
            }
            NodeKind::Project { input, exprs } => {
                let key = input.unique_key(relation_key)?;
                let columns = input.schema.columns();
                key.iter()
                    .map(|&position| {
                        let column = columns.get(position)?;
                        exprs.iter().position(|expr| {
                            let expr = match expr {
                                Expr::Alias(alias) => alias.expr.as_ref(),
                                other => other,
                            };
                            matches!(expr, Expr::Column(c) if c == column)
                        })
                    })
                    .collect()
            }
            _ => None,
        }
    }

    /// The stored relations this dataflow reads, without repeats.
    pub fn scanned_relations(&self) -> Vec<String> {
        let mut names = Vec::new();
        self.collect_scans(&mut names);
        names
    }

    /// For each relation the plan reads, the columns it uses.
    pub fn scanned_columns(&self) -> Vec<(String, Vec<String>)> {
        let mut reads: Vec<(String, Vec<String>)> = Vec::new();
        self.collect_columns(&mut reads);
        reads
    }

    fn collect_columns(&self, reads: &mut Vec<(String, Vec<String>)>) {
        if let NodeKind::Scan { relation, columns } = &self.kind {
            match reads.iter_mut().find(|(r, _)| r == relation) {
                Some((_, known)) => {
                    for column in columns {
                        if !known.contains(column) {
                            known.push(column.clone());
                        }
                    }
                }
                None => reads.push((relation.clone(), columns.clone())),
            }
        }
        for input in self.inputs() {
            input.collect_columns(reads);
        }
    }

    fn collect_scans(&self, names: &mut Vec<String>) {
        if let NodeKind::Scan { relation, .. } = &self.kind
            && !names.contains(relation)
        {
            names.push(relation.clone());
        }
        for input in self.inputs() {
            input.collect_scans(names);
        }
    }
}
