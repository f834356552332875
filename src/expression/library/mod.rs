//! The Kubernetes CEL libraries (`k8s.io/apiserver/pkg/cel/library`) as far as driftless provides
//! them, one file per library, each registered on the policy environment by `register`.
//!
//! Values of the libraries' own types (quantities, IP addresses, CIDRs, URLs) are `'static` Rust
//! values behind `Val`, compared with `==` as the API server compares them. A function that
//! cannot produce a value (a string that is not a quantity, an overflow) returns a CEL evaluation
//! error; nothing here panics.

mod lists;
mod net;
mod quantity;
mod regex;
mod url;

use cel::{DeclarationError, Env, ExecutionError};

/// Registers every library on `env` (which already has the standard library and the strings and
/// lists extensions).
pub fn register(env: &mut Env) -> Result<(), DeclarationError> {
    regex::register(env)?;
    quantity::register(env)?;
    net::register(env)?;
    url::register(env)?;
    lists::register(env)?;
    Ok(())
}

/// An evaluation error of library function `function`.
fn error(function: &str, message: impl std::fmt::Display) -> ExecutionError {
    ExecutionError::function_error(function, message.to_string())
}

/// Implements `Val` for a `'static` library type with a fixed CEL type name: equality is the
/// type's `PartialEq` against another value of the same type, copies are clones.
macro_rules! opaque_val {
    ($ty:ty, $name:literal) => {
        impl ::cel::common::value::Val for $ty {
            fn get_type(&self) -> &::cel::common::types::Type {
                <Self as ::cel::common::value::Val>::cel_type()
            }

            fn cel_type() -> &'static ::cel::common::types::Type {
                static TYPE: ::cel::common::types::Type =
                    ::cel::common::types::Type::new_unspecified_type($name);
                &TYPE
            }

            fn equals(&self, other: &dyn ::cel::common::value::Val) -> bool {
                other.downcast_ref::<$ty>().is_some_and(|o| o == self)
            }

            fn clone_as_boxed<'v>(&self) -> Box<dyn ::cel::common::value::Val + 'v> {
                Box::new(self.clone())
            }

            fn as_any(&self) -> Option<&dyn ::std::any::Any> {
                Some(self)
            }
        }

        impl ::cel::common::value::StaticVal for $ty {}
    };
}
use opaque_val;

#[cfg(test)]
mod test_support {
    use std::sync::Arc;

    use cel::Value;

    /// Evaluates `expr` in the policy environment without variables.
    pub fn eval(expr: &str) -> Result<Value, String> {
        let env = Arc::new(crate::expression::environment().map_err(|e| e.to_string())?);
        let program = crate::expression::compile(&env, expr)?;
        let context = crate::expression::request_context(&env, Vec::new());
        crate::expression::execute(&crate::expression::optimize(&program), &context)
    }

    /// Checks a table of expressions that must evaluate to `true`, and of expressions that must
    /// fail with an error containing the given text.
    pub fn check(truths: &[&str], errors: &[(&str, &str)]) {
        for expr in truths {
            assert_eq!(eval(expr), Ok(Value::Bool(true)), "{expr}");
        }
        for (expr, want) in errors {
            match eval(expr) {
                Err(e) => assert!(e.contains(want), "{expr}: {e}\nwanted: {want}"),
                Ok(v) => panic!("{expr}: expected an error containing {want:?}, got {v:?}"),
            }
        }
    }
}
