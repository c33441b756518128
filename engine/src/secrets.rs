//! Secrets: values created with `CREATE SECRET name AS '...'` and named by source and sink
//! options (`password = SECRET name`), so definitions, `SHOW` and errors never hold them.
//! The data directory keeps them with the other definitions (readable by its owner only);
//! connectors get the value when the engine hands them their options, never the name.

use std::borrow::Cow;
use std::collections::BTreeMap;

use changeflow_sql::SqlError;
use changeflow_sql::parser::{ParsedStatement, Statement};
use changeflow_sql::secret_statement::CreateSecret;
use changeflow_sql::sink_statement::OnError;

use crate::engine::{Engine, Output};
use crate::error::{EngineError, Result};

/// The name a secret's definition is kept under (apart from relations, sources and sinks).
pub(crate) fn definition_name(secret: &str) -> String {
    format!("secret {secret}")
}

impl Engine {
    pub(crate) fn create_secret(&mut self, create: &CreateSecret) -> Result<Output> {
        self.refuse_in_transaction("CREATE SECRET")?;
        if let Some(current) = self.secrets.get(&create.name) {
            // A startup file creating a secret the data directory already has (or the journal
            // replaying such a statement): its value may have changed (rotated), and the
            // newest is the one to use. The definition keeps its place, ahead of its users.
            if self.replaying || self.restored_secrets.remove(&create.name) {
                if *current != create.value {
                    let previous = self.secrets.insert(create.name.clone(), create.value.clone());
                    if let Err(error) = self.redefined(&definition_name(&create.name)) {
                        self.secrets.extend(previous.map(|value| (create.name.clone(), value)));
                        return Err(error);
                    }
                }
                return Ok(Output::Command("CREATE SECRET".into()));
            }
            if create.if_not_exists {
                return Ok(Output::Command("CREATE SECRET".into()));
            } else {
                return Err(SqlError::Catalog(format!("secret \"{}\" already exists", create.name)).into());
            }
        }
        self.secrets.insert(create.name.clone(), create.value.clone());
        if let Err(error) = self.defined(&definition_name(&create.name), Vec::new()) {
            self.secrets.remove(&create.name);
            return Err(error);
        }
        Ok(Output::Command("CREATE SECRET".into()))
    }

    pub(crate) fn drop_secret(&mut self, name: &str, if_exists: bool) -> Result<Output> {
        self.refuse_in_transaction("DROP SECRET")?;
        if !self.secrets.contains_key(name) {
            if if_exists {
                return Ok(Output::Command("DROP SECRET".into()));
            }
            return Err(SqlError::Catalog(format!("secret \"{name}\" does not exist")).into());
        }
        if let Some(user) = self.secret_users(name).into_iter().next() {
            return Err(SqlError::Catalog(format!(
                "cannot drop secret \"{name}\" because {user} depends on it; drop that first"
            ))
            .into());
        }
        self.secrets.remove(name);
        self.restored_secrets.remove(name);
        self.undefined(&definition_name(name), self.statement_text.clone())?;
        Ok(Output::Command("DROP SECRET".into()))
    }

    /// The sources and sinks whose options name a secret ("source \"core\"", ...).
    fn secret_users(&self, secret: &str) -> Vec<String> {
        let names = |secrets: &BTreeMap<String, String>| secrets.values().any(|s| s == secret);
        let sources = self.catalog.sources().filter(|s| names(&s.secrets)).map(|s| format!("source \"{}\"", s.name));
        let sinks = self
            .sinks
            .values()
            .filter(|h| {
                names(&h.create.secrets)
                    || matches!(&h.create.on_error, OnError::DeadLetter { secrets, .. } if names(secrets))
            })
            .map(|h| format!("sink \"{}\"", h.create.name));
        sources.chain(sinks).collect()
    }

    /// The names of the secrets, sorted (their values are never shown).
    pub(crate) fn secret_names(&self) -> Vec<String> {
        self.secrets.keys().cloned().collect()
    }

    /// The statement with the value of each secret its options name put into those options
    /// (the names stay, so the definition can still be told apart from its values).
    pub(crate) fn with_secrets<'a>(&self, statement: &'a ParsedStatement) -> Result<Cow<'a, ParsedStatement>> {
        let needs_values = match &statement.statement {
            Statement::CreateSource(create) => !create.secrets.is_empty(),
            Statement::CreateSink(create) => {
                !create.secrets.is_empty()
                    || matches!(&create.on_error, OnError::DeadLetter { secrets, .. } if !secrets.is_empty())
            }
            _ => false,
        };
        if !needs_values {
            return Ok(Cow::Borrowed(statement));
        }
        let mut resolved = statement.clone();
        match &mut resolved.statement {
            Statement::CreateSource(create) => self.fill(&mut create.options, &create.secrets)?,
            Statement::CreateSink(create) => {
                self.fill(&mut create.options, &create.secrets)?;
                if let OnError::DeadLetter { options, secrets, .. } = &mut create.on_error {
                    self.fill(options, secrets)?;
                }
            }
            _ => {}
        }
        Ok(Cow::Owned(resolved))
    }

    /// A source's definition with the current values of the secrets it names.
    pub(crate) fn source_with_secrets(
        &self,
        create: &changeflow_sql::parser::CreateSource,
    ) -> Result<changeflow_sql::parser::CreateSource> {
        let mut create = create.clone();
        self.fill(&mut create.options, &create.secrets)?;
        Ok(create)
    }

    fn fill(&self, options: &mut BTreeMap<String, String>, secrets: &BTreeMap<String, String>) -> Result<()> {
        for (option, secret) in secrets {
            let value = self.secrets.get(secret).ok_or_else(|| {
                EngineError::Sql(SqlError::Catalog(format!(
                    "secret \"{secret}\" (named by option '{option}') does not exist; CREATE SECRET {secret} AS '...' first"
                )))
            })?;
            options.insert(option.clone(), value.clone());
        }
        Ok(())
    }
}
