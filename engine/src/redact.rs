//! Keeps credentials out of what changeflow shows: the password of a URL
//! (`postgres://user:secret@host`), the value of a `password` setting (`password=secret`
//! in a connection string, `password = 'secret'` in a WITH clause) and the value of
//! `CREATE SECRET name AS 'value'` become `***` in messages, SHOW output and logs.

/// What replaces a password.
const MASK: &str = "***";

/// The text with every password it holds replaced by `***`.
pub fn redact_credentials(text: &str) -> String {
    redact_secret_values(&redact_password_settings(&redact_url_passwords(text)))
}

/// `CREATE SECRET name AS 'value'` -> `CREATE SECRET name AS '***'`.
fn redact_secret_values(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search_from = 0;
    while let Some(found) = lower[search_from..].find("secret") {
        let after_keyword = search_from + found + "secret".len();
        search_from = after_keyword;
        // SECRET, a name (maybe quoted), AS, then the quoted value.
        let rest = &lower[after_keyword..];
        let name_start = rest.len() - rest.trim_start().len();
        if name_start == 0 {
            continue;
        }
        let rest = &rest[name_start..];
        let name_len = match rest.strip_prefix('"') {
            Some(quoted) => quoted.find('"').map_or(rest.len(), |end| end + 2),
            None => rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len()),
        };
        let rest = &rest[name_len..];
        let trimmed = rest.trim_start();
        if trimmed.len() == rest.len() || !trimmed.starts_with("as") {
            continue;
        }
        let value = trimmed["as".len()..].trim_start();
        if !value.starts_with('\'') {
            continue;
        }
        let value_start = text.len() - value.len();
        let value_end = quoted_end(text, value_start);
        out.push_str(&text[copied..value_start + 1]);
        out.push_str(MASK);
        copied = value_end;
        search_from = value_end.max(search_from);
    }
    out.push_str(&text[copied..]);
    out
}

/// Where the quoted string that starts at `start` (at its opening quote) ends: at its
/// closing quote (a doubled quote stays inside), or at the end of the text.
fn quoted_end(text: &str, start: usize) -> usize {
    let Some(quote) = text[start..].chars().next() else { return text.len() };
    let body = &text[start + 1..];
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == quote {
            if chars.peek().is_some_and(|&(_, next)| next == quote) {
                chars.next();
                continue;
            }
            return start + 1 + i;
        }
    }
    text.len()
}

/// `scheme://user:password@host` -> `scheme://user:***@host`.
fn redact_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let authority_end = after.find(['/', ' ', '\'', '"', '`', '\n', ')', ',', '?']).unwrap_or(after.len());
        let authority = &after[..authority_end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(user_end), Some(colon)) if colon < user_end => {
                out.push_str(&authority[..=colon]);
                out.push_str(MASK);
                out.push_str(&authority[user_end..]);
            }
            _ => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    out
}

/// `password=secret`, `password = 'secret'`, `"password": "secret"` -> the value masked.
fn redact_password_settings(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search_from = 0;
    while let Some(found) = lower[search_from..].find("password") {
        let key_end = search_from + found + "password".len();
        search_from = key_end;
        let after_key = &text[key_end..];
        // The key may be quoted (JSON) and followed by `=` or `:`, with spaces around.
        let trimmed = after_key.trim_start_matches(['"', '\'']).trim_start();
        let Some(value) = trimmed.strip_prefix(['=', ':']) else { continue };
        let value = value.trim_start();
        if value.get(..7).is_some_and(|word| word.eq_ignore_ascii_case("secret ")) {
            // `password = SECRET name` names a secret: nothing to hide.
            continue;
        }
        let value_start = text.len() - value.len();
        let value_end = match value.chars().next() {
            Some('\'' | '"') => quoted_end(text, value_start),
            _ => value_start + value.find([' ', ',', ')', ';', '\n']).unwrap_or(value.len()),
        };
        let masked_from = if value.starts_with(['\'', '"']) { value_start + 1 } else { value_start };
        if masked_from >= value_end {
            continue;
        }
        out.push_str(&text[copied..masked_from]);
        out.push_str(MASK);
        copied = value_end;
        search_from = value_end;
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::redact_credentials;

    #[test]
    fn passwords_are_masked_wherever_they_appear() {
        for (text, expected) in [
            (
                "the stored definition has `'postgres://postgres:S3cretSRC@db:5432/app'`",
                "the stored definition has `'postgres://postgres:***@db:5432/app'`",
            ),
            ("postgres://u:p%40ss@h/d and postgres://plain@h/d", "postgres://u:***@h/d and postgres://plain@h/d"),
            ("host=h user=u password=s3cret dbname=d", "host=h user=u password=*** dbname=d"),
            (
                "WITH (url = 'x', password = 'it''s secret', slot = 's')",
                "WITH (url = 'x', password = '***', slot = 's')",
            ),
            ("{\"password\": \"s\", \"user\": \"u\"}", "{\"password\": \"***\", \"user\": \"u\"}"),
            ("PASSWORD=abc", "PASSWORD=***"),
            ("password_env = 'PG_PASS'", "password_env = 'PG_PASS'"),
            ("no secrets here: http://host/path, a:b@c", "no secrets here: http://host/path, a:b@c"),
            ("wrong password for user é", "wrong password for user é"),
            ("CREATE SECRET pg AS 'S3''cr et'", "CREATE SECRET pg AS '***'"),
            ("create secret \"My Pass\" as\n'x' ; SELECT 1", "create secret \"My Pass\" as\n'***' ; SELECT 1"),
            ("password = SECRET pg_pass, url = 'u'", "password = SECRET pg_pass, url = 'u'"),
        ] {
            assert_eq!(redact_credentials(text), expected, "{text}");
        }
    }

    #[test]
    fn any_text_is_redacted_without_panicking() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(26);
        let pieces = ["password", "=", " ", "'", "\"", "://", "@", ":", "é", "x", "/", "''", "secret", "as"];
        for _ in 0..5_000 {
            let text: String =
                (0..rng.random_range(0..12)).map(|_| pieces[rng.random_range(0..pieces.len())]).collect();
            let _ = redact_credentials(&text);
        }
    }
}
