//! Kubernetes lists library: `isSorted()`, `sum()`, `min()`, `max()`, `indexOf()` and
//! `lastIndexOf()` on lists (the `cel` crate's lists extension has `slice`, `flatten`,
//! `distinct`, `reverse`, `sort`, `sortBy` and `lists.range`, none of these).

use std::cmp::Ordering;

use cel::common::types::{CelInt, DYN_TYPE, LIST_TYPE};
use cel::common::value::{CowVal, Val};
use cel::{DeclarationError, Env, ExecutionError};

use super::error;

pub fn register(env: &mut Env) -> Result<(), DeclarationError> {
    // By hand rather than with the macro: these take any list value, not only a `CelList`.
    env.add_member_overload("isSorted", "list.isSorted()", LIST_TYPE, vec![], is_sorted)?;
    env.add_member_overload("sum", "list.sum()", LIST_TYPE, vec![], sum)?;
    env.add_member_overload("min", "list.min()", LIST_TYPE, vec![], min)?;
    env.add_member_overload("max", "list.max()", LIST_TYPE, vec![], max)?;
    env.add_member_overload(
        "indexOf",
        "list.indexOf(dyn)",
        LIST_TYPE,
        vec![DYN_TYPE],
        index_of,
    )?;
    env.add_member_overload(
        "lastIndexOf",
        "list.lastIndexOf(dyn)",
        LIST_TYPE,
        vec![DYN_TYPE],
        last_index_of,
    )?;
    Ok(())
}

/// The elements of the list receiver, borrowed.
fn elements<'a, 'v>(
    function: &str,
    list: &'a (dyn Val + 'v),
) -> Result<Vec<&'a (dyn Val + 'v)>, ExecutionError> {
    let iterable = list
        .as_iterable()
        .ok_or_else(|| error(function, format!("not a list: {}", list.get_type().name())))?;
    let mut items = iterable.iter();
    let mut out = Vec::new();
    while let Some(item) = items.next() {
        out.push(item);
    }
    Ok(out)
}

fn receiver<'b, 'v>(
    function: &str,
    args: &[CowVal<'b, 'v>],
    arity: usize,
) -> Result<(), ExecutionError> {
    if args.len() == arity {
        Ok(())
    } else {
        Err(error(
            function,
            format!("expected {arity} arguments, got {}", args.len()),
        ))
    }
}

fn compare(function: &str, a: &dyn Val, b: &dyn Val) -> Result<Ordering, ExecutionError> {
    a.as_comparer()
        .ok_or_else(|| {
            error(
                function,
                format!("{} is not comparable", a.get_type().name()),
            )
        })?
        .compare(b)
}

fn is_sorted<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    receiver("isSorted", &args, 1)?;
    let items = elements("isSorted", args[0].as_ref())?;
    for pair in items.windows(2) {
        if compare("isSorted", pair[0], pair[1])? == Ordering::Greater {
            return Ok(CowVal::owned(cel::common::types::CelBool::from(false)));
        }
    }
    Ok(CowVal::owned(cel::common::types::CelBool::from(true)))
}

/// The sum of the elements; `0` for an empty list (the API server's type checker would pick the
/// zero of the element type; without types driftless answers the int).
fn sum<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    receiver("sum", &args, 1)?;
    let items = elements("sum", args[0].as_ref())?;
    let mut total: Option<Box<dyn Val + 'v>> = None;
    for item in items {
        total = Some(match total {
            None => item.clone_as_boxed(),
            Some(acc) => acc
                .as_adder()
                .ok_or_else(|| error("sum", format!("{} cannot be added", acc.get_type().name())))?
                .add(item)?
                .into_owned(),
        });
    }
    Ok(CowVal::Owned(
        total.unwrap_or_else(|| Box::new(CelInt::from(0))),
    ))
}

/// The first element that no other is preferred to (`prefer`: the ordering of the current pick
/// against a candidate that makes the candidate the new pick).
fn extreme<'b, 'v>(
    function: &str,
    args: Vec<CowVal<'b, 'v>>,
    prefer: Ordering,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    receiver(function, &args, 1)?;
    let items = elements(function, args[0].as_ref())?;
    let mut pick: Option<&(dyn Val + 'v)> = None;
    for item in items {
        pick = Some(match pick {
            Some(current) if compare(function, current, item)? != prefer => current,
            _ => item,
        });
    }
    pick.map(|v| CowVal::Owned(v.clone_as_boxed()))
        .ok_or_else(|| error(function, format!("{function} called on empty list")))
}

fn min<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    extreme("min", args, Ordering::Greater)
}

fn max<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    extreme("max", args, Ordering::Less)
}

fn position<'b, 'v>(
    function: &str,
    args: Vec<CowVal<'b, 'v>>,
    last: bool,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    receiver(function, &args, 2)?;
    let items = elements(function, args[0].as_ref())?;
    let wanted = args[1].as_ref();
    let found = if last {
        items.iter().rposition(|v| v.equals(wanted))
    } else {
        items.iter().position(|v| v.equals(wanted))
    };
    let index = found.and_then(|i| i64::try_from(i).ok()).unwrap_or(-1);
    Ok(CowVal::owned(CelInt::from(index)))
}

fn index_of<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    position("indexOf", args, false)
}

fn last_index_of<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    position("lastIndexOf", args, true)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::check;

    #[test]
    fn the_kubernetes_examples_hold() {
        check(
            &[
                "[1, 2, 3].isSorted() && ['a', 'b', 'b', 'c'].isSorted() && ![2.0, 1.0].isSorted()",
                "[1].isSorted() && [].isSorted()",
                "[1, 3].sum() == 4 && [1.0, 3.0].sum() == 4.0 && [].sum() == 0",
                "[duration('1m'), duration('1s')].sum() == duration('61s')",
                "[1, 3].min() == 1 && [1, 3].max() == 3 && [1].min() == 1 && ['b', 'a', 'c'].max() == 'c'",
                "[1, 2, 2, 3].indexOf(2) == 1 && ['a', 'b', 'b', 'c'].lastIndexOf('b') == 2",
                "[1.0].indexOf(1.1) == -1 && [].indexOf('string') == -1",
                "'abcb'.indexOf('b') == 1 && 'abcb'.lastIndexOf('b') == 3",
            ],
            &[
                ("[].min()", "min called on empty list"),
                ("[].max()", "max called on empty list"),
                ("[{}, {}].isSorted()", "not comparable"),
            ],
        );
    }
}
