//! The CEL environment policies are compiled in, and the conversion of objects into CEL values.
//!
//! The environment is the `cel` crate's standard library with optional syntax (`.?`, `orValue`),
//! its strings and lists extensions (as the API server enables them), and the Kubernetes
//! libraries of `super::library` (regex, quantity, IP/CIDR, URL, lists). It is built once per
//! `PolicySet`; programs are compiled once per expression.

use std::collections::HashMap;
use std::sync::Arc;

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
    super::library::register(&mut env)?;
    Ok(env)
}

/// Compiles one expression.
pub fn compile(env: &Env, source: &str) -> Result<Program, String> {
    env.compile(source).map_err(|e| e.to_string())
}

/// The names `variables.<name>` that `program` refers to, in order of first use.
pub fn variable_references(program: &Program) -> Vec<String> {
    fn walk(expr: &cel::IdedExpr, out: &mut Vec<String>) {
        use cel::common::ast::{EntryExpr, Expr};
        match &expr.expr {
            Expr::Select(select) => {
                if let Expr::Ident(root) = &select.operand.expr
                    && root == "variables"
                {
                    if !out.contains(&select.field) {
                        out.push(select.field.clone());
                    }
                } else {
                    walk(&select.operand, out);
                }
            }
            Expr::Call(call) => {
                if let Some(target) = &call.target {
                    walk(target, out);
                }
                call.args.iter().for_each(|a| walk(a, out));
            }
            Expr::Comprehension(c) => {
                for e in [
                    &c.iter_range,
                    &c.accu_init,
                    &c.loop_cond,
                    &c.loop_step,
                    &c.result,
                ] {
                    walk(e, out);
                }
            }
            Expr::List(list) => list.elements.iter().for_each(|e| walk(e, out)),
            Expr::Map(map) => map.entries.iter().for_each(|e| match &e.expr {
                EntryExpr::MapEntry(m) => {
                    walk(&m.key, out);
                    walk(&m.value, out);
                }
                EntryExpr::StructField(f) => walk(&f.value, out),
            }),
            Expr::Struct(s) => s.entries.iter().for_each(|e| match &e.expr {
                EntryExpr::MapEntry(m) => {
                    walk(&m.key, out);
                    walk(&m.value, out);
                }
                EntryExpr::StructField(f) => walk(&f.value, out),
            }),
            Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
    let mut out = Vec::new();
    walk(program.expression(), &mut out);
    out
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
