//! Container images: the image reference a container was started from and its digest, read from
//! the container runtime's node-local state (no API server, no runtime socket), so a verdict
//! names the deploy behind it (issue 16).
//!
//! Sources, by runtime (paths under the host root):
//! - containerd (Kubernetes CRI, and nerdctl): the task bundle's OCI runtime spec,
//!   `run/containerd/io.containerd.runtime.v2.task/<namespace>/<id>/config.json`, annotation
//!   `io.kubernetes.cri.image-name` (containerd `pkg/cri/annotations`: `ImageName`). containerd
//!   writes no digest there: `image_id` is known only when the reference pins one (`@sha256:`).
//! - CRI-O: `run/containers/storage/overlay-containers/<id>/userdata/config.json` (its run
//!   root; else the same under `var/lib/containers/storage`), annotations
//!   `io.kubernetes.cri-o.ImageName` (else `io.kubernetes.cri-o.Image`) and
//!   `io.kubernetes.cri-o.ImageRef` (the image id, bare hex, or a `name@sha256:` reference).
//! - Docker: `var/lib/docker/containers/<id>/config.v2.json`, `Config.Image` (the reference as
//!   given to `docker run`) and `Image` (the image id, `sha256:<hex>`).
use serde_json::Value;
use std::path::Path;

/// What the runtime recorded about a container's image. Both None when nothing was found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    /// The image reference, e.g. `registry.example/shop/api:1.4.2`.
    pub image: Option<String>,
    /// The image's digest or id, `sha256:<hex>`.
    pub image_id: Option<String>,
}

/// Runtime state files are small (an OCI spec is a few tens of KB); anything larger is not one.
const MAX_STATE_BYTES: u64 = 4 << 20;

const CONTAINERD_TASKS: &str = "run/containerd/io.containerd.runtime.v2.task";
const CRIO_ROOTS: [&str; 2] = [
    "run/containers/storage/overlay-containers",
    "var/lib/containers/storage/overlay-containers",
];
const DOCKER_CONTAINERS: &str = "var/lib/docker/containers";

/// The image of container `id` (as `attribution` found it in the cgroup path), looked up in
/// the state of `runtime` when known (`containerd`, `cri-o`, `docker`), else of each in turn.
/// Never fails: missing or malformed state gives an empty [`Image`].
pub fn for_container(root: &Path, id: &str, runtime: Option<&str>) -> Image {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Image::default(); // ids come from cgroup paths: never let one name a path
    }
    let tries: &[fn(&Path, &str) -> Option<Image>] = match runtime {
        Some("containerd") => &[containerd],
        Some("cri-o") => &[crio],
        Some("docker") => &[docker, containerd],
        _ => &[containerd, crio, docker],
    };
    tries
        .iter()
        .find_map(|f| f(root, id).filter(|i| i.image.is_some() || i.image_id.is_some()))
        .unwrap_or_default()
}

fn containerd(root: &Path, id: &str) -> Option<Image> {
    // The namespace directory is `k8s.io` under Kubernetes, `moby` under Docker, `default`
    // for ctr and nerdctl: look in each.
    let tasks = root.join(CONTAINERD_TASKS);
    std::fs::read_dir(tasks).ok()?.flatten().find_map(|ns| {
        let spec = read_json(&ns.path().join(id).join("config.json"))?;
        let image = annotation(&spec, "io.kubernetes.cri.image-name")?;
        let image_id = pinned_digest(&image);
        Some(Image {
            image: Some(image),
            image_id,
        })
    })
}

fn crio(root: &Path, id: &str) -> Option<Image> {
    let spec = CRIO_ROOTS
        .iter()
        .find_map(|r| read_json(&root.join(r).join(id).join("userdata/config.json")))?;
    let image = annotation(&spec, "io.kubernetes.cri-o.ImageName")
        .or_else(|| annotation(&spec, "io.kubernetes.cri-o.Image"));
    let image_id = annotation(&spec, "io.kubernetes.cri-o.ImageRef").and_then(|r| {
        pinned_digest(&r).or_else(|| {
            let hex = r.strip_prefix("sha256:").unwrap_or(&r);
            (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| format!("sha256:{hex}"))
        })
    });
    Some(Image { image, image_id })
}

fn docker(root: &Path, id: &str) -> Option<Image> {
    let c = read_json(&root.join(DOCKER_CONTAINERS).join(id).join("config.v2.json"))?;
    let s = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    Some(Image {
        image: c.pointer("/Config/Image").and_then(s),
        image_id: c.get("Image").and_then(s),
    })
}

fn read_json(path: &Path) -> Option<Value> {
    use std::io::Read;
    let mut text = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_STATE_BYTES)
        .read_to_end(&mut text)
        .ok()?;
    serde_json::from_slice(&text).ok()
}

fn annotation(spec: &Value, key: &str) -> Option<String> {
    spec.get("annotations")?
        .get(key)?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// `sha256:<hex>` from a reference that pins a digest (`name@sha256:<hex>`).
fn pinned_digest(reference: &str) -> Option<String> {
    let (_, digest) = reference.rsplit_once('@')?;
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| digest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_root::TempRoot as Root;

    const ID: &str = "3f1c0a9be2d84f7c6a5b4e3d2c1b0a9f8e7d6c5b4a39281706f5e4d3c2b1a090";
    const DIGEST: &str = "sha256:98bd7cfc43b8ef0ff130465e3d5427c0771002c2f35a6a9b62cb2d04602bed0a";

    /// An OCI runtime spec as the runtimes write it: the process, mounts, and annotations.
    fn spec(annotations: &str) -> String {
        format!(
            r#"{{"ociVersion":"1.1.0","process":{{"args":["/srv/api"],"cwd":"/"}},
            "root":{{"path":"rootfs"}},"mounts":[{{"destination":"/proc","type":"proc"}}],
            "annotations":{{{annotations}}},"linux":{{"namespaces":[{{"type":"pid"}}]}}}}"#
        )
    }

    #[test]
    fn containerd_cri_annotation() {
        let r = Root::new("containerd");
        r.put(
            &format!("{CONTAINERD_TASKS}/k8s.io/{ID}/config.json"),
            &spec(
                r#""io.kubernetes.cri.container-type":"container",
                "io.kubernetes.cri.container-name":"api",
                "io.kubernetes.cri.image-name":"registry.example/shop/api:1.4.2",
                "io.kubernetes.cri.sandbox-namespace":"shop""#,
            ),
        );
        let want = Image {
            image: Some("registry.example/shop/api:1.4.2".into()),
            image_id: None,
        };
        assert_eq!(for_container(&r.0, ID, Some("containerd")), want);
        // The runtime unknown (a bare id under kubepods cgroupfs): found all the same.
        assert_eq!(for_container(&r.0, ID, None), want);
        // A reference pinned by digest gives the digest.
        r.put(
            &format!("{CONTAINERD_TASKS}/k8s.io/{ID}/config.json"),
            &spec(&format!(
                r#""io.kubernetes.cri.image-name":"registry.example/shop/api@{DIGEST}""#
            )),
        );
        assert_eq!(
            for_container(&r.0, ID, Some("containerd"))
                .image_id
                .as_deref(),
            Some(DIGEST)
        );
    }

    #[test]
    fn crio_annotations() {
        let r = Root::new("crio");
        let hex = DIGEST.strip_prefix("sha256:").unwrap();
        r.put(
            &format!("{}/{ID}/userdata/config.json", CRIO_ROOTS[0]),
            &spec(&format!(
                r#""io.kubernetes.cri-o.Image":"quay.io/shop/api:1.4.2",
                "io.kubernetes.cri-o.ImageName":"quay.io/shop/api:1.4.2",
                "io.kubernetes.cri-o.ImageRef":"{hex}""#
            )),
        );
        assert_eq!(
            for_container(&r.0, ID, Some("cri-o")),
            Image {
                image: Some("quay.io/shop/api:1.4.2".into()),
                image_id: Some(DIGEST.into()),
            }
        );
        // Older CRI-O: a reference with the digest, and only `Image`; in the persistent root.
        let r = Root::new("crio-old");
        r.put(
            &format!("{}/{ID}/userdata/config.json", CRIO_ROOTS[1]),
            &spec(&format!(
                r#""io.kubernetes.cri-o.Image":"redis:alpine",
                "io.kubernetes.cri-o.ImageRef":"docker.io/library/redis@{DIGEST}""#
            )),
        );
        assert_eq!(
            for_container(&r.0, ID, Some("cri-o")),
            Image {
                image: Some("redis:alpine".into()),
                image_id: Some(DIGEST.into()),
            }
        );
    }

    #[test]
    fn docker_container_config() {
        let r = Root::new("docker");
        r.put(
            &format!("{DOCKER_CONTAINERS}/{ID}/config.v2.json"),
            &format!(
                r#"{{"ID":"{ID}","Created":"2026-11-30T10:00:00Z","Path":"/srv/api",
                "Config":{{"Hostname":"3f1c0a9be2d8","Image":"shop/api:1.4.2","Env":["A=1"]}},
                "Image":"{DIGEST}","Name":"/api"}}"#
            ),
        );
        assert_eq!(
            for_container(&r.0, ID, Some("docker")),
            Image {
                image: Some("shop/api:1.4.2".into()),
                image_id: Some(DIGEST.into()),
            }
        );
    }

    #[test]
    fn missing_or_hostile_state_gives_nothing() {
        let r = Root::new("hostile");
        assert_eq!(for_container(&r.0, ID, None), Image::default());
        // Not JSON, no annotations, wrong types: nothing, no panic.
        r.put(
            &format!("{CONTAINERD_TASKS}/k8s.io/{ID}/config.json"),
            "{not json",
        );
        r.put(
            &format!("{}/{ID}/userdata/config.json", CRIO_ROOTS[0]),
            r#"{"annotations":{"io.kubernetes.cri-o.ImageName":7,"io.kubernetes.cri-o.ImageRef":"latest"}}"#,
        );
        r.put(
            &format!("{DOCKER_CONTAINERS}/{ID}/config.v2.json"),
            r#"{"Config":[],"Image":""}"#,
        );
        assert_eq!(for_container(&r.0, ID, None), Image::default());
        // An id that is not one never becomes a path.
        assert_eq!(for_container(&r.0, "../../etc", None), Image::default());
        assert_eq!(pinned_digest("api@sha256:short"), None);
    }
}
