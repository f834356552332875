//! Another manager's edits of objects whose controllers write status (an HPA, a ResourceQuota,
//! a Deployment): the drift tests of `diff`/`sync` (tests/noop_cost.rs) and of the daemon
//! (tests/daemon.rs) make the same edits to `hpa/web`, `resourcequota/q` and `deployment/web`.

/// An object, a JSON pointer into it and the value driftless restores there, as JSON.
pub type Check = (&'static str, &'static str, &'static str);

/// One round: what is edited, the kubectl arguments of each edit (after `-n <namespace>`), and
/// what reverting it restores.
pub type Round = (&'static str, Vec<Vec<&'static str>>, Vec<Check>);

/// The rounds: spec, a label, an annotation, and metadata written through the status
/// subresource (these kinds accept it there).
pub fn foreign_edits() -> Vec<Round> {
    vec![
        (
            "spec",
            vec![
                vec![
                    "patch",
                    "hpa",
                    "web",
                    "--type",
                    "merge",
                    "-p",
                    r#"{"spec":{"maxReplicas":7}}"#,
                ],
                vec![
                    "patch",
                    "resourcequota",
                    "q",
                    "--type",
                    "merge",
                    "-p",
                    r#"{"spec":{"hard":{"pods":"20"}}}"#,
                ],
                vec![
                    "set",
                    "image",
                    "deployment/web",
                    "web=registry.invalid/web:2",
                ],
            ],
            vec![
                ("hpa/web", "/spec/maxReplicas", "3"),
                ("resourcequota/q", "/spec/hard/pods", "\"10\""),
                (
                    "deployment/web",
                    "/spec/template/spec/containers/0/image",
                    "\"registry.invalid/web:1\"",
                ),
            ],
        ),
        (
            "label",
            vec![vec![
                "label",
                "hpa/web",
                "resourcequota/q",
                "deployment/web",
                "tier=tampered",
                "--overwrite",
            ]],
            vec![
                ("hpa/web", "/metadata/labels/tier", "\"web\""),
                ("resourcequota/q", "/metadata/labels/tier", "\"web\""),
                ("deployment/web", "/metadata/labels/tier", "\"web\""),
            ],
        ),
        (
            "annotation",
            vec![vec![
                "annotate",
                "hpa/web",
                "resourcequota/q",
                "deployment/web",
                "note=tampered",
                "--overwrite",
            ]],
            vec![
                ("hpa/web", "/metadata/annotations/note", "\"x\""),
                ("resourcequota/q", "/metadata/annotations/note", "\"x\""),
                ("deployment/web", "/metadata/annotations/note", "\"x\""),
            ],
        ),
        (
            // These kinds accept metadata through their status subresource.
            "through the status subresource",
            vec![
                vec![
                    "patch",
                    "hpa",
                    "web",
                    "--subresource=status",
                    "--type",
                    "merge",
                    "-p",
                    r#"{"metadata":{"labels":{"tier":"tampered"}}}"#,
                ],
                vec![
                    "patch",
                    "resourcequota",
                    "q",
                    "--subresource=status",
                    "--type",
                    "merge",
                    "-p",
                    r#"{"metadata":{"annotations":{"note":"tampered"}}}"#,
                ],
                vec![
                    "patch",
                    "deployment",
                    "web",
                    "--subresource=status",
                    "--type",
                    "merge",
                    "-p",
                    r#"{"metadata":{"annotations":{"note":"tampered"}}}"#,
                ],
            ],
            vec![
                ("hpa/web", "/metadata/labels/tier", "\"web\""),
                ("resourcequota/q", "/metadata/annotations/note", "\"x\""),
                ("deployment/web", "/metadata/annotations/note", "\"x\""),
            ],
        ),
    ]
}
