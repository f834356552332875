//! The status pages in headless Chromium against a daemon on the test cluster: the walk an
//! operator makes (`/` → a run → its stack → an object's entry) by the links the DOM holds,
//! the live update (the inline script ran under the page's Content-Security-Policy and
//! refreshed the page), the same content served for a browser without JavaScript, and hostile
//! strings from the repository shown as text. Screenshots of every page are written under
//! `<target dir>/test-output/pages/` (see `support::browser::output_dir`).

mod support;

use std::time::Duration;

use support::browser::{dom, links, screenshot};
use support::daemon::{Daemon, Options, SECRET, Setup, write_stack};
use support::git;

/// Virtual time the live script gets: a poll comes after 5 s.
const LIVE_MS: u32 = 8000;

async fn json(d: &Daemon, path: &str) -> serde_json::Value {
    let response = d.get(path).await;
    let code = response.status();
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} answered {code} ({e}): {text}"))
}

/// The `<tr>` whose id is `id` in `html`.
fn row<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element #{id} in {html}"));
    let end = html[start..]
        .find("</tr>")
        .map_or(html.len(), |e| start + e);
    &html[start..end]
}

#[tokio::test]
async fn an_operator_walks_from_the_status_to_a_run_a_stack_and_an_object() {
    let registry = support::TestEnv::get().registry_url().to_owned();
    let d = Setup::new(&Options::default(), |repo, _| {
        std::fs::write(
            repo.join("stack/app/more.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra}\ndata: {n: '1'}\n",
        )
        .unwrap();
        // A dry-run ImageCleanup of nothing against the environment's registry: a job with runs
        // and a report.
        std::fs::write(
            repo.join("stack/app/jobs.yaml"),
            format!(
                "apiVersion: driftless.dev/v1alpha1\nkind: ImageCleanup\nmetadata: {{name: pages-cleanup}}\n\
                 spec:\n  schedule: \"*/2 * * * * *\"\n  registry: {{url: \"{registry}\"}}\n  \
                 protect: {{cluster: false, desired: false}}\n  rules: [{{repositories: \"none-such/*\", keepLast: 1}}]\n"
            ),
        )
        .unwrap();
    })
    .start();
    d.wait_notify("READY=1", Duration::from_secs(60));
    let stack = format!("d-{}", d.id);

    // A new revision, pushed: one run updates the ConfigMap.
    write_stack(d.repo.path(), &d.id, "two");
    git(d.repo.path(), &["commit", "-qam", "second"]);
    let answer: serde_json::Value = d
        .github(&d.push_payload(), SECRET)
        .await
        .json()
        .await
        .unwrap();
    let id = answer["run"]
        .as_str()
        .expect("the webhook names its run")
        .to_owned();
    let run = json(&d, &format!("/api/v1/runs/{id}?wait=60s")).await;
    assert_eq!(run["state"], "succeeded", "{run}");

    // The status page, after its live script ran: it links to the run.
    let home = format!("{}/", d.base);
    let page = dom(&home, LIVE_MS);
    assert!(
        page.contains("data-live=\"ok\"") && page.contains("data-live-swaps=\""),
        "the live script ran under the CSP, fetched the page and swapped its <main>: {page}"
    );
    assert!(
        page.contains(&format!("href=\"/stacks/{stack}\"")),
        "{page}"
    );
    let run_link = links(&page, "/runs/")
        .into_iter()
        .find(|l| l.ends_with(&id))
        .unwrap_or_else(|| panic!("/ links to run {id}: {page}"));
    assert!(links(&page, "/runs").contains(&"/runs".to_owned()));
    screenshot(&home, "status.png");
    let history = dom(&format!("{}/runs", d.base), 1000);
    assert!(
        history.contains(&format!("href=\"/runs/{id}\"")),
        "{history}"
    );
    screenshot(&format!("{}/runs", d.base), "runs.png");

    // The run's page: the stack, the changed object and its diff.
    let run_url = format!("{}{run_link}", d.base);
    let run_page = dom(&run_url, 1000);
    let settings = format!("ConfigMap/ns-{}/settings", d.id);
    assert!(
        run_page.contains("id=\"state\">succeeded</span>"),
        "{run_page}"
    );
    assert!(
        run_page.contains(&settings) && run_page.contains(">update<"),
        "{run_page}"
    );
    assert!(run_page.contains("webhook github"), "{run_page}");
    assert!(
        run_page.contains("-  value: one") && run_page.contains("+  value: two"),
        "the diff: {run_page}"
    );
    screenshot(&run_url, "run.png");
    let object_link = links(&run_page, &format!("/stacks/{stack}#"))
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("the changed object links to its stack: {run_page}"));
    let stack_link = links(&run_page, &format!("/stacks/{stack}"))
        .into_iter()
        .find(|l| !l.contains('#'))
        .unwrap();

    // The stack's page: every object with its health, the last change made by that run.
    let stack_url = format!("{}{stack_link}", d.base);
    let stack_page = dom(&stack_url, LIVE_MS);
    assert!(stack_page.contains("data-live=\"ok\""), "{stack_page}");
    for object in [
        settings.as_str(),
        &format!("ConfigMap/ns-{}/extra", d.id),
        &format!("Namespace/ns-{}", d.id),
    ] {
        assert!(stack_page.contains(object), "{object}: {stack_page}");
    }
    assert!(
        stack_page.contains(&format!("href=\"/runs/{id}")),
        "{stack_page}"
    );
    screenshot(&stack_url, "stack.png");

    // The object's entry, by the run page's link.
    let (_, fragment) = object_link.split_once('#').unwrap();
    let entry = row(&stack_page, fragment);
    assert!(entry.contains(&settings), "{entry}");
    assert!(entry.contains("class=\"healthy\">healthy<"), "{entry}");
    assert!(
        entry.contains("updated") && entry.contains(&format!("href=\"/runs/{id}\"")),
        "the change that run made: {entry}"
    );
    // A live change behind driftless's back: the drift watch's run reverts it, and the object's
    // entry says so.
    support::kubectl(&[
        "patch",
        "configmap",
        "settings",
        "-n",
        &format!("ns-{}", d.id),
        "--type",
        "merge",
        "-p",
        r#"{"data":{"value":"tampered"}}"#,
    ]);
    let reverted = support::eventually(
        "the drift reverted on the stack page",
        Duration::from_secs(30),
        || async {
            let html = d.get(&stack_link).await.text().await.ok()?;
            let entry = row(&html, fragment).to_owned();
            entry.contains(">reverted<").then_some(entry)
        },
    )
    .await;
    assert!(
        reverted.contains("class=\"healthy\">healthy<"),
        "{reverted}"
    );
    screenshot(&format!("{}{object_link}", d.base), "object.png");

    // Without JavaScript a browser shows the document as served (headless Chromium cannot dump
    // or capture a page with scripts off): the same rows, and a <noscript> refresh.
    let plain = d.get(&stack_link).await.text().await.unwrap();
    assert!(
        row(&plain, fragment).contains("class=\"healthy\">healthy<"),
        "{plain}"
    );
    assert!(
        plain.contains("<noscript><meta http-equiv=\"refresh\" content=\"10\"></noscript>"),
        "{plain}"
    );

    // The job, by the stack page's link: its runs and its last report.
    let job_link = links(&stack_page, "/jobs/")
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("the stack links to its job: {stack_page}"));
    assert_eq!(job_link, "/jobs/pages-cleanup");
    support::eventually("a finished job run", Duration::from_secs(60), || async {
        let st = json(&d, "/api/v1/status").await;
        (st["jobs"][0]["lastRun"]["outcome"] == "succeeded").then_some(())
    })
    .await;
    let job_url = format!("{}{job_link}", d.base);
    let job_page = dom(&job_url, 1000);
    assert!(job_page.contains("ImageCleanup"), "{job_page}");
    assert!(
        job_page.contains("<table id=\"runs\">")
            && job_page.contains("<td class=\"succeeded\">succeeded</td>"),
        "{job_page}"
    );
    assert!(job_page.contains("<pre id=\"report\">{"), "{job_page}");
    screenshot(&job_url, "job.png");

    // Every page carries the policy; unknown names are 404 pages.
    let response = d.get(&stack_link).await;
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(
        csp.starts_with("default-src 'none'") && !csp.contains("unsafe"),
        "{csp}"
    );
    let missing = d.get("/stacks/no-such-stack").await;
    assert_eq!(missing.status(), 404);
    assert!(
        missing
            .text()
            .await
            .unwrap()
            .contains("No stack no-such-stack")
    );
    assert_eq!(d.get("/runs/not%20an%20id").await.status(), 404);
}

/// A policy message, a Secret-free ConfigMap value: text from the repository a browser must
/// show, never run. Each would mark the document if it ran.
const HOSTILE_MESSAGE: &str = "<script>document.documentElement.dataset.pwned=1</script><img src=x onerror=document.documentElement.dataset.pwned=2></textarea>";
const HOSTILE_VALUE: &str =
    "</textarea></pre><script>document.documentElement.dataset.pwned=3</script>";

#[tokio::test]
async fn hostile_messages_and_values_from_the_repository_are_shown_as_text() {
    let d = Setup::new(&Options::default(), |repo, _| {
        std::fs::create_dir_all(repo.join("stack/app/policies")).unwrap();
        std::fs::write(
            repo.join("stack/app/policies/deny.yaml"),
            format!(
                r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: pages-no-bad-value}}
spec:
  matchConstraints:
    resourceRules: [{{apiGroups: [""], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [configmaps]}}]
  validations:
    - expression: "object.?data.?value.orValue('') != 'bad'"
      message: "{HOSTILE_MESSAGE}"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: pages-no-bad-value}}
spec: {{policyName: pages-no-bad-value, validationActions: [Deny]}}
"#
            ),
        )
        .unwrap();
        let objects = std::fs::read_to_string(repo.join("stack/app/objects.yaml")).unwrap();
        let objects = objects.replace("value: 'one'", "value: bad");
        std::fs::write(
            repo.join("stack/app/objects.yaml"),
            format!(
                "{objects}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: notes}}\ndata: {{note: \"{HOSTILE_VALUE}\"}}\n"
            ),
        )
        .unwrap();
    })
    .start();
    let run = support::eventually("a refused run", Duration::from_secs(60), || async {
        let runs = json(&d, "/api/v1/runs?limit=5").await;
        runs["runs"]
            .as_array()?
            .iter()
            .find(|r| r["stacks"][0]["state"] == "refused")
            .cloned()
    })
    .await;
    let id = run["id"].as_str().unwrap();
    let stack = format!("d-{}", d.id);

    let escaped_message = HOSTILE_MESSAGE
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let escaped_value = HOSTILE_VALUE
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    for (path, name, shows) in [
        (
            format!("/runs/{id}"),
            "hostile-run.png",
            vec![&escaped_message, &escaped_value],
        ),
        (
            format!("/stacks/{stack}"),
            "hostile-stack.png",
            vec![&escaped_message],
        ),
        ("/".to_owned(), "hostile-status.png", vec![&escaped_message]),
    ] {
        let url = format!("{}{path}", d.base);
        let page = dom(&url, LIVE_MS);
        assert!(
            page.contains("data-live=\"ok\""),
            "{path}: the page's own script ran"
        );
        assert!(
            !page.contains("pwned=\""),
            "{path}: no injected script ran: {page}"
        );
        assert_eq!(
            page.matches("<script").count(),
            1,
            "{path}: only the page's script"
        );
        assert!(
            !page.contains("<img"),
            "{path}: no injected element: {page}"
        );
        assert!(!page.contains("<textarea"), "{path}");
        for text in shows {
            assert!(page.contains(text.as_str()), "{path} shows {text}: {page}");
        }
        screenshot(&url, name);
    }
}

#[tokio::test]
async fn with_a_status_token_every_page_needs_it() {
    const TOKEN: &str = "pages-status-token-0123456789abcdef";
    let d = Setup::new(
        &Options {
            daemon: "  statusTokenFile: token\n",
            credentials: &[("token", TOKEN)],
            token: Some(TOKEN),
            ..Options::default()
        },
        |_, _| {},
    )
    .start();
    d.wait_notify("READY=1", Duration::from_secs(60));
    let runs = json(&d, "/api/v1/runs?limit=1").await;
    let id = runs["runs"][0]["id"].as_str().unwrap().to_owned();
    let stack = format!("d-{}", d.id);
    for path in [
        "/".to_owned(),
        "/runs".to_owned(),
        format!("/runs/{id}"),
        format!("/stacks/{stack}"),
        "/jobs/none".to_owned(),
    ] {
        let url = format!("{}{path}", d.base);
        let without = support::daemon::http().get(&url).send().await.unwrap();
        assert_eq!(without.status(), 401, "{path}");
        let body = without.text().await.unwrap();
        assert_eq!(body, "a bearer token is required\n", "{path}: nothing else");
        let with = d.get(&path).await;
        let code = with.status().as_u16();
        assert_eq!(code, if path == "/jobs/none" { 404 } else { 200 }, "{path}");
    }
}
