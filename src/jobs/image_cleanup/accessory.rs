//! Accessories (pure): manifests that refer to another digest of their repository — signatures,
//! attestations, SBOMs — and how they are recognised. An accessory follows its subject: kept
//! with it, deleted with it (see `retention`).
//!
//! Two ways to refer, both read here:
//! - **Tags** in cosign's schema: `sha256-<hex>.sig`, `.att`, `.sbom` name the subject's digest;
//!   a bare `sha256-<hex>` is the OCI 1.1 referrers tag schema (an index listing the referrers
//!   of `sha256:<hex>`, kept by clients on registries without the referrers API).
//! - **Content**: an OCI 1.1 manifest's `subject` descriptor (found through the referrers API,
//!   a referrers index or an earlier run). Its kind comes from its `artifactType` (or config
//!   media type).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::registry::is_digest;

/// What an accessory is to its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AccessoryKind {
    Signature,
    Attestation,
    Sbom,
    /// An OCI 1.1 referrer of another artifact type.
    Referrer,
    /// The referrers tag schema's index (`sha256-<hex>`).
    ReferrersIndex,
}

impl AccessoryKind {
    /// As the report names it: `signature`, `SBOM`, …
    pub fn noun(self) -> &'static str {
        match self {
            AccessoryKind::Signature => "signature",
            AccessoryKind::Attestation => "attestation",
            AccessoryKind::Sbom => "SBOM",
            AccessoryKind::Referrer => "referrer",
            AccessoryKind::ReferrersIndex => "referrers index",
        }
    }
}

/// A link from an accessory to the digest it refers to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    pub digest: String,
    pub kind: AccessoryKind,
}

/// The subject a tag names in cosign's schema or the referrers tag schema; `None` for any
/// other tag.
pub fn tag_subject(tag: &str) -> Option<Subject> {
    let (algorithm, rest) = tag.split_once('-')?;
    if algorithm != "sha256" && algorithm != "sha512" {
        return None;
    }
    let (hex, kind) = match rest.split_once('.') {
        None => (rest, AccessoryKind::ReferrersIndex),
        Some((hex, "sig")) => (hex, AccessoryKind::Signature),
        Some((hex, "att")) => (hex, AccessoryKind::Attestation),
        Some((hex, "sbom")) => (hex, AccessoryKind::Sbom),
        Some(_) => return None,
    };
    let digest = format!("{algorithm}:{hex}");
    is_digest(&digest).then_some(Subject { digest, kind })
}

/// The subject a manifest names in its own content (OCI 1.1 `subject`), with the kind its
/// artifact type says; `None` without one or with a malformed digest.
pub fn manifest_subject(manifest: &Value) -> Option<Subject> {
    let digest = manifest.pointer("/subject/digest")?.as_str()?;
    if !is_digest(digest) {
        return None;
    }
    let artifact_type = manifest
        .get("artifactType")
        .or_else(|| manifest.pointer("/config/mediaType"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    Some(Subject {
        digest: digest.to_owned(),
        kind: kind_of_artifact(artifact_type),
    })
}

/// A referrer's kind from its artifact type (sigstore, in-toto, SPDX, CycloneDX, …).
pub fn kind_of_artifact(artifact_type: &str) -> AccessoryKind {
    let t = artifact_type.to_ascii_lowercase();
    if t.contains("sigstore.bundle") || t.contains("cosign.artifact.sig") || t.contains("notary") {
        AccessoryKind::Signature
    } else if t.contains("in-toto") || t.contains("dsse") || t.contains("attestation") {
        AccessoryKind::Attestation
    } else if t.contains("spdx") || t.contains("cyclonedx") || t.contains("sbom") {
        AccessoryKind::Sbom
    } else {
        AccessoryKind::Referrer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HEX: &str = "3b4c0f1c5e7a9d2b8f6e4a1c0d9b7e5f3a2c1b0e9d8f7a6b5c4d3e2f1a0b9c8d";

    #[test]
    fn tags_in_cosigns_schema_and_the_referrers_tag_schema_name_their_subject() {
        let subject = |kind| {
            Some(Subject {
                digest: format!("sha256:{HEX}"),
                kind,
            })
        };
        for (tag, want) in [
            (
                format!("sha256-{HEX}.sig"),
                subject(AccessoryKind::Signature),
            ),
            (
                format!("sha256-{HEX}.att"),
                subject(AccessoryKind::Attestation),
            ),
            (format!("sha256-{HEX}.sbom"), subject(AccessoryKind::Sbom)),
            (
                format!("sha256-{HEX}"),
                subject(AccessoryKind::ReferrersIndex),
            ),
            (format!("sha256-{HEX}.tar"), None),
            (format!("sha256-{}.sig", &HEX[1..]), None),
            (format!("sha256-{}.sig", HEX.to_uppercase()), None),
            (format!("md5-{HEX}.sig"), None),
            ("v1.0.0".to_owned(), None),
            ("sha256-.sig".to_owned(), None),
        ] {
            assert_eq!(tag_subject(&tag), want, "{tag}");
        }
    }

    #[test]
    fn a_manifests_subject_and_kind_come_from_its_content() {
        let m = |artifact: Value, subject: &str| {
            json!({"schemaVersion": 2, "artifactType": artifact,
                "config": {"mediaType": "application/vnd.oci.empty.v1+json"},
                "subject": {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": subject, "size": 1}})
        };
        let d = format!("sha256:{HEX}");
        for (artifact, kind) in [
            (
                json!("application/vnd.dev.sigstore.bundle.v0.3+json"),
                AccessoryKind::Signature,
            ),
            (
                json!("application/vnd.in-toto+json"),
                AccessoryKind::Attestation,
            ),
            (json!("application/spdx+json"), AccessoryKind::Sbom),
            (
                json!("application/vnd.example.thing"),
                AccessoryKind::Referrer,
            ),
            // No artifactType: the config's media type.
            (Value::Null, AccessoryKind::Referrer),
        ] {
            assert_eq!(
                manifest_subject(&m(artifact, &d)),
                Some(Subject {
                    digest: d.clone(),
                    kind
                })
            );
        }
        assert_eq!(manifest_subject(&m(json!("x"), "sha256:../x")), None);
        assert_eq!(manifest_subject(&json!({"schemaVersion": 2})), None);
    }
}
