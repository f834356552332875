//! PostgreSQL globals (`pg_dumpall --globals-only`: roles, memberships, tablespaces) restored
//! with `backup restore --globals`: roles the server lacks are created, existing ones are left
//! exactly as they are. Pure: [`globals_plan`] decides the SQL; `restore` runs it with psql.

/// What applying a `globals.sql` does: the SQL to run and the roles it creates or leaves alone.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GlobalsPlan {
    pub sql: String,
    /// Roles the SQL creates.
    pub created: Vec<String>,
    /// Roles that exist already: their `CREATE ROLE` and `ALTER ROLE` lines are left out, so
    /// their attributes and passwords stay as they are.
    pub existing: Vec<String>,
    /// Tablespace statements left out (a tablespace needs its directory on the server).
    pub skipped_tablespace_lines: usize,
}

/// Plans applying `pg_dumpall --globals-only` output on a server whose roles are `existing`
/// (pure). Everything else (role memberships, settings) is kept; granting a membership that
/// exists is only a notice.
pub fn globals_plan(sql: &str, existing: &[String]) -> GlobalsPlan {
    let mut plan = GlobalsPlan::default();
    for line in sql.lines() {
        if let Some(rest) = line.strip_prefix("CREATE ROLE ")
            && let Some(role) = role_name(rest)
        {
            if existing.contains(&role) {
                plan.existing.push(role);
                continue;
            }
            plan.created.push(role);
        } else if let Some(rest) = line.strip_prefix("ALTER ROLE ")
            && let Some(role) = role_name(rest)
            && plan.existing.contains(&role)
        {
            continue;
        } else if [
            "CREATE TABLESPACE ",
            "ALTER TABLESPACE ",
            "COMMENT ON TABLESPACE ",
        ]
        .iter()
        .any(|p| line.starts_with(p))
        {
            plan.skipped_tablespace_lines += 1;
            continue;
        }
        plan.sql.push_str(line);
        plan.sql.push('\n');
    }
    plan
}

/// The role name at the start of `rest` (`name …` or `"Quoted ""name"""…`), unquoted.
fn role_name(rest: &str) -> Option<String> {
    if let Some(q) = rest.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = q.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    name.push('"');
                } else {
                    return Some(name);
                }
            } else {
                name.push(c);
            }
        }
        None
    } else {
        let name: String = rest
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != ';')
            .collect();
        (!name.is_empty()).then_some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GLOBALS_SQL: &str = "--\n-- Roles\n--\n\nCREATE ROLE app;\nALTER ROLE app WITH NOSUPERUSER INHERIT LOGIN PASSWORD 'SCRAM-SHA-256$4096:x';\n\
CREATE ROLE driftless;\nALTER ROLE driftless WITH SUPERUSER LOGIN;\nCREATE ROLE \"Odd \"\"name\"\"\";\n\
ALTER ROLE \"Odd \"\"name\"\"\" WITH NOLOGIN;\nALTER ROLE app SET search_path TO app;\n\
GRANT driftless TO app GRANTED BY driftless;\nCREATE TABLESPACE fast OWNER app LOCATION '/ssd';\n";

    #[test]
    fn globals_create_missing_roles_and_leave_existing_ones() {
        let plan = globals_plan(
            GLOBALS_SQL,
            &["driftless".to_owned(), "pg_monitor".to_owned()],
        );
        assert_eq!(plan.created, ["app", "Odd \"name\""]);
        assert_eq!(plan.existing, ["driftless"]);
        assert_eq!(plan.skipped_tablespace_lines, 1);
        assert!(plan.sql.contains("CREATE ROLE app;\nALTER ROLE app WITH"));
        assert!(plan.sql.contains("ALTER ROLE app SET search_path"));
        assert!(
            plan.sql
                .contains("ALTER ROLE \"Odd \"\"name\"\"\" WITH NOLOGIN")
        );
        assert!(plan.sql.contains("GRANT driftless TO app"));
        assert!(!plan.sql.contains("ROLE driftless"), "{}", plan.sql);
        assert!(!plan.sql.contains("TABLESPACE"));

        let all = globals_plan(GLOBALS_SQL, &[]);
        assert_eq!(all.created.len(), 3);
        assert!(all.existing.is_empty());
    }

    #[test]
    fn role_names_unquote() {
        assert_eq!(role_name("app;").as_deref(), Some("app"));
        assert_eq!(role_name("app WITH LOGIN;").as_deref(), Some("app"));
        assert_eq!(role_name("\"a \"\"b\"\"\";").as_deref(), Some("a \"b\""));
        assert_eq!(role_name("\"unterminated"), None);
        assert_eq!(role_name(";"), None);
    }
}
