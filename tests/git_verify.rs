//! `source.git.verify` against real git: keys made at test time with `ssh-keygen` and `gpg`,
//! commits and tags signed with `git commit -S` / `git tag -s`. The source refuses what does not
//! verify before anything is checked out; the daemon keeps the last good revision applied and
//! says why in its status and metrics.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use driftless::config::VerifyMode;
use driftless::source::{Error, GitCredentials, GitRef, GitSource, Verifier};
use support::{TestEnv, eventually, git, run_ok, unique_name};

/// The committer e-mail `support::git` uses: the principal allowed-signers entries name.
const EMAIL: &str = "t@driftless.invalid";

/// An SSH key pair made by `ssh-keygen`: (private key path, public key line).
fn ssh_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path),
    );
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (path, public.trim().to_owned())
}

/// A GnuPG home with one signing key made by `gpg`; stops its agent when dropped.
struct Gpg {
    home: tempfile::TempDir,
    fingerprint: String,
}

impl Gpg {
    fn new(uid: &str) -> Gpg {
        Gpg::made(uid, None)
    }

    /// A key made on 2020-01-01 that expired a day later; gpg (and so `git commit -S`) keeps
    /// signing as of 2020-01-01 12:00 (`faked-system-time` in its gpg.conf), when it was valid.
    fn expired(uid: &str) -> Gpg {
        Gpg::made(uid, Some(("20200101T000000!", "1d", "20200101T120000!")))
    }

    /// `faked`: (time the key is made at, its validity, time gpg signs at afterwards).
    fn made(uid: &str, faked: Option<(&str, &str, &str)>) -> Gpg {
        let home = tempfile::Builder::new()
            .prefix("gpg")
            .tempdir_in("/tmp")
            .unwrap();
        let mut gpg = Gpg {
            home,
            fingerprint: String::new(),
        };
        let mut args = vec!["--batch", "--pinentry-mode", "loopback", "--passphrase", ""];
        if let Some((made, _, _)) = faked {
            args.extend(["--faked-system-time", made]);
        }
        let validity = faked.map_or("never", |(_, v, _)| v);
        args.extend(["--quick-gen-key", uid, "ed25519", "sign", validity]);
        gpg.run(&args);
        if let Some((_, _, signs_at)) = faked {
            std::fs::write(
                gpg.home.path().join("gpg.conf"),
                format!("faked-system-time {signs_at}\n"),
            )
            .unwrap();
        }
        let listing = gpg.run(&["--with-colons", "--list-keys"]);
        let fingerprint = listing
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').find(|f| f.len() == 40))
            .expect("fingerprint")
            .to_owned();
        gpg.fingerprint = fingerprint;
        gpg
    }

    fn run(&self, args: &[&str]) -> String {
        run_ok(
            Command::new("gpg")
                .env("GNUPGHOME", self.home.path())
                .args(["--quiet"])
                .args(args),
        )
    }

    fn public_key(&self) -> String {
        self.run(&["--armor", "--export", &self.fingerprint])
    }

    /// Imports the revocation certificate gpg made with the key: the key is revoked.
    fn revoke(&self) {
        let cert = self
            .home
            .path()
            .join(format!("openpgp-revocs.d/{}.rev", self.fingerprint));
        let text = std::fs::read_to_string(&cert).unwrap();
        let text = text.replace(":-----BEGIN PGP", "-----BEGIN PGP");
        let file = self.home.path().join("revoke.asc");
        std::fs::write(&file, text).unwrap();
        self.run(&["--batch", "--import", file.to_str().unwrap()]);
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

/// How a commit or tag is signed.
enum Sign<'a> {
    No,
    Ssh(&'a Path),
    Pgp(&'a Gpg),
}

/// Runs git in `dir` with the test committer and the signing configuration of `sign`.
fn git_signed(dir: &Path, sign: &Sign<'_>, args: &[&str]) -> String {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .args(["-c", "user.name=T", "-c", &format!("user.email={EMAIL}")]);
    match sign {
        Sign::No => {}
        Sign::Ssh(key) => {
            cmd.args(["-c", "gpg.format=ssh", "-c"])
                .arg(format!("user.signingkey={}", key.display()));
        }
        Sign::Pgp(gpg) => {
            cmd.env("GNUPGHOME", gpg.home.path())
                .args(["-c", "gpg.format=openpgp", "-c"])
                .arg(format!("user.signingkey={}", gpg.fingerprint));
        }
    }
    run_ok(cmd.args(args)).trim().to_owned()
}

/// Writes `stack/s` with a ConfigMap holding `value` and commits it, signed as `sign` says.
fn commit(work: &Path, value: &str, sign: &Sign<'_>) -> String {
    std::fs::create_dir_all(work.join("stack/s")).unwrap();
    std::fs::write(
        work.join("stack/s/stack.yaml"),
        "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: s}\nspec: {namespace: x}\n",
    )
    .unwrap();
    std::fs::write(
        work.join("stack/s/cm.yaml"),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata: {{value: {value}}}\n"
        ),
    )
    .unwrap();
    git(work, &["add", "-A"]);
    let mut args = vec!["commit", "-q", "-m", value];
    if !matches!(sign, Sign::No) {
        args.push("-S");
    }
    git_signed(work, sign, &args);
    git(work, &["rev-parse", "HEAD"])
}

/// A signed commit whose tree is then swapped for another one, keeping the old signature (what
/// an attacker who can push but not sign would try). `main` ends at the rewritten commit; the
/// properly signed one is never on it.
fn altered_commit(work: &Path, key: &Path) -> String {
    let base = git(work, &["rev-parse", "HEAD"]);
    git(work, &["checkout", "-q", "-b", "tmp"]);
    commit(work, "evil", &Sign::No);
    let evil_tree = git(work, &["rev-parse", "HEAD^{tree}"]);
    git(work, &["reset", "-q", "--hard", &base]);
    commit(work, "signed-good", &Sign::Ssh(key));
    let raw = git(work, &["cat-file", "commit", "HEAD"]);
    let tree_line = raw.lines().next().unwrap().to_owned();
    let forged = format!(
        "{}\n",
        raw.replacen(&tree_line, &format!("tree {evil_tree}"), 1)
    );
    let file = work.join("../forged-commit");
    std::fs::write(&file, forged).unwrap();
    let forged = git(
        work,
        &["hash-object", "-t", "commit", "-w", file.to_str().unwrap()],
    );
    git(work, &["checkout", "-q", "main"]);
    git(work, &["reset", "-q", "--hard", &forged]);
    git(work, &["branch", "-q", "-D", "tmp"]);
    forged
}

/// A commit signed by `ssh-keygen -Y sign` in `namespace` (git signs in `git`): an unsigned
/// commit of `value` rewritten with a `gpgsig` header, as git writes it. `main` ends at it.
fn ssh_signed_in_namespace(work: &Path, value: &str, key: &Path, namespace: &str) -> String {
    commit(work, value, &Sign::No);
    // The exact object bytes: they are what the signature covers.
    let raw = run_ok(
        Command::new("git")
            .arg("-C")
            .arg(work)
            .args(["cat-file", "commit", "HEAD"]),
    );
    let payload = work.join("../payload");
    std::fs::write(&payload, &raw).unwrap();
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-Y", "sign", "-n", namespace, "-f"])
            .arg(key)
            .arg(&payload),
    );
    let sig = std::fs::read_to_string(payload.with_extension("sig")).unwrap();
    std::fs::remove_file(payload.with_extension("sig")).unwrap();
    let header_end = raw.find("\n\n").unwrap() + 1;
    let signed = format!(
        "{}gpgsig {}\n{}",
        &raw[..header_end],
        sig.trim_end().replace('\n', "\n "),
        &raw[header_end..]
    );
    std::fs::write(&payload, signed).unwrap();
    let sha = git(
        work,
        &[
            "hash-object",
            "-t",
            "commit",
            "-w",
            payload.to_str().unwrap(),
        ],
    );
    git(work, &["update-ref", "refs/heads/main", &sha]);
    sha
}

fn allowed_signers(entries: &[(&str, &str)]) -> String {
    entries
        .iter()
        .map(|(options, key)| format!("{EMAIL} {options} {key}\n").replace("  ", " "))
        .collect()
}

fn source(work: &Path, reference: GitRef, state: &Path, verifier: Verifier) -> GitSource {
    let mut s = GitSource::new(
        &format!("file://{}", work.display()),
        reference,
        GitCredentials::default(),
        &state.join("git"),
    );
    s.verifier = Some(verifier);
    s
}

/// The refusal of a fetch: (object, signer, reason); panics when the fetch succeeded.
fn refused(
    result: driftless::source::Result<driftless::source::Fetched>,
) -> (String, Option<String>, String) {
    match result {
        Err(Error::Unverified {
            object,
            signer,
            reason,
            ..
        }) => (object, signer, reason),
        Err(other) => panic!("expected Unverified, got {other}"),
        Ok(f) => panic!("expected a refusal, fetched {}", f.revision.sha),
    }
}

#[test]
fn head_mode_applies_allowed_signatures_and_refuses_the_rest() {
    let keys = tempfile::tempdir().unwrap();
    let (allowed, allowed_pub) = ssh_key(keys.path(), "allowed");
    let (other, _) = ssh_key(keys.path(), "other");
    let (old, old_pub) = ssh_key(keys.path(), "old");
    let (future, future_pub) = ssh_key(keys.path(), "future");
    let (colleague, colleague_pub) = ssh_key(keys.path(), "colleague");
    let pgp = Gpg::new(&format!("Ops <{EMAIL}>"));
    let mut signers = allowed_signers(&[
        ("", &allowed_pub),
        ("valid-before=\"20200101\"", &old_pub),
        ("valid-after=\"29990101\"", &future_pub),
    ]);
    // A key allowed for another principal only: it may not sign as the committer.
    signers.push_str(&format!("other@driftless.invalid {colleague_pub}\n"));
    let verifier =
        Verifier::new(VerifyMode::Head, Some(&signers), Some(&pgp.public_key())).unwrap();
    let work = tempfile::tempdir().unwrap();
    git(work.path(), &["init", "-q", "-b", "main"]);
    let state = tempfile::tempdir().unwrap();
    let src = source(
        work.path(),
        GitRef::Branch("main".into()),
        state.path(),
        verifier,
    );

    let good = commit(work.path(), "ssh", &Sign::Ssh(&allowed));
    let fetched = src.fetch(None).expect("an allowed SSH signature verifies");
    assert_eq!(fetched.revision.sha, good);
    assert!(fetched.checkout.join("stack/s/cm.yaml").is_file());

    let pgp_good = commit(work.path(), "pgp", &Sign::Pgp(&pgp));
    assert_eq!(
        src.fetch(Some(&good))
            .expect("OpenPGP verifies")
            .revision
            .sha,
        pgp_good
    );

    let unsigned = commit(work.path(), "unsigned", &Sign::No);
    let (object, signer, reason) = refused(src.fetch(Some(&pgp_good)));
    assert_eq!(object, format!("commit {unsigned}"));
    assert_eq!((signer, reason.as_str()), (None, "not signed"));
    assert!(
        !state.path().join("git/checkouts").join(&unsigned).exists(),
        "nothing of a refused revision is checked out"
    );

    commit(work.path(), "other", &Sign::Ssh(&other));
    let (_, signer, reason) = refused(src.fetch(Some(&pgp_good)));
    assert!(
        reason.contains("allowedSignersFile does not list"),
        "{reason}"
    );
    assert!(signer.unwrap().starts_with("SSH key SHA256:"));

    let forged = altered_commit(work.path(), &allowed);
    let (object, _, reason) = refused(src.fetch(Some(&pgp_good)));
    assert_eq!(object, format!("commit {forged}"));
    assert!(reason.contains("does not verify"), "{reason}");

    commit(work.path(), "expired", &Sign::Ssh(&old));
    let (_, signer, reason) = refused(src.fetch(Some(&pgp_good)));
    assert!(reason.contains("expired at 2020-01-01"), "{reason}");
    assert!(signer.unwrap().contains(EMAIL));

    commit(work.path(), "not-yet", &Sign::Ssh(&future));
    let (_, _, reason) = refused(src.fetch(Some(&pgp_good)));
    assert!(reason.contains("valid only from 2999-01-01"), "{reason}");

    commit(work.path(), "colleague", &Sign::Ssh(&colleague));
    let (_, _, reason) = refused(src.fetch(Some(&pgp_good)));
    assert!(
        reason.contains("allowed for other@driftless.invalid")
            && reason.contains(&format!("not for the committer \"{EMAIL}\"")),
        "{reason}"
    );

    // ssh-keygen's own signature in namespace `git` is what git makes: it verifies. The same
    // key's signature for another namespace (a file signature replayed onto a commit) does not.
    let crafted = ssh_signed_in_namespace(work.path(), "crafted", &allowed, "git");
    assert_eq!(
        src.fetch(Some(&pgp_good))
            .expect("a namespace git signature verifies")
            .revision
            .sha,
        crafted
    );
    let replayed = ssh_signed_in_namespace(work.path(), "replayed", &allowed, "file");
    let (object, _, reason) = refused(src.fetch(Some(&pgp_good)));
    assert_eq!(object, format!("commit {replayed}"));
    assert!(
        reason.contains("namespace \"file\", not \"git\""),
        "{reason}"
    );

    let next = commit(work.path(), "good-again", &Sign::Ssh(&allowed));
    assert_eq!(
        src.fetch(Some(&pgp_good))
            .expect("the next good commit")
            .revision
            .sha,
        next
    );
}

#[test]
fn openpgp_revoked_and_unknown_keys_are_refused() {
    let pgp = Gpg::new(&format!("Ops <{EMAIL}>"));
    let stranger = Gpg::new("Stranger <s@driftless.invalid>");
    let work = tempfile::tempdir().unwrap();
    git(work.path(), &["init", "-q", "-b", "main"]);
    let state = tempfile::tempdir().unwrap();
    commit(work.path(), "signed", &Sign::Pgp(&stranger));
    let verifier = Verifier::new(VerifyMode::Head, None, Some(&pgp.public_key())).unwrap();
    let src = source(
        work.path(),
        GitRef::Branch("main".into()),
        state.path(),
        verifier,
    );
    let (_, signer, reason) = refused(src.fetch(None));
    assert!(reason.contains("openpgpKeysFile does not hold"), "{reason}");
    assert!(signer.unwrap().starts_with("OpenPGP key "));

    commit(work.path(), "signed-by-ops", &Sign::Pgp(&pgp));
    src.fetch(None).expect("the allowed key verifies");
    pgp.revoke();
    let revoked = Verifier::new(VerifyMode::Head, None, Some(&pgp.public_key())).unwrap();
    let src = source(
        work.path(),
        GitRef::Branch("main".into()),
        state.path(),
        revoked,
    );
    let (_, signer, reason) = refused(src.fetch(None));
    assert_eq!(reason, "the OpenPGP key is revoked");
    assert!(signer.unwrap().contains(&pgp.fingerprint));

    // A key that has expired: its signature made while it was valid is refused now.
    let old = Gpg::expired(&format!("Old <{EMAIL}>"));
    commit(work.path(), "signed-by-old", &Sign::Pgp(&old));
    let verifier = Verifier::new(VerifyMode::Head, None, Some(&old.public_key())).unwrap();
    let src = source(
        work.path(),
        GitRef::Branch("main".into()),
        state.path(),
        verifier,
    );
    let (_, signer, reason) = refused(src.fetch(None));
    assert_eq!(
        reason, "the OpenPGP key expired at 2020-01-02 00:00:00 UTC",
        "{signer:?}"
    );
    assert!(signer.unwrap().contains(&old.fingerprint));
}

#[test]
fn tag_mode_follows_a_signed_tag_and_refuses_an_unsigned_one() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = ssh_key(keys.path(), "release");
    let work = tempfile::tempdir().unwrap();
    git(work.path(), &["init", "-q", "-b", "main"]);
    // The commit itself is unsigned: `tag` mode checks only the tag.
    let first = commit(work.path(), "one", &Sign::No);
    git_signed(
        work.path(),
        &Sign::Ssh(&key),
        &["tag", "-s", "-m", "release 1", "v1"],
    );
    git(work.path(), &["tag", "-a", "-m", "unsigned release", "v2"]);
    git(work.path(), &["tag", "v3"]);
    let verifier = || {
        Verifier::new(
            VerifyMode::Tag,
            Some(&allowed_signers(&[("", &public)])),
            None,
        )
        .unwrap()
    };
    let state = tempfile::tempdir().unwrap();
    let fetched = source(
        work.path(),
        GitRef::Tag("v1".into()),
        state.path(),
        verifier(),
    )
    .fetch(None)
    .expect("a signed tag verifies");
    assert_eq!(fetched.revision.sha, first);
    let (object, _, reason) = refused(
        source(
            work.path(),
            GitRef::Tag("v2".into()),
            state.path(),
            verifier(),
        )
        .fetch(None),
    );
    assert_eq!(object, format!("tag v2 ({first})"));
    assert_eq!(reason, "not signed");
    let (_, _, reason) = refused(
        source(
            work.path(),
            GitRef::Tag("v3".into()),
            state.path(),
            verifier(),
        )
        .fetch(None),
    );
    assert!(reason.contains("lightweight tag"), "{reason}");
    // tagAndHead: the signed tag is not enough while its commit is unsigned.
    let both = Verifier::new(
        VerifyMode::TagAndHead,
        Some(&allowed_signers(&[("", &public)])),
        None,
    )
    .unwrap();
    let (object, _, reason) =
        refused(source(work.path(), GitRef::Tag("v1".into()), state.path(), both).fetch(None));
    assert_eq!(
        (object, reason.as_str()),
        (format!("commit {first}"), "not signed")
    );
}

/// The daemon with `verify.mode: head`: applies commits signed with an allowed SSH key and an
/// allowed OpenPGP key; refuses an unsigned commit, another key's, an altered one and one whose
/// allowed-signers entry expired, each with the reason in the status and the metric, keeping the
/// last good revision applied (nothing pruned); then applies the next good commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_applies_only_verified_revisions() {
    let env = TestEnv::get();
    let id = unique_name("vfy");
    let keys = tempfile::tempdir().unwrap();
    let (allowed, allowed_pub) = ssh_key(keys.path(), "allowed");
    let (other, _) = ssh_key(keys.path(), "other");
    let (old, old_pub) = ssh_key(keys.path(), "old");
    let pgp = Gpg::new(&format!("Ops <{EMAIL}>"));

    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q", "-b", "main"]);
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    // The allowed-signers file from the credentials directory (a plain name), the OpenPGP keys
    // from an absolute path beside the configuration.
    std::fs::write(
        creds.join("allowed_signers"),
        allowed_signers(&[("", &allowed_pub), ("valid-before=\"20200101\"", &old_pub)]),
    )
    .unwrap();
    let pgp_keys = dir.path().join("openpgp-keys.asc");
    std::fs::write(&pgp_keys, pgp.public_key()).unwrap();
    let config = dir.path().join("driftless.yaml");
    std::fs::write(
        &config,
        format!(
            "instance: {id}\nsource:\n  git:\n    url: 'file://{}'\n    branch: main\n    verify: {{mode: head, allowedSignersFile: allowed_signers, openpgpKeysFile: {}}}\n\
             stateDir: {}\ncredentialsDir: {}\ndaemon:\n  listen: 127.0.0.1:0\n  pollInterval: 1s\n",
            repo.path().display(),
            pgp_keys.display(),
            dir.path().join("state").display(),
            creds.display()
        ),
    )
    .unwrap();
    let commit_value = |value: &str, sign: &Sign<'_>| {
        support::daemon::write_stack(repo.path(), &id, value);
        git(repo.path(), &["add", "-A"]);
        let mut args = vec!["commit", "-q", "-m", value];
        if !matches!(sign, Sign::No) {
            args.push("-S");
        }
        git_signed(repo.path(), sign, &args);
        git(repo.path(), &["rev-parse", "HEAD"])
    };
    commit_value("ssh", &Sign::Ssh(&allowed));
    let mut child = support::daemon::KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_driftless"))
            .arg("--config")
            .arg(&config)
            .arg("run")
            .env("KUBECONFIG", env.var("KUBECONFIG"))
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("NOTIFY_SOCKET")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = support::daemon::wait_listening(&dir.path().join("state"), &mut child);
    let ns = format!("ns-{id}");
    let value = || {
        let out = Command::new(env.var("KUBECTL"))
            .arg("--kubeconfig")
            .arg(env.var("KUBECONFIG"))
            .args([
                "-n",
                &ns,
                "get",
                "configmap",
                "settings",
                "-o",
                "jsonpath={.data.value}",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let status = || async {
        match reqwest::get(format!("{base}/api/v1/status")).await {
            Ok(r) => r.json::<serde_json::Value>().await.ok(),
            Err(_) => None,
        }
    };
    let applied = |want: &'static str| {
        let value = &value;
        async move {
            eventually(
                &format!("ConfigMap value {want}"),
                Duration::from_secs(60),
                || async { (value() == want).then_some(()) },
            )
            .await
        }
    };
    applied("ssh").await;
    commit_value("pgp", &Sign::Pgp(&pgp));
    applied("pgp").await;
    let last_good = git(repo.path(), &["rev-parse", "HEAD"]);

    let forged_work = |r: &Path| altered_commit(r, &allowed);
    type Make<'a> = Box<dyn Fn() -> String + 'a>;
    let cases: Vec<(Make, &str)> = vec![
        (
            Box::new(|| commit_value("unsigned", &Sign::No)),
            "not signed",
        ),
        (
            Box::new(|| commit_value("other", &Sign::Ssh(&other))),
            "allowedSignersFile does not list",
        ),
        (Box::new(|| forged_work(repo.path())), "does not verify"),
        (
            Box::new(|| commit_value("expired", &Sign::Ssh(&old))),
            "expired at 2020-01-01",
        ),
    ];
    for (make, reason) in cases {
        let sha = make();
        let st = eventually(
            &format!("status names {sha}: {reason}"),
            Duration::from_secs(60),
            || async {
                let st = status().await?;
                // The run that refused it has recorded itself (its errors name the commit).
                (st["unverified"]["sha"] == sha.as_str() && st["errors"].to_string().contains(&sha))
                    .then_some(st)
            },
        )
        .await;
        let got = st["unverified"]["reason"].as_str().unwrap_or_default();
        assert!(got.contains(reason), "{reason}: {st}");
        assert_eq!(st["appliedRevision"]["sha"], last_good.as_str(), "{st}");
        assert!(
            st["errors"].to_string().contains(reason),
            "the error names the reason too: {st}"
        );
        assert_eq!(st["state"], "degraded", "{st}");
        let metrics = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let line = metrics
            .lines()
            .find(|l| l.starts_with("driftless_source_unverified_revision{"))
            .unwrap_or_else(|| panic!("no metric: {metrics}"));
        assert!(
            line.contains(&format!("commit=\"{sha}\"")) && line.ends_with(" 1"),
            "{line}"
        );
        assert_eq!(
            value(),
            "pgp",
            "the last good revision stays applied, nothing pruned"
        );
    }
    let next = commit_value("good", &Sign::Ssh(&allowed));
    applied("good").await;
    let st = eventually("the refusal cleared", Duration::from_secs(30), || async {
        let st = status().await?;
        (st["appliedRevision"]["sha"] == next.as_str() && st.get("unverified").is_none())
            .then_some(st)
    })
    .await;
    assert_eq!(st["revision"]["sha"], next.as_str());
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics.contains("driftless_source_unverified_revision{"),
        "{metrics}"
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = Command::new(env.var("KUBECTL"))
        .arg("--kubeconfig")
        .arg(env.var("KUBECONFIG"))
        .args(["delete", "namespace", &ns, "--wait=false"])
        .output();
}

/// `--path` runs say that nothing was verified.
#[test]
fn path_runs_say_nothing_was_verified() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("repo");
    std::fs::create_dir(&work).unwrap();
    commit_free_stack(&work);
    let config = dir.path().join("driftless.yaml");
    std::fs::write(
        &config,
        format!(
            "source:\n  git:\n    url: 'file:///nonexistent'\n    verify: {{mode: head, allowedSignersFile: /nonexistent}}\nstateDir: {}\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let out = support::driftless(&config, &["validate", "--path", work.to_str().unwrap()]);
    let text = support::text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("nothing was verified (--path)"), "{text}");
}

fn commit_free_stack(work: &Path) {
    std::fs::create_dir_all(work.join("stack/s")).unwrap();
    std::fs::write(
        work.join("stack/s/stack.yaml"),
        "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: s}\nspec: {namespace: x}\n",
    )
    .unwrap();
    std::fs::write(
        work.join("stack/s/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
    )
    .unwrap();
}

/// A configured Git source with `verify` and an allowed SSH key: the repository, credentials
/// directory and configuration file. `extra` is appended to the configuration.
struct Verified {
    id: String,
    repo: tempfile::TempDir,
    dir: tempfile::TempDir,
    key: PathBuf,
    config: PathBuf,
}

impl Verified {
    fn new(prefix: &str, extra: &str) -> Verified {
        let id = unique_name(prefix);
        let repo = tempfile::tempdir().unwrap();
        git(repo.path(), &["init", "-q", "-b", "main"]);
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        let (key, public) = ssh_key(dir.path(), "signer");
        std::fs::write(
            creds.join("allowed_signers"),
            allowed_signers(&[("", &public)]),
        )
        .unwrap();
        let config = dir.path().join("driftless.yaml");
        std::fs::write(
            &config,
            format!(
                "instance: {id}\nsource:\n  git:\n    url: 'file://{}'\n    branch: main\n    verify: {{mode: head, allowedSignersFile: allowed_signers}}\n\
                 stateDir: {}\ncredentialsDir: {}\n{extra}",
                repo.path().display(),
                dir.path().join("state").display(),
                creds.display()
            ),
        )
        .unwrap();
        Verified {
            id,
            repo,
            dir,
            key,
            config,
        }
    }

    /// Commits the stack with a ConfigMap holding `value`, signed with the allowed key or not.
    fn commit(&self, value: &str, signed: bool) -> String {
        support::daemon::write_stack(self.repo.path(), &self.id, value);
        git(self.repo.path(), &["add", "-A"]);
        let sign = if signed {
            Sign::Ssh(&self.key)
        } else {
            Sign::No
        };
        let mut args = vec!["commit", "-q", "-m", value];
        if signed {
            args.push("-S");
        }
        git_signed(self.repo.path(), &sign, &args);
        git(self.repo.path(), &["rev-parse", "HEAD"])
    }

    fn ns(&self) -> String {
        format!("ns-{}", self.id)
    }

    /// The ConfigMap's value in the cluster, if it exists.
    fn value(&self) -> Option<String> {
        let env = TestEnv::get();
        let out = Command::new(env.var("KUBECTL"))
            .arg("--kubeconfig")
            .arg(env.var("KUBECONFIG"))
            .args(["-n", &self.ns(), "get", "configmap", "settings"])
            .args(["-o", "jsonpath={.data.value}"])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Verified {
    fn drop(&mut self) {
        let env = TestEnv::get();
        let _ = Command::new(env.var("KUBECTL"))
            .arg("--kubeconfig")
            .arg(env.var("KUBECONFIG"))
            .args(["delete", "namespace", &self.ns(), "--wait=false"])
            .output();
    }
}

/// `diff` and `sync` from the configured source obey `verify`: an unsigned revision fails them
/// naming the commit and the reason, with nothing applied; a signed one syncs; a later unsigned
/// one leaves the signed revision's objects as they are (nothing applied or pruned).
#[test]
fn diff_and_sync_from_the_configured_source_obey_verify() {
    let v = Verified::new("vfycli", "");
    let unsigned = v.commit("unsigned", false);
    for command in ["diff", "sync"] {
        let out = support::driftless(&v.config, &[command]);
        let t = support::text(&out);
        assert_eq!(out.status.code(), Some(2), "{command}: {t}");
        assert!(
            t.contains(&format!("commit {unsigned} not applied: not signed")),
            "{command}: {t}"
        );
    }
    assert_eq!(v.value(), None, "nothing of the unsigned revision applied");

    v.commit("signed", true);
    let out = support::driftless(&v.config, &["sync"]);
    assert!(out.status.success(), "{}", support::text(&out));
    assert_eq!(v.value().as_deref(), Some("signed"));

    // Another key's commit: refused, naming the signer's key; the cluster keeps the signed one.
    let (stranger, _) = ssh_key(v.dir.path(), "stranger");
    support::daemon::write_stack(v.repo.path(), &v.id, "stranger");
    git(v.repo.path(), &["add", "-A"]);
    git_signed(
        v.repo.path(),
        &Sign::Ssh(&stranger),
        &["commit", "-q", "-S", "-m", "stranger"],
    );
    let out = support::driftless(&v.config, &["sync"]);
    let t = support::text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("allowedSignersFile does not list") && t.contains("(signer: SSH key SHA256:"),
        "{t}"
    );
    assert_eq!(v.value().as_deref(), Some("signed"));
}

/// A webhook-triggered run obeys `verify` like a poll: the pushed unsigned commit is refused
/// (status and metric), the applied revision stays; the next signed push is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_runs_obey_verify() {
    let env = TestEnv::get();
    let v = Verified::new(
        "vfyhook",
        "daemon:\n  listen: 127.0.0.1:0\n  pollInterval: 1h\n  webhooks: {github: {secretFile: github-secret}}\n",
    );
    std::fs::write(
        v.dir.path().join("creds/github-secret"),
        support::daemon::SECRET,
    )
    .unwrap();
    let first = v.commit("first", true);
    let mut child = support::daemon::KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_driftless"))
            .arg("--config")
            .arg(&v.config)
            .arg("run")
            .env("KUBECONFIG", env.var("KUBECONFIG"))
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("NOTIFY_SOCKET")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = support::daemon::wait_listening(&v.dir.path().join("state"), &mut child);
    let status = || async {
        let r = reqwest::get(format!("{base}/api/v1/status")).await.ok()?;
        r.json::<serde_json::Value>().await.ok()
    };
    // The status names a revision once it loaded; its objects are applied by the run after.
    eventually(
        "the first revision applied",
        Duration::from_secs(60),
        || async {
            let st = status().await?;
            (st["appliedRevision"]["sha"] == first.as_str()
                && v.value().as_deref() == Some("first"))
            .then_some(())
        },
    )
    .await;
    let body = serde_json::to_vec(&serde_json::json!({
        "ref": "refs/heads/main",
        "after": "0000000000000000000000000000000000000000",
        "repository": {"clone_url": format!("file://{}", v.repo.path().display()), "full_name": "ops/stacks"}
    }))
    .unwrap();

    let unsigned = v.commit("unsigned", false);
    let r = support::daemon::github_push(&base, &body, support::daemon::SECRET).await;
    assert!(r.status().is_success(), "{}", r.status());
    let st = eventually("the push refused", Duration::from_secs(60), || async {
        let st = status().await?;
        (st["unverified"]["sha"] == unsigned.as_str()).then_some(st)
    })
    .await;
    assert_eq!(st["unverified"]["reason"], "not signed", "{st}");
    assert_eq!(st["unverified"]["object"], format!("commit {unsigned}"));
    assert_eq!(st["appliedRevision"]["sha"], first.as_str(), "{st}");
    assert_eq!(v.value().as_deref(), Some("first"));

    let signed = v.commit("second", true);
    let r = support::daemon::github_push(&base, &body, support::daemon::SECRET).await;
    assert!(r.status().is_success(), "{}", r.status());
    eventually(
        "the signed push applied",
        Duration::from_secs(60),
        || async {
            let st = status().await?;
            (st["appliedRevision"]["sha"] == signed.as_str()
                && st.get("unverified").is_none()
                && v.value().as_deref() == Some("second"))
            .then_some(())
        },
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
}
