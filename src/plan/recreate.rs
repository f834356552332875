//! Recreation: an object whose change the API server refuses because an immutable field changed
//! is deleted and created again, when it opts in. Pure: `reconcile` asks, `cluster` deletes.

use serde_json::Value;

/// Annotation by which an object allows driftless to delete and recreate it when an immutable
/// field changes.
pub const RECREATE_ANNOTATION: &str = "driftless.dev/recreate";

/// Whether the API server's refusal (`code`, `message`) says an immutable field changed.
pub fn is_immutable_change(code: u16, message: &str) -> bool {
    code == 422 && (message.contains("immutable") || message.contains("may not change"))
}

/// Whether the desired object opts in to recreation (`driftless.dev/recreate: "true"`).
pub fn wants_recreate(desired: &Value) -> bool {
    desired
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(RECREATE_ANNOTATION))
        .and_then(Value::as_str)
        == Some("true")
}

/// Whether an object whose dry-run the server refused with (`code`, `message`) is recreated.
pub fn recreates(desired: &Value, code: u16, message: &str) -> bool {
    is_immutable_change(code, message) && wants_recreate(desired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_an_immutable_change_of_an_object_that_opts_in_is_recreated() {
        let opted = json!({"metadata": {"annotations": {RECREATE_ANNOTATION: "true"}}});
        let other = json!({"metadata": {"annotations": {RECREATE_ANNOTATION: "yes"}}});
        let plain = json!({"metadata": {}});
        let immutable = "ConfigMap \"frozen\" is invalid: data: Forbidden: field is immutable when `immutable` is set";
        let selector = "spec.selector: Invalid value: ...: field is immutable";
        let may_not = "spec.volumeName: may not change once bound";
        let cases = [
            (&opted, 422, immutable, true),
            (&opted, 422, selector, true),
            (&opted, 422, may_not, true),
            (
                &opted,
                422,
                "spec.replicas: must be greater than or equal to 0",
                false,
            ),
            (&opted, 409, immutable, false),
            (&other, 422, immutable, false),
            (&plain, 422, immutable, false),
        ];
        for (desired, code, message, want) in cases {
            assert_eq!(
                recreates(desired, code, message),
                want,
                "{desired} {code} {message}"
            );
        }
    }
}
