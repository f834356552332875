//! The CEL environment policies and declared health checks are compiled in, and the conversion
//! of objects into CEL values (a leaf both `policy` and `health_checks` use).
//!
//! The environment is the `cel` crate's standard library with optional syntax (`.?`, `orValue`),
//! its strings and lists extensions (as the API server enables them), and the Kubernetes
//! libraries of `library` (regex, quantity, IP/CIDR, URL, lists). It is built once per
//! `PolicySet`; programs are compiled once per expression.

use std::collections::HashMap;
use std::sync::Arc;

mod library;

use cel::common::traits::{
    Adder, Comparer, Container as CelContainer, Indexer, Iterable, Sizer, Zeroer,
};
use cel::common::types::Type;
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
};
use cel::common::value::{Builtin, BuiltinRef, CowVal, Val};
use cel::{Context, Env, ExecutionError, IdedExpr, Program, Value};
use serde_json::Value as Json;

/// Builds the environment every policy expression is compiled in.
pub fn environment() -> Result<Env, cel::DeclarationError> {
    let mut env = Env::stdlib();
    env.add_extension(cel::extensions::strings)?;
    env.add_extension(cel::extensions::lists)?;
    library::register(&mut env)?;
    Ok(env)
}

/// Compiles one expression.
pub fn compile(env: &Env, source: &str) -> Result<Program, String> {
    env.compile(source).map_err(|e| e.to_string())
}

/// The variables every request binds (`object`, …) and `params`: their fields are never also
/// variables of their own.
const REQUEST_VARIABLES: &[&str] = &[
    "object",
    "oldObject",
    "request",
    "params",
    "namespaceObject",
];

/// `program`'s expression, rewritten for evaluation: a field selection on a request variable,
/// on a comprehension's variable or on `variables.<name>` (`c.image`, `object.spec`) becomes an
/// index (`c["image"]`). The interpreter resolves a dotted name by trying every prefix in every
/// scope (`c.image`, then `c`), joining the segments into a new string each time; an index
/// resolves the variable once. The result is the same: the names rewritten are variables, never
/// qualified names of their own, and `has()` tests keep their selection.
pub fn optimize(program: &Program) -> IdedExpr {
    fn max_id(e: &IdedExpr) -> u64 {
        use cel::common::ast::{EntryExpr, Expr};
        let children: Vec<&IdedExpr> = match &e.expr {
            Expr::Select(s) => vec![&s.operand],
            Expr::Call(c) => c.target.iter().map(|t| t.as_ref()).chain(&c.args).collect(),
            Expr::Comprehension(c) => {
                vec![
                    &c.iter_range,
                    &c.accu_init,
                    &c.loop_cond,
                    &c.loop_step,
                    &c.result,
                ]
            }
            Expr::List(l) => l.elements.iter().collect(),
            Expr::Map(cel::common::ast::MapExpr { entries })
            | Expr::Struct(cel::common::ast::StructExpr { entries, .. }) => entries
                .iter()
                .flat_map(|e| match &e.expr {
                    EntryExpr::MapEntry(m) => vec![&m.key, &m.value],
                    EntryExpr::StructField(f) => vec![&f.value],
                })
                .collect(),
            Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Vec::new(),
        };
        children.into_iter().map(max_id).fold(e.id, u64::max)
    }

    /// Whether `e` resolves to a value without a qualified-name lookup of its own: a request
    /// or comprehension variable, `variables.<name>`, or an index into one of them.
    fn plain_value(e: &IdedExpr, locals: &[String]) -> bool {
        use cel::common::ast::Expr;
        match &e.expr {
            Expr::Ident(name) => {
                REQUEST_VARIABLES.contains(&name.as_str()) || locals.iter().any(|l| l == name)
            }
            Expr::Select(s) => {
                !s.test && matches!(&s.operand.expr, Expr::Ident(root) if root == "variables")
            }
            Expr::Call(c) => c.func_name == cel::common::ast::operators::INDEX,
            _ => false,
        }
    }

    fn walk(e: &mut IdedExpr, locals: &mut Vec<String>, next_id: &mut u64) {
        use cel::common::ast::{CallExpr, EntryExpr, Expr, LiteralValue, operators};
        match &mut e.expr {
            Expr::Select(s) => {
                walk(&mut s.operand, locals, next_id);
                if !s.test && plain_value(&s.operand, locals) {
                    *next_id += 1;
                    let key = IdedExpr {
                        id: *next_id,
                        expr: Expr::Literal(LiteralValue::String(CelString::from(s.field.clone()))),
                    };
                    let operand = std::mem::take(&mut *s.operand);
                    e.expr = Expr::Call(CallExpr {
                        func_name: operators::INDEX.to_owned(),
                        target: None,
                        args: vec![operand, key],
                    });
                }
            }
            Expr::Call(c) => {
                if let Some(t) = &mut c.target {
                    walk(t, locals, next_id);
                }
                c.args.iter_mut().for_each(|a| walk(a, locals, next_id));
            }
            Expr::Comprehension(c) => {
                walk(&mut c.iter_range, locals, next_id);
                walk(&mut c.accu_init, locals, next_id);
                let before = locals.len();
                locals.push(c.iter_var.clone());
                locals.extend(c.iter_var2.clone());
                locals.push(c.accu_var.clone());
                walk(&mut c.loop_cond, locals, next_id);
                walk(&mut c.loop_step, locals, next_id);
                walk(&mut c.result, locals, next_id);
                locals.truncate(before);
            }
            Expr::List(l) => l.elements.iter_mut().for_each(|x| walk(x, locals, next_id)),
            Expr::Map(m) => m.entries.iter_mut().for_each(|x| match &mut x.expr {
                EntryExpr::MapEntry(m) => {
                    walk(&mut m.key, locals, next_id);
                    walk(&mut m.value, locals, next_id);
                }
                EntryExpr::StructField(f) => walk(&mut f.value, locals, next_id),
            }),
            Expr::Struct(s) => s.entries.iter_mut().for_each(|x| match &mut x.expr {
                EntryExpr::MapEntry(m) => {
                    walk(&mut m.key, locals, next_id);
                    walk(&mut m.value, locals, next_id);
                }
                EntryExpr::StructField(f) => walk(&mut f.value, locals, next_id),
            }),
            Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
        }
    }

    let mut expression = program.expression().clone();
    let mut next_id = max_id(&expression);
    walk(&mut expression, &mut Vec::new(), &mut next_id);
    expression
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

/// `value` with a list or map behind an `Arc`, so that copies of it (a cached variable bound in
/// every policy that declares it, a comprehension's loop variable) cost a reference count.
pub fn shared(value: Box<dyn Val + 'static>) -> Box<dyn Val + 'static> {
    let already = value
        .as_any()
        .is_some_and(|a| a.is::<Shared<CelList<'static>>>() || a.is::<Shared<CelMap<'static>>>());
    if already || !matches!(value.as_builtin(), BuiltinRef::List(_) | BuiltinRef::Map(_)) {
        return value;
    }
    match value.into_builtin() {
        Some(Builtin::List(list)) => Box::new(Shared(Arc::new(list))),
        Some(Builtin::Map(map)) => Box::new(Shared(Arc::new(map))),
        // Not reached: only lists and maps get here.
        Some(_) | None => map_val(Vec::new()),
    }
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

    // Lets `shared` recognise a value that is shared already; downcasts to the built-in type go
    // through `as_builtin` as before.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
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

/// Evaluates `expression` (a program's, see `optimize`) in `context`. The result borrows from the
/// context where it can.
pub fn evaluate<'e>(
    expression: &'e IdedExpr,
    context: &'e Context<'_, 'static>,
) -> Result<CowVal<'e, 'static>, String> {
    Value::resolve_val(expression, context).map_err(|e| describe(&e))
}

/// Evaluates `expression` into a plain value (for bools and strings: cheap).
pub fn execute(expression: &IdedExpr, context: &Context<'_, 'static>) -> Result<Value, String> {
    let v = evaluate(expression, context)?;
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
        assert_eq!(
            execute(program.expression(), &context),
            execute(&optimize(&program), &context),
            "{expr}: the rewritten expression answers as the parsed one"
        );
        execute(&optimize(&program), &context)
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
