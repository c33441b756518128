//! Secrets: `CREATE SECRET [IF NOT EXISTS] name AS 'value'`, `DROP SECRET [IF EXISTS] name`,
//! and the `option = SECRET name` form that lets a source or sink definition name a secret
//! instead of holding its value. The value is never rendered: not by `Debug`, not in errors.

use std::fmt;

use datafusion::sql::sqlparser::tokenizer::Token;

use crate::error::{Result, SqlError};
use crate::parser::{Cursor, Statement};

/// `CREATE SECRET name AS 'value'`.
#[derive(Clone, PartialEq, Eq)]
pub struct CreateSecret {
    pub name: String,
    pub value: String,
    pub if_not_exists: bool,
}

impl fmt::Debug for CreateSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateSecret")
            .field("name", &self.name)
            .field("value", &"***")
            .field("if_not_exists", &self.if_not_exists)
            .finish()
    }
}

pub(crate) fn parse_create_secret(text: &str) -> Result<Statement> {
    let mut cursor = Cursor::new(text)?;
    cursor.expect_word("CREATE")?;
    cursor.expect_word("SECRET")?;
    let if_not_exists = cursor.accept_if_not_exists()?;
    let name = cursor.identifier("a secret name")?;
    cursor.expect_word("AS")?;
    let value = match cursor.next() {
        Token::SingleQuotedString(value) => value,
        _ => {
            // Not echoed: whatever stands here may be the secret itself.
            return Err(SqlError::Syntax {
                message: format!("CREATE SECRET {name} AS expects the value as a quoted string ('...')"),
                position: None,
            });
        }
    };
    if value.is_empty() {
        return Err(SqlError::Syntax { message: format!("secret \"{name}\" must not be empty"), position: None });
    }
    cursor.expect_end()?;
    Ok(Statement::CreateSecret(CreateSecret { name, value, if_not_exists }))
}

pub(crate) fn parse_drop_secret(text: &str) -> Result<Statement> {
    let mut cursor = Cursor::new(text)?;
    cursor.expect_word("DROP")?;
    cursor.expect_word("SECRET")?;
    let if_exists = cursor.accept_if_exists()?;
    let name = cursor.identifier("a secret name")?;
    cursor.expect_end()?;
    Ok(Statement::DropSecret { name, if_exists })
}

#[cfg(test)]
mod tests {
    use crate::parser::{Statement, parse_sql};

    fn one(sql: &str) -> Statement {
        parse_sql(sql).expect("parses").remove(0).statement
    }

    #[test]
    fn secrets_are_created_dropped_and_named_by_options() {
        let Statement::CreateSecret(secret) = one("CREATE SECRET IF NOT EXISTS Pg_Pass AS 'S3cr''et'") else {
            panic!("not a secret")
        };
        assert_eq!((secret.name.as_str(), secret.value.as_str(), secret.if_not_exists), ("pg_pass", "S3cr'et", true));
        assert!(!format!("{secret:?}").contains("S3cr"), "Debug shows the value: {secret:?}");
        assert!(matches!(one("DROP SECRET IF EXISTS pg_pass"), Statement::DropSecret { if_exists: true, .. }));

        let Statement::CreateSource(source) = one(
            "CREATE SOURCE core FROM POSTGRES WITH (url = 'postgres://u@h/db', password = SECRET pg_pass) FOR ALL TABLES",
        ) else {
            panic!("not a source")
        };
        assert_eq!(source.secrets.get("password").map(String::as_str), Some("pg_pass"));
        assert!(!source.options.contains_key("password"));
    }

    #[test]
    fn a_malformed_secret_is_refused_without_echoing_it() {
        let error = parse_sql("CREATE SECRET p AS hunter2").expect_err("unquoted").to_string();
        assert!(error.contains("quoted string") && !error.contains("hunter2"), "{error}");
        let error = parse_sql("CREATE SECRET p AS ''").expect_err("empty").to_string();
        assert!(error.contains("must not be empty"), "{error}");
        let error = parse_sql("CREATE SOURCE s FROM POSTGRES WITH (password = SECRET) FOR ALL TABLES")
            .expect_err("no name")
            .to_string();
        assert!(error.contains("secret name"), "{error}");
    }
}
