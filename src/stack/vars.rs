//! Strict `${NAME}` substitution on manifest text (as Flux's post-build substitution does, but an
//! undefined variable is an error, never an empty string). `$${NAME}` is a literal `${NAME}`.

use std::collections::BTreeMap;
use std::path::Path;

use super::{Error, Result};

/// Replaces every `${NAME}` of `text` from `vars`.
pub fn substitute(
    stack: &str,
    file: &Path,
    text: &str,
    vars: &BTreeMap<String, String>,
) -> Result<String> {
    if !text.contains("${") {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(idx) = rest.find("${") {
        let line = line_of(text, text.len() - rest.len() + idx);
        // `$${` escapes: emit `${` and continue after it.
        if idx > 0 && rest.as_bytes()[idx - 1] == b'$' {
            out.push_str(&rest[..idx - 1]);
            out.push_str("${");
            rest = &rest[idx + 2..];
            continue;
        }
        out.push_str(&rest[..idx]);
        let after = &rest[idx + 2..];
        let Some(end) = after.find('}') else {
            return Err(Error::MalformedVariable {
                file: file.to_owned(),
                line,
                message: "`${` without a closing `}`".to_owned(),
            });
        };
        let name = &after[..end];
        if !is_name(name) {
            return Err(Error::MalformedVariable {
                file: file.to_owned(),
                line,
                message: format!(
                    "{name:?} is not a variable name (letters, digits, `_`; write $${{…}} for a literal)"
                ),
            });
        }
        let Some(value) = vars.get(name) else {
            return Err(Error::UndefinedVariable {
                stack: stack.to_owned(),
                file: file.to_owned(),
                line,
                name: name.to_owned(),
                defined: if vars.is_empty() {
                    "none".to_owned()
                } else {
                    vars.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            });
        };
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset].bytes().filter(|&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        [("REGISTRY", "localhost:5000"), ("TAG", "1.2")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn substitutes_and_escapes() {
        let cases = [
            (
                "image: ${REGISTRY}/app:${TAG}",
                "image: localhost:5000/app:1.2",
            ),
            ("no variables here", "no variables here"),
            ("cmd: echo $${HOME} ${TAG}", "cmd: echo ${HOME} 1.2"),
            ("price: $5 and ${TAG}", "price: $5 and 1.2"),
        ];
        for (input, want) in cases {
            assert_eq!(
                substitute("s", Path::new("f"), input, &vars()).unwrap(),
                want
            );
        }
    }

    #[test]
    fn undefined_variable_names_file_line_and_known_ones() {
        let err = substitute(
            "web",
            Path::new("stack/web/a.yaml"),
            "a: 1\nb: ${MISSING}\n",
            &vars(),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("stack/web/a.yaml:2: undefined variable ${MISSING}"),
            "{text}"
        );
        assert!(text.contains("REGISTRY, TAG"), "{text}");
    }

    #[test]
    fn malformed_references() {
        for input in ["a: ${", "a: ${not valid}", "a: ${}"] {
            let err = substitute("s", Path::new("f"), input, &vars()).unwrap_err();
            assert!(
                matches!(err, Error::MalformedVariable { .. }),
                "{input}: {err}"
            );
        }
    }
}
