//! Kubernetes regex library: `find` and `findAll` (`matches` is the standard library's).
//! Patterns come from policies, so compiled patterns are cached for the life of the process.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use cel::common::types::{CelInt, CelList, CelString};
use cel::common::value::Val;
use cel::{DeclarationError, Env, ExecutionError};

use super::error;

pub fn register(env: &mut Env) -> Result<(), DeclarationError> {
    cel::add_member_overload!(env, fn find: (CelString, CelString) -> Result<CelString>)?;
    cel::add_member_overload!(env, fn find_all: (CelString, CelString) -> Result<CelList>)?;
    cel::add_member_overload!(
        env,
        fn find_all_limit: (CelString, CelString, CelInt) -> Result<CelList>,
        name = "findAll"
    )?;
    Ok(())
}

/// Compiled regular expressions, by pattern.
static REGEXES: LazyLock<Mutex<HashMap<String, Arc<regex::Regex>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The compiled `pattern`, from the cache when it was compiled before.
pub fn regex(function: &str, pattern: &str) -> Result<Arc<regex::Regex>, ExecutionError> {
    let mut cache = REGEXES
        .lock()
        .map_err(|_| error(function, "regex cache poisoned"))?;
    if let Some(re) = cache.get(pattern) {
        return Ok(Arc::clone(re));
    }
    let re = regex::Regex::new(pattern)
        .map(Arc::new)
        .map_err(|e| error(function, format!("invalid regex: {e}")))?;
    cache.insert(pattern.to_owned(), Arc::clone(&re));
    Ok(re)
}

/// The first match, or the empty string.
fn find(
    this: &CelString<'_>,
    pattern: &CelString<'_>,
) -> Result<CelString<'static>, ExecutionError> {
    let re = regex("find", pattern.inner())?;
    Ok(CelString::from(
        re.find(this.inner())
            .map(|m| m.as_str().to_owned())
            .unwrap_or_default(),
    ))
}

/// Every match.
fn find_all(
    this: &CelString<'_>,
    pattern: &CelString<'_>,
) -> Result<CelList<'static>, ExecutionError> {
    find_all_limit(this, pattern, &CelInt::from(-1))
}

/// At most `limit` matches (all when negative, as Go's `FindAllString`).
fn find_all_limit(
    this: &CelString<'_>,
    pattern: &CelString<'_>,
    limit: &CelInt,
) -> Result<CelList<'static>, ExecutionError> {
    let re = regex("findAll", pattern.inner())?;
    let limit = usize::try_from(*limit.inner()).unwrap_or(usize::MAX);
    let found: Vec<Box<dyn Val>> = re
        .find_iter(this.inner())
        .take(limit)
        .map(|m| Box::new(CelString::from(m.as_str().to_owned())) as Box<dyn Val>)
        .collect();
    Ok(CelList::from(found))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::check;

    #[test]
    fn find_and_find_all() {
        check(
            &[
                "'abc-123'.find('[0-9]+') == '123'",
                "'abc'.find('[0-9]+') == ''",
                "'a1b22c333'.findAll('[0-9]+') == ['1', '22', '333']",
                "'a1b22c333'.findAll('[0-9]+', 2) == ['1', '22']",
                "'a1b22c333'.findAll('[0-9]+', 0) == []",
                "'a1b22c333'.findAll('[0-9]+', -1).size() == 3",
            ],
            &[("'x'.find('[')", "invalid regex")],
        );
    }
}
