//! Kubernetes regex library: `find` and `findAll` (`matches` is the standard library's).
//! Patterns come from policies, so compiled patterns are cached for the life of the process.

use std::cell::RefCell;
use std::collections::HashMap;

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

thread_local! {
    /// Compiled regular expressions, by pattern, per thread: no lock on the evaluation path, and
    /// each thread matches with its own regex scratch space.
    static REGEXES: RefCell<HashMap<String, regex::Regex>> = RefCell::new(HashMap::new());
}

/// `f` applied to the compiled `pattern` (compiled on its first use by this thread).
fn with_regex<T>(
    function: &str,
    pattern: &str,
    f: impl FnOnce(&regex::Regex) -> T,
) -> Result<T, ExecutionError> {
    REGEXES.with(|cache| {
        if let Some(re) = cache.borrow().get(pattern) {
            return Ok(f(re));
        }
        let re = regex::Regex::new(pattern)
            .map_err(|e| error(function, format!("invalid regex: {e}")))?;
        let result = f(&re);
        cache.borrow_mut().insert(pattern.to_owned(), re);
        Ok(result)
    })
}

/// The first match, or the empty string.
fn find(
    this: &CelString<'_>,
    pattern: &CelString<'_>,
) -> Result<CelString<'static>, ExecutionError> {
    with_regex("find", pattern.inner(), |re| {
        CelString::from(
            re.find(this.inner())
                .map(|m| m.as_str().to_owned())
                .unwrap_or_default(),
        )
    })
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
    let limit = usize::try_from(*limit.inner()).unwrap_or(usize::MAX);
    with_regex("findAll", pattern.inner(), |re| {
        let found: Vec<Box<dyn Val>> = re
            .find_iter(this.inner())
            .take(limit)
            .map(|m| Box::new(CelString::from(m.as_str().to_owned())) as Box<dyn Val>)
            .collect();
        CelList::from(found)
    })
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
