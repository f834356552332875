//! Which requests a policy and binding apply to: `matchConstraints` / `matchResources` as the
//! API server reads them (resource rules by plural name, operations, scope, resource names,
//! namespace and object selectors, exclusions).

use std::collections::BTreeMap;

use super::model::{MatchResources, ResourceRule};

/// The attributes of one (synthesised) admission request.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    pub group: &'a str,
    pub version: &'a str,
    pub resource: &'a str,
    pub name: &'a str,
    pub namespace: Option<&'a str>,
    pub operation: &'a str,
    /// Labels of the object and, for an UPDATE, of the old object.
    pub labels: &'a BTreeMap<String, String>,
    pub old_labels: Option<&'a BTreeMap<String, String>>,
    /// Labels of the object's namespace (for a Namespace: its own), `None` for cluster-scoped
    /// objects, which every namespaceSelector matches.
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
}

fn any_is(list: &[String], value: &str) -> bool {
    list.iter().any(|x| x == "*" || x == value)
}

fn rule_matches(rule: &ResourceRule, a: &Attributes<'_>) -> bool {
    let scope_ok = match rule.scope.as_deref() {
        Some("Namespaced") => a.namespace.is_some(),
        Some("Cluster") => a.namespace.is_none(),
        _ => true,
    };
    scope_ok
        && any_is(&rule.operations, a.operation)
        && any_is(&rule.api_groups, a.group)
        && any_is(&rule.api_versions, a.version)
        && rule
            .resources
            .iter()
            .any(|r| r == "*" || r == "*/*" || r == a.resource)
        && (rule.resource_names.is_empty() || rule.resource_names.iter().any(|n| n == a.name))
}

/// Whether `m` selects the request. `require_rules`: a policy's matchConstraints selects nothing
/// without resource rules; a binding's matchResources without rules selects all its policy does.
pub fn matches(m: &MatchResources, a: &Attributes<'_>, require_rules: bool) -> bool {
    if (require_rules || !m.resource_rules.is_empty())
        && !m.resource_rules.iter().any(|r| rule_matches(r, a))
    {
        return false;
    }
    if m.exclude_resource_rules.iter().any(|r| rule_matches(r, a)) {
        return false;
    }
    if let (Some(selector), Some(labels)) = (&m.namespace_selector, a.namespace_labels)
        && !selector.matches(labels)
    {
        return false;
    }
    if let Some(selector) = &m.object_selector
        && !selector.matches(a.labels)
        && !a.old_labels.is_some_and(|old| selector.matches(old))
    {
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{LabelSelector, LabelSelectorRequirement};

    fn rule(resources: &[&str]) -> ResourceRule {
        ResourceRule {
            operations: vec!["CREATE".into(), "UPDATE".into()],
            api_groups: vec!["".into()],
            api_versions: vec!["v1".into()],
            resources: resources.iter().map(|s| s.to_string()).collect(),
            ..ResourceRule::default()
        }
    }

    #[test]
    fn rules_selectors_and_exclusions() {
        let labels: BTreeMap<String, String> = [("app".to_owned(), "web".to_owned())].into();
        let ns_labels: BTreeMap<String, String> =
            [("kubernetes.io/metadata.name".to_owned(), "prod".to_owned())].into();
        let a = Attributes {
            group: "",
            version: "v1",
            resource: "pods",
            name: "web-1",
            namespace: Some("prod"),
            operation: "CREATE",
            labels: &labels,
            old_labels: None,
            namespace_labels: Some(&ns_labels),
        };
        let mut m = MatchResources {
            resource_rules: vec![rule(&["pods"])],
            ..MatchResources::default()
        };
        assert!(matches(&m, &a, true));
        m.resource_rules = vec![rule(&["services"])];
        assert!(!matches(&m, &a, true));
        m.resource_rules = vec![rule(&["*"])];
        assert!(matches(&m, &a, true));
        m.resource_rules[0].scope = Some("Cluster".into());
        assert!(!matches(&m, &a, true), "scope");
        m.resource_rules[0].scope = None;
        m.resource_rules[0].operations = vec!["DELETE".into()];
        assert!(!matches(&m, &a, true), "operation");
        m.resource_rules[0].operations = vec!["*".into()];
        m.exclude_resource_rules = vec![rule(&["pods"])];
        assert!(!matches(&m, &a, true), "excluded");
        m.exclude_resource_rules.clear();
        m.namespace_selector = Some(LabelSelector {
            match_expressions: vec![LabelSelectorRequirement {
                key: "kubernetes.io/metadata.name".into(),
                operator: "NotIn".into(),
                values: vec!["prod".into()],
            }],
            ..LabelSelector::default()
        });
        assert!(!matches(&m, &a, true), "namespace selector");
        m.namespace_selector = None;
        m.object_selector = Some(LabelSelector {
            match_labels: [("app".to_owned(), "db".to_owned())].into(),
            ..LabelSelector::default()
        });
        assert!(!matches(&m, &a, true), "object selector");
        let old: BTreeMap<String, String> = [("app".to_owned(), "db".to_owned())].into();
        let update = Attributes {
            old_labels: Some(&old),
            operation: "UPDATE",
            ..a.clone()
        };
        assert!(matches(&m, &update, true), "old object's labels match");
        assert!(
            matches(&MatchResources::default(), &a, false),
            "empty binding match"
        );
    }
}
