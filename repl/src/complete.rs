//! Tab completion in the REPL: what may follow the words typed so far. Relation names where
//! a relation goes (after FROM, JOIN, INTO, UPDATE, TABLE, VIEW, `\d`), the objects SHOW
//! lists after SHOW, column names of the relations the statement names (or of `name.`),
//! and SQL keywords elsewhere.

/// A relation the REPL knows, with its columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownRelation {
    pub name: String,
    pub columns: Vec<String>,
}

const KEYWORDS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP BY",
    "ORDER BY",
    "HAVING",
    "LIMIT",
    "JOIN",
    "LEFT JOIN",
    "RIGHT JOIN",
    "FULL JOIN",
    "INNER JOIN",
    "ON",
    "AND",
    "OR",
    "NOT",
    "NULL",
    "IS",
    "AS",
    "DISTINCT",
    "UNION ALL",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "COALESCE",
    "CREATE",
    "TABLE",
    "VIEW",
    "MATERIALIZED VIEW",
    "SOURCE",
    "SINK",
    "DROP",
    "INSERT",
    "INTO",
    "VALUES",
    "UPDATE",
    "SET",
    "DELETE",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SHOW",
    "EXPLAIN",
    "SUBSCRIBE",
    "PRIMARY KEY",
    "INT",
    "BIGINT",
    "TEXT",
    "NUMERIC",
    "TIMESTAMP",
    "TIMESTAMPTZ",
    "BOOLEAN",
    "DATAGEN",
    "POSTGRES",
    "WITH",
    "CASCADE",
    "PREPARE",
    "EXECUTE",
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "date_trunc",
    "now",
    "generate_series",
];

/// What SHOW lists.
const SHOW_OBJECTS: &[&str] =
    &["TABLES", "VIEWS", "MATERIALIZED VIEWS", "SOURCES", "SINKS", "SECRETS", "CREATE", "server_version", "timezone"];

/// Words after which a relation name comes.
const BEFORE_RELATION: &[&str] = &["FROM", "JOIN", "INTO", "UPDATE", "TABLE", "VIEW", "\\D", "TO", "CHANGES("];

/// Where the word being completed starts in `line`, and what may replace it.
pub fn complete(line: &str, pos: usize, relations: &[KnownRelation]) -> (usize, Vec<String>) {
    let before = &line[..pos];
    let start = before.rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map_or(0, |i| i + c_len(before, i));
    let word = &before[start..];
    let lower = word.to_ascii_lowercase();
    let matching = |name: &str| name.to_ascii_lowercase().starts_with(&lower);
    // `name.` completes that relation's columns.
    if let Some(prefix) = before[..start].strip_suffix('.') {
        let owner = last_word(prefix).to_ascii_lowercase();
        let columns = relations.iter().find(|r| r.name == owner).map(|r| r.columns.clone()).unwrap_or_default();
        return (start, columns.into_iter().filter(|c| matching(c)).collect());
    }
    if word.is_empty() {
        return (pos, Vec::new());
    }
    let previous = last_word(&before[..start]).to_ascii_uppercase();
    let relation_names = || relations.iter().map(|r| r.name.clone()).filter(|n| matching(n)).collect::<Vec<_>>();
    if previous == "SHOW" {
        return (start, SHOW_OBJECTS.iter().filter(|o| matching(o)).map(|o| cased(o, word)).collect());
    }
    if BEFORE_RELATION.contains(&previous.as_str()) || before[..start].trim_end().ends_with("changes(") {
        return (start, relation_names());
    }
    let mut candidates = Vec::new();
    // Columns of the relations the line names.
    let named: Vec<&KnownRelation> = relations.iter().filter(|r| names_word(line, &r.name)).collect();
    for relation in named {
        for column in relation.columns.iter().filter(|c| matching(c)) {
            if !candidates.contains(column) {
                candidates.push(column.clone());
            }
        }
    }
    for name in relation_names() {
        if !candidates.contains(&name) {
            candidates.push(name);
        }
    }
    candidates.extend(KEYWORDS.iter().filter(|k| matching(k)).map(|k| cased(k, word)));
    (start, candidates)
}

/// The length of the character at byte `i` (the boundary before a word).
fn c_len(text: &str, i: usize) -> usize {
    text[i..].chars().next().map_or(1, char::len_utf8)
}

/// The last word of `text` (letters, digits, `_`, `\` and `(`), skipping trailing spaces.
fn last_word(text: &str) -> &str {
    let text = text.trim_end();
    let start = text
        .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == '\\' || c == '('))
        .map_or(0, |i| i + c_len(text, i));
    &text[start..]
}

/// Whether `line` has `name` as a whole word.
fn names_word(line: &str, name: &str) -> bool {
    line.split(|c: char| !(c.is_alphanumeric() || c == '_')).any(|w| w.eq_ignore_ascii_case(name))
}

/// A keyword in the case the user types in.
fn cased(keyword: &str, typed: &str) -> String {
    if typed.chars().next().is_some_and(char::is_lowercase) {
        keyword.to_ascii_lowercase()
    } else {
        keyword.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<KnownRelation> {
        vec![
            KnownRelation { name: "sessions".into(), columns: vec!["id".into(), "starts_at".into(), "sold".into()] },
            KnownRelation { name: "calendar".into(), columns: vec!["day".into(), "seats_left".into()] },
        ]
    }

    fn candidates(line: &str) -> Vec<String> {
        complete(line, line.len(), &known()).1
    }

    #[test]
    fn show_completes_what_show_lists() {
        assert_eq!(candidates("SHOW T"), vec!["TABLES", "timezone"]);
        assert_eq!(candidates("show m"), vec!["materialized views"]);
        assert_eq!(candidates("SHOW S"), vec!["SOURCES", "SINKS", "SECRETS", "server_version"]);
    }

    #[test]
    fn relations_where_a_relation_goes() {
        assert_eq!(candidates("SELECT * FROM s"), vec!["sessions"]);
        assert_eq!(candidates("INSERT INTO ca"), vec!["calendar"]);
        assert_eq!(candidates("SELECT * FROM changes(se"), vec!["sessions"]);
        assert_eq!(candidates("\\d ses"), vec!["sessions"]);
    }

    #[test]
    fn columns_of_the_relations_named_and_of_a_qualifier() {
        assert_eq!(candidates("SELECT s.s"), Vec::<String>::new(), "s is no relation");
        assert_eq!(candidates("SELECT sessions.s"), vec!["starts_at", "sold"]);
        let line = "SELECT st FROM sessions";
        assert_eq!(complete(line, "SELECT st".len(), &known()), (7, vec!["starts_at".to_string()]));
        let line = "SELECT s FROM sessions";
        let (_, found) = complete(line, "SELECT s".len(), &known());
        assert_eq!(found[..3], ["starts_at", "sold", "sessions"]);
        assert!(found.contains(&"set".to_string()) && found.contains(&"select".to_string()), "{found:?}");
        // Columns of relations the line does not name are not offered.
        assert!(!candidates("SELECT se").contains(&"seats_left".to_string()));
    }

    #[test]
    fn keywords_elsewhere_in_the_case_typed() {
        assert_eq!(candidates("sel"), vec!["select"]);
        assert_eq!(candidates("SELECT 1 UN"), vec!["UNION ALL"]);
        assert!(candidates("").is_empty());
    }
}
