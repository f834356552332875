//! The CEL environment policies are compiled in, and the conversion of objects into CEL values.
//!
//! The environment is the `cel` crate's standard library with optional syntax (`.?`, `orValue`),
//! its strings and lists extensions (as the API server enables them), and the few Kubernetes
//! library functions the shipped policies need: `find`/`findAll` (regex library, with compiled
//! patterns cached) and `isQuantity`. It is built once per `PolicySet`; programs are compiled
//! once per expression.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use cel::common::traits::{
    Adder, Comparer, Container as CelContainer, Indexer, Iterable, Sizer, Zeroer,
};
use cel::common::types::Type;
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
};
use cel::common::value::{Builtin, BuiltinRef, CowVal, Val};
use cel::{Context, Env, ExecutionError, Program, Value};
use serde_json::Value as Json;

/// Builds the environment every policy expression is compiled in.
pub fn environment() -> Result<Env, cel::DeclarationError> {
    let mut env = Env::stdlib();
    env.add_extension(cel::extensions::strings)?;
    env.add_extension(cel::extensions::lists)?;
    cel::add_member_overload!(env, fn find: (CelString, CelString) -> Result<CelString>)?;
    cel::add_member_overload!(env, fn find_all: (CelString, CelString) -> Result<CelList>)?;
    cel::add_overload!(env, fn is_quantity: (CelString) -> CelBool)?;
    Ok(env)
}

/// Compiles one expression.
pub fn compile(env: &Env, source: &str) -> Result<Program, String> {
    env.compile(source).map_err(|e| e.to_string())
}

/// Converts a JSON object into a CEL value once; evaluations borrow it. Strings, lists and maps
/// are shared (`Shared`): CEL copies a value each time a comprehension binds it (`c` in
/// `containers.all(c, ...)`) or a list concatenation takes it, and for an object tree a deep copy
/// per binding is what dominates evaluation time otherwise.
pub fn to_val(value: &Json) -> Box<dyn Val + 'static> {
    match value {
        Json::Null => Box::new(CelNull),
        Json::Bool(b) => Box::new(CelBool::from(*b)),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Box::new(CelInt::from(i)),
            (None, Some(u)) => Box::new(CelUInt::from(u)),
            _ => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
        },
        Json::String(s) => Box::new(Shared(Arc::new(CelString::from(s.clone())))),
        Json::Array(items) => Box::new(Shared(Arc::new(CelList::from(
            items.iter().map(to_val).collect::<Vec<_>>(),
        )))),
        Json::Object(map) => Box::new(Shared(Arc::new(CelMap::from(
            map.iter()
                .map(|(k, v)| (CelMapKey::from(k.clone()), to_val(v)))
                .collect::<HashMap<_, _>>(),
        )))),
    }
}

/// A CEL map of the given entries (shared as `to_val`'s maps are).
pub fn map_val(entries: Vec<(&str, Box<dyn Val + 'static>)>) -> Box<dyn Val + 'static> {
    Box::new(Shared(Arc::new(CelMap::from(
        entries
            .into_iter()
            .map(|(k, v)| (CelMapKey::from(k.to_owned()), v))
            .collect::<HashMap<_, _>>(),
    ))))
}

/// A CEL string (shared as `to_val`'s strings are).
pub fn string_val(s: &str) -> Box<dyn Val + 'static> {
    Box::new(Shared(Arc::new(CelString::from(s.to_owned()))))
}

/// A CEL value behind an `Arc`: copying it is a reference count. Every operation is the inner
/// value's own (the wrapper presents itself as the built-in it holds).
#[derive(Debug)]
struct Shared<T>(Arc<T>);

impl<T: Val + Clone + 'static> Val for Shared<T> {
    fn get_type(&self) -> &Type {
        self.0.get_type()
    }

    fn cel_type() -> &'static Type {
        T::cel_type()
    }

    fn as_adder<'b, 'v>(&'b self) -> Option<&'b (dyn Adder + 'v)>
    where
        Self: 'v,
    {
        self.0.as_adder()
    }

    fn as_comparer(&self) -> Option<&dyn Comparer> {
        self.0.as_comparer()
    }

    fn as_container(&self) -> Option<&dyn CelContainer> {
        self.0.as_container()
    }

    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        self.0.as_indexer()
    }

    fn into_indexer<'v>(self: Box<Self>) -> Option<Box<dyn Indexer + 'v>>
    where
        Self: 'v,
    {
        Box::new(Arc::unwrap_or_clone(self.0)).into_indexer()
    }

    fn as_iterable<'b, 'v>(&'b self) -> Option<&'b (dyn Iterable + 'v)>
    where
        Self: 'v,
    {
        self.0.as_iterable()
    }

    fn as_sizer(&self) -> Option<&dyn Sizer> {
        self.0.as_sizer()
    }

    fn as_zeroer(&self) -> Option<&dyn Zeroer> {
        self.0.as_zeroer()
    }

    fn equals(&self, other: &dyn Val) -> bool {
        self.0.equals(other)
    }

    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
    where
        Self: 'v,
    {
        Box::new(Shared(Arc::clone(&self.0)))
    }

    fn as_builtin<'b, 'v>(&'b self) -> BuiltinRef<'b, 'v>
    where
        Self: 'v,
    {
        self.0.as_builtin()
    }

    fn into_builtin<'v>(self: Box<Self>) -> Option<Builtin<'v>>
    where
        Self: 'v,
    {
        Box::new(Arc::unwrap_or_clone(self.0)).into_builtin()
    }
}

/// A context whose variables are the given values: the root of one admission request's
/// evaluations (`object`, `oldObject`, `request`, `namespaceObject`), converted once. Policies
/// evaluate in child scopes of it that add `params` and `variables.<name>`.
pub fn request_context(
    env: &Arc<Env>,
    variables: Vec<(&str, Box<dyn Val + 'static>)>,
) -> Context<'static, 'static> {
    let mut context = Context::with_env(Arc::clone(env));
    for (name, value) in variables {
        context.add_variable_as_val(name, value);
    }
    context
}

/// Evaluates `program` in `context`. The result borrows from the context where it can.
pub fn evaluate<'e>(
    program: &'e Program,
    context: &'e Context<'_, 'static>,
) -> Result<CowVal<'e, 'static>, String> {
    Value::resolve_val(program.expression(), context).map_err(|e| describe(&e))
}

/// Evaluates `program` into a plain value (for bools and strings: cheap).
pub fn execute(program: &Program, context: &Context<'_, 'static>) -> Result<Value, String> {
    let v = evaluate(program, context)?;
    Value::try_from(v.as_ref()).map_err(|e| describe(&e))
}

fn describe(e: &ExecutionError) -> String {
    match e {
        ExecutionError::UndeclaredReference(name) if name.as_str() == "authorizer" => {
            "authorizer is not available when policies are evaluated by driftless".to_owned()
        }
        other => other.to_string(),
    }
}

/// Compiled regular expressions of `find`/`findAll`, by pattern (patterns come from policies,
/// so the cache stays small).
static REGEXES: LazyLock<Mutex<HashMap<String, Arc<regex::Regex>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn regex(function: &str, pattern: &str) -> Result<Arc<regex::Regex>, ExecutionError> {
    let mut cache = REGEXES
        .lock()
        .map_err(|_| ExecutionError::function_error(function, "regex cache poisoned"))?;
    if let Some(re) = cache.get(pattern) {
        return Ok(Arc::clone(re));
    }
    let re = regex::Regex::new(pattern)
        .map(Arc::new)
        .map_err(|e| ExecutionError::function_error(function, format!("invalid regex: {e}")))?;
    cache.insert(pattern.to_owned(), Arc::clone(&re));
    Ok(re)
}

/// Kubernetes regex library: the first match, or the empty string.
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

/// Kubernetes regex library: every match.
fn find_all(
    this: &CelString<'_>,
    pattern: &CelString<'_>,
) -> Result<CelList<'static>, ExecutionError> {
    let re = regex("findAll", pattern.inner())?;
    let found: Vec<Box<dyn Val>> = re
        .find_iter(this.inner())
        .map(|m| Box::new(CelString::from(m.as_str().to_owned())) as Box<dyn Val>)
        .collect();
    Ok(CelList::from(found))
}

/// Kubernetes quantity library: whether the string is a resource quantity (`100m`, `1Gi`, `2e3`).
fn is_quantity(this: &CelString<'_>) -> CelBool {
    static QUANTITY: LazyLock<Option<regex::Regex>> = LazyLock::new(|| {
        regex::Regex::new(
            r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$",
        )
        .ok()
    });
    CelBool::from(
        QUANTITY
            .as_ref()
            .is_some_and(|re| re.is_match(this.inner())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(expr: &str, object: Json) -> Result<Value, String> {
        let env = Arc::new(environment().unwrap());
        let program = compile(&env, expr).unwrap();
        let context = request_context(&env, vec![("object", to_val(&object))]);
        execute(&program, &context)
    }

    #[test]
    fn the_kubernetes_idioms_evaluate() {
        let pod = json!({"spec": {"containers": [{"name": "a", "image": "localhost:30500/x/y:1"}], "replicas": 2}});
        let cases: &[(&str, Value)] = &[
            ("object.?spec.?replicas.orValue(1)", Value::Int(2)),
            ("object.?spec.?missing.orValue(1)", Value::Int(1)),
            ("has(object.spec.containers)", Value::Bool(true)),
            (
                "object.spec.containers.map(c, c.name).join(', ')",
                Value::from("a"),
            ),
            (
                "object.spec.containers[0].image.split('/')[0]",
                Value::from("localhost:30500"),
            ),
            ("'abc-123'.find('[0-9]+')", Value::from("123")),
            ("'a1b22'.findAll('[0-9]+').size()", Value::Int(2)),
            (
                "isQuantity('100m') && !isQuantity('lots')",
                Value::Bool(true),
            ),
            ("'AbC'.lowerAscii().matches('^abc$')", Value::Bool(true)),
            ("[1, 2] + [3] == [1, 2, 3]", Value::Bool(true)),
            ("object.spec.replicas > 1", Value::Bool(true)),
            ("'x' in ['x', 'y']", Value::Bool(true)),
        ];
        for (expr, want) in cases {
            assert_eq!(eval(expr, pod.clone()).as_ref(), Ok(want), "{expr}");
        }
    }

    #[test]
    fn missing_keys_and_the_authorizer_are_errors() {
        assert!(eval("object.spec.nothing == 1", json!({"spec": {}})).is_err());
        let e = eval("authorizer.group('') != null", json!({})).unwrap_err();
        assert!(e.contains("authorizer is not available"), "{e}");
    }
}
