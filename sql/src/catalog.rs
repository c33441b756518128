//! The catalog: tables, views, materialized views and sources with their Arrow schemas and
//! dependencies. It knows nothing about data; the engine keeps contents elsewhere.

use std::collections::BTreeMap;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::sql::sqlparser::ast;

use crate::error::{Result, SqlError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelationKind {
    /// A local table, written with INSERT / UPDATE / DELETE.
    Table,
    /// A view whose query is inlined wherever it is used.
    View,
    /// A view maintained incrementally, with stored contents.
    MaterializedView,
    /// A relation fed by a source (read-only for DML).
    SourceRelation,
    /// `changes(relation)`: the events of a relation, appended as they happen; not stored.
    ChangeStream,
}

impl RelationKind {
    pub fn describe(self) -> &'static str {
        match self {
            RelationKind::Table => "table",
            RelationKind::View => "view",
            RelationKind::MaterializedView => "materialized view",
            RelationKind::SourceRelation => "source relation",
            RelationKind::ChangeStream => "change stream",
        }
    }

    /// Whether the engine keeps this relation's contents (and so can scan it as an input).
    pub fn is_stored(self) -> bool {
        !matches!(self, RelationKind::View)
    }
}

#[derive(Debug, Clone)]
pub struct Relation {
    pub name: String,
    pub kind: RelationKind,
    pub schema: SchemaRef,
    /// Column indexes of the primary key (empty when there is none).
    pub primary_key: Vec<usize>,
    /// Relations this one reads directly (views only).
    pub dependencies: Vec<String>,
    /// The defining query of a view, re-planned wherever the view is used.
    pub query: Option<Box<ast::Query>>,
    /// The source feeding a source relation.
    pub source: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SourceDef {
    pub name: String,
    pub connector: String,
    pub options: BTreeMap<String, String>,
    /// Options given as `SECRET name` (option -> secret name).
    pub secrets: BTreeMap<String, String>,
    /// The relations the source feeds, in the order the connector declared them.
    pub relations: Vec<String>,
}

/// A sink: the relation it delivers and where to.
#[derive(Debug, Clone)]
pub struct SinkDef {
    pub name: String,
    pub relation: String,
    pub connector: String,
}

/// All named objects. Names are case-folded like PostgreSQL: unquoted identifiers are lower case.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    relations: BTreeMap<String, Relation>,
    sources: BTreeMap<String, SourceDef>,
    sinks: BTreeMap<String, SinkDef>,
    /// `changes(x)` streams in use, by name (kept apart: they are not listed as relations).
    streams: BTreeMap<String, Relation>,
}

impl Catalog {
    pub fn relation(&self, name: &str) -> Option<&Relation> {
        self.relations.get(name).or_else(|| self.streams.get(name))
    }

    /// The `changes(...)` streams in use.
    pub fn streams(&self) -> impl Iterator<Item = &Relation> {
        self.streams.values()
    }

    /// Forgets the streams no view or sink reads any more.
    pub fn prune_streams(&mut self) {
        let unused: Vec<String> = self
            .streams
            .keys()
            .filter(|name| self.dependents(name).is_empty() && self.sinks_of(name).is_empty())
            .cloned()
            .collect();
        for name in unused {
            self.streams.remove(&name);
        }
    }

    /// Registers `changes(base)` (once).
    pub fn add_stream(&mut self, stream: Relation) {
        self.streams.entry(stream.name.clone()).or_insert(stream);
    }

    pub fn require_relation(&self, name: &str) -> Result<&Relation> {
        self.relation(name).ok_or_else(|| SqlError::Catalog(format!("relation \"{name}\" does not exist")))
    }

    pub fn relations(&self) -> impl Iterator<Item = &Relation> {
        self.relations.values()
    }

    pub fn source(&self, name: &str) -> Option<&SourceDef> {
        self.sources.get(name)
    }

    pub fn sources(&self) -> impl Iterator<Item = &SourceDef> {
        self.sources.values()
    }

    pub fn sink(&self, name: &str) -> Option<&SinkDef> {
        self.sinks.get(name)
    }

    pub fn sinks(&self) -> impl Iterator<Item = &SinkDef> {
        self.sinks.values()
    }

    /// Refuses a name already used by a relation, a source or a sink.
    pub fn check_name_free(&self, name: &str) -> Result<()> {
        if let Some(existing) = self.relations.get(name) {
            return Err(SqlError::Catalog(format!("{} \"{name}\" already exists", existing.kind.describe())));
        }
        if self.sources.contains_key(name) {
            return Err(SqlError::Catalog(format!("source \"{name}\" already exists")));
        }
        if self.sinks.contains_key(name) {
            return Err(SqlError::Catalog(format!("sink \"{name}\" already exists")));
        }
        Ok(())
    }

    pub fn add_sink(&mut self, sink: SinkDef) -> Result<()> {
        self.check_name_free(&sink.name)?;
        let relation = self.require_relation(&sink.relation)?;
        if !relation.kind.is_stored() {
            return Err(SqlError::Catalog(format!(
                "\"{}\" is a view (computed when read); a sink needs a table, materialized view or source relation",
                sink.relation
            )));
        }
        self.sinks.insert(sink.name.clone(), sink);
        Ok(())
    }

    pub fn drop_sink(&mut self, name: &str) -> Result<SinkDef> {
        self.sinks.remove(name).ok_or_else(|| SqlError::Catalog(format!("sink \"{name}\" does not exist")))
    }

    pub fn add_relation(&mut self, relation: Relation) -> Result<()> {
        self.check_name_free(&relation.name)?;
        for dependency in &relation.dependencies {
            self.require_relation(dependency)?;
        }
        self.relations.insert(relation.name.clone(), relation);
        Ok(())
    }

    pub fn add_source(&mut self, source: SourceDef, relations: Vec<Relation>) -> Result<()> {
        self.check_name_free(&source.name)?;
        for relation in &relations {
            self.check_name_free(&relation.name)?;
        }
        for relation in relations {
            self.relations.insert(relation.name.clone(), relation);
        }
        self.sources.insert(source.name.clone(), source);
        Ok(())
    }

    /// Names of relations that read `name` directly (`name` may be a change stream).
    pub fn dependents(&self, name: &str) -> Vec<String> {
        self.relations.values().filter(|r| r.dependencies.iter().any(|d| d == name)).map(|r| r.name.clone()).collect()
    }

    /// The relations `names` read, directly or through views and streams, themselves
    /// included.
    pub fn inputs_of(&self, names: impl IntoIterator<Item = String>) -> std::collections::BTreeSet<String> {
        let mut found = std::collections::BTreeSet::new();
        let mut waiting: Vec<String> = names.into_iter().collect();
        while let Some(name) = waiting.pop() {
            if let Some(relation) = self.relation(&name) {
                waiting.extend(relation.dependencies.iter().filter(|d| !found.contains(*d)).cloned());
            }
            found.insert(name);
        }
        found
    }

    /// Names of sinks that deliver `name`.
    pub fn sinks_of(&self, name: &str) -> Vec<String> {
        self.sinks.values().filter(|s| s.relation == name).map(|s| s.name.clone()).collect()
    }

    /// Removes a relation of the expected kind, refusing while something depends on it.
    pub fn drop_relation(&mut self, name: &str, expected: RelationKind) -> Result<Relation> {
        self.require_kind(name, expected)?;
        self.refuse_if_depended_on(name)?;
        // Its change stream goes with it (nothing uses it, or the check above refused).
        self.streams.remove(&crate::change_stream::stream_name(name));
        self.relations.remove(name).ok_or_else(|| SqlError::Catalog(format!("relation \"{name}\" does not exist")))
    }

    /// Refuses a relation of another kind than a statement names (`DROP TABLE` of a view).
    pub fn require_kind(&self, name: &str, expected: RelationKind) -> Result<()> {
        let relation = self.require_relation(name)?;
        if relation.kind != expected {
            return Err(SqlError::Catalog(format!(
                "\"{name}\" is a {}, not a {}; use DROP {}",
                relation.kind.describe(),
                expected.describe(),
                relation.kind.describe().to_uppercase()
            )));
        }
        Ok(())
    }

    /// What `DROP ... CASCADE` of `names` takes with it: the views that read them (through
    /// other views and change streams too), dependents before what they read, and the sinks
    /// that deliver any of them.
    pub fn cascade_of(&self, names: &[String]) -> Cascade {
        let mut views: Vec<String> = Vec::new();
        let mut waiting: Vec<String> = names.to_vec();
        let mut seen: std::collections::BTreeSet<String> = names.iter().cloned().collect();
        while let Some(name) = waiting.pop() {
            let stream = crate::change_stream::stream_name(&name);
            let mut dependents = self.dependents(&name);
            dependents.extend(self.dependents(&stream));
            dependents.sort();
            for dependent in dependents {
                if seen.insert(dependent.clone()) {
                    views.push(dependent.clone());
                    waiting.push(dependent);
                }
            }
        }
        // Each view after every view it reads: dropping in reverse drops readers first.
        let mut ordered: Vec<String> = Vec::new();
        while ordered.len() < views.len() {
            let before = ordered.len();
            for view in &views {
                let ready = !ordered.contains(view)
                    && self.relation(view).is_none_or(|r| {
                        r.dependencies.iter().all(|d| {
                            let read = crate::change_stream::base_of(d).unwrap_or(d);
                            !views.contains(&read.to_string()) || ordered.iter().any(|o| o == read)
                        })
                    });
                if ready {
                    ordered.push(view.clone());
                }
            }
            if ordered.len() == before {
                // Not reachable with an acyclic catalog; keep the rest as found.
                ordered.extend(views.iter().filter(|v| !ordered.contains(v)).cloned().collect::<Vec<_>>());
            }
        }
        ordered.reverse();
        let mut sinks = Vec::new();
        for relation in names.iter().chain(&ordered) {
            sinks.extend(self.sinks_of(relation));
            sinks.extend(self.sinks_of(&crate::change_stream::stream_name(relation)));
        }
        sinks.sort();
        sinks.dedup();
        Cascade { sinks, views: ordered }
    }

    fn refuse_if_depended_on(&self, name: &str) -> Result<()> {
        // What reads its changes(...) stream depends on it too.
        let stream = crate::change_stream::stream_name(name);
        let mut sinks = self.sinks_of(name);
        sinks.extend(self.sinks_of(&stream));
        if !sinks.is_empty() {
            return Err(SqlError::Catalog(format!(
                "cannot drop \"{name}\": sink{} {} deliver{} it; DROP SINK first, or drop with CASCADE",
                if sinks.len() == 1 { "" } else { "s" },
                sinks.join(", "),
                if sinks.len() == 1 { "s" } else { "" },
            )));
        }
        let mut dependents = self.dependents(name);
        for dependent in self.dependents(&stream) {
            if !dependents.contains(&dependent) {
                dependents.push(dependent);
            }
        }
        dependents.sort();
        if dependents.is_empty() {
            return Ok(());
        }
        Err(SqlError::Catalog(format!(
            "cannot drop \"{name}\": {} depend{} on it ({}); drop {} first, or drop with CASCADE",
            if dependents.len() == 1 { "a view" } else { "views" },
            if dependents.len() == 1 { "s" } else { "" },
            dependents.join(", "),
            if dependents.len() == 1 { "it" } else { "them" },
        )))
    }

    /// Removes a source and its relations, refusing while a view reads one of them.
    pub fn drop_source(&mut self, name: &str) -> Result<SourceDef> {
        let source =
            self.sources.get(name).ok_or_else(|| SqlError::Catalog(format!("source \"{name}\" does not exist")))?;
        for relation in &source.relations {
            self.refuse_if_depended_on(relation)?;
        }
        let source =
            self.sources.remove(name).ok_or_else(|| SqlError::Catalog(format!("source \"{name}\" does not exist")))?;
        for relation in &source.relations {
            self.relations.remove(relation);
            self.streams.remove(&crate::change_stream::stream_name(relation));
        }
        Ok(source)
    }
}

/// What a `DROP ... CASCADE` drops besides the objects it names, in the order to drop them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cascade {
    pub sinks: Vec<String>,
    /// Readers before what they read.
    pub views: Vec<String>,
}
