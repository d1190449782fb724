//! Resolving `--model` into files on disk: a GGUF file (or the first part of
//! a split one), a local directory in Hugging Face layout, or a Hub repo id
//! fetched with hf-hub into the standard HF cache (`HF_HOME`, `HF_TOKEN`,
//! `HF_HUB_OFFLINE` and `--revision` honored). `org/name:file.gguf` selects
//! one GGUF file of a Hub repo.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// What a model specification resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolvedSource {
    /// All parts of a GGUF checkpoint, in order.
    Gguf(Vec<PathBuf>),
    /// A directory with config.json, tokenizer files and safetensors.
    HfDir(PathBuf),
}

/// Names every part of a split GGUF (`name-00001-of-00003.gguf`) from the
/// name of one of them, in order; `None` when the name is not a split one.
fn split_part_names(name: &str) -> Option<Vec<String>> {
    let stem = name.strip_suffix(".gguf").unwrap_or(name);
    let split = stem.rsplitn(4, '-').collect::<Vec<_>>();
    let [total, "of", idx, base] = split[..] else {
        return None;
    };
    let (Ok(total), Ok(_)) = (total.parse::<usize>(), idx.parse::<usize>()) else {
        return None;
    };
    let width = idx.len();
    Some(
        (1..=total)
            .map(|i| format!("{base}-{i:0width$}-of-{total:0width$}.gguf"))
            .collect(),
    )
}

/// Finds every part of a split GGUF (`name-00001-of-00003.gguf`) next to
/// `first`, or just the file itself when it is not split.
pub fn gguf_parts(first: &Path) -> Result<Vec<PathBuf>> {
    let name = first
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: not a file name", first.display()))?;
    let Some(names) = split_part_names(name) else {
        return Ok(vec![first.to_path_buf()]);
    };
    let dir = first.parent().unwrap_or(Path::new("."));
    let parts: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    if let Some(missing) = parts.iter().find(|p| !p.exists()) {
        bail!("{}: split GGUF part is missing", missing.display());
    }
    Ok(parts)
}

/// Resolves a local path or a Hub repo id.
pub fn resolve(spec: &str, revision: Option<&str>) -> Result<ResolvedSource> {
    let path = Path::new(spec);
    if path.is_file() {
        return Ok(ResolvedSource::Gguf(gguf_parts(path)?));
    }
    if path.is_dir() {
        if path.join("config.json").exists() {
            return Ok(ResolvedSource::HfDir(path.to_path_buf()));
        }
        let ggufs: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
            .collect();
        return match ggufs.len() {
            1 => Ok(ResolvedSource::Gguf(gguf_parts(&ggufs[0])?)),
            0 => bail!(
                "{}: directory has neither config.json nor a .gguf file",
                path.display()
            ),
            _ => bail!(
                "{}: directory holds several .gguf files; name one of them",
                path.display()
            ),
        };
    }
    if looks_like_repo_id(spec) {
        return from_hub(spec, revision);
    }
    bail!("{spec}: no such file or directory, and not a Hugging Face repo id (org/name)")
}

fn looks_like_repo_id(spec: &str) -> bool {
    let repo = spec.split(':').next().unwrap_or(spec);
    let mut parts = repo.split('/');
    matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty())
        && !spec.starts_with('.')
        && !spec.starts_with('/')
}

/// Files fetched for a safetensors repo besides the weight shards.
const HF_FILES: &[&str] = &["config.json", "tokenizer.json", "tokenizer_config.json"];
const OPTIONAL_FILES: &[&str] = &["generation_config.json"];

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// A file getter over the HF cache, with or without network.
struct HubRepo {
    repo: String,
    revision: String,
    cache: hf_hub::Cache,
    api: Option<hf_hub::api::sync::ApiRepo>,
}

impl HubRepo {
    fn new(repo: &str, revision: Option<&str>) -> Result<Self> {
        Self::with_cache(repo, revision, hf_hub::Cache::from_env(), offline())
    }

    /// A getter over `cache`, downloading what it lacks unless `offline`.
    fn with_cache(
        repo: &str,
        revision: Option<&str>,
        cache: hf_hub::Cache,
        offline: bool,
    ) -> Result<Self> {
        let revision = revision.unwrap_or("main").to_string();
        let api = if offline {
            None
        } else {
            let token = std::env::var("HF_TOKEN").ok().or_else(|| cache.token());
            let api = hf_hub::api::sync::ApiBuilder::from_env()
                .with_token(token)
                .with_progress(true)
                .build()
                .context("cannot set up the Hugging Face Hub client")?;
            Some(api.repo(hf_hub::Repo::with_revision(
                repo.to_string(),
                hf_hub::RepoType::Model,
                revision.clone(),
            )))
        };
        Ok(Self {
            repo: repo.to_string(),
            revision,
            cache,
            api,
        })
    }

    fn cached(&self, file: &str) -> Option<PathBuf> {
        let repo = hf_hub::Repo::with_revision(
            self.repo.clone(),
            hf_hub::RepoType::Model,
            self.revision.clone(),
        );
        if let Some(p) = self.cache.repo(repo.clone()).get(file) {
            return Some(p);
        }
        // A commit hash as revision has no ref file: look at its snapshot.
        let p = self
            .cache
            .path()
            .join(repo.folder_name())
            .join("snapshots")
            .join(&self.revision)
            .join(file);
        p.exists().then_some(p)
    }

    fn get(&self, file: &str) -> Result<PathBuf> {
        if let Some(p) = self.cached(file) {
            return Ok(p);
        }
        match &self.api {
            Some(api) => api.get(file).with_context(|| {
                format!("{}@{}: cannot download `{file}`", self.repo, self.revision)
            }),
            None => bail!(
                "{}@{}: `{file}` is not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set",
                self.repo,
                self.revision,
                self.cache.path().display()
            ),
        }
    }
}

/// Every part of the Hub GGUF `file` (a path inside the repo), each fetched
/// through the cache or the Hub: the parts of a split file live next to the
/// first in the repo, not in the current directory.
fn hub_gguf_parts(hub: &HubRepo, file: &str) -> Result<Vec<PathBuf>> {
    let (dir, name) = match file.rsplit_once('/') {
        Some((dir, name)) => (Some(dir), name),
        None => (None, file),
    };
    match split_part_names(name) {
        None => Ok(vec![hub.get(file)?]),
        Some(names) => names
            .iter()
            .map(|n| match dir {
                Some(dir) => hub.get(&format!("{dir}/{n}")),
                None => hub.get(n),
            })
            .collect(),
    }
}

fn from_hub(spec: &str, revision: Option<&str>) -> Result<ResolvedSource> {
    let (repo_id, gguf_file) = match spec.split_once(':') {
        Some((r, f)) => (r, Some(f)),
        None => (spec, None),
    };
    let hub = HubRepo::new(repo_id, revision)?;
    if let Some(file) = gguf_file {
        return Ok(ResolvedSource::Gguf(hub_gguf_parts(&hub, file)?));
    }
    let mut dir = None;
    for f in HF_FILES {
        let p = hub.get(f)?;
        dir = p.parent().map(Path::to_path_buf);
    }
    for f in OPTIONAL_FILES {
        let _ = hub.get(f);
    }
    let dir = dir.context("empty file list")?;
    match hub.get("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index)?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: invalid JSON", index.display()))?;
            let mut shards: Vec<&str> = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .map(|m| m.values().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            shards.sort_unstable();
            shards.dedup();
            for s in shards {
                hub.get(s)?;
            }
        }
        Err(_) => {
            hub.get("model.safetensors")?;
        }
    }
    Ok(ResolvedSource::HfDir(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_are_recognized() {
        assert!(looks_like_repo_id(
            "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
        ));
        assert!(looks_like_repo_id("org/repo:file-Q4_K_M.gguf"));
        assert!(!looks_like_repo_id("model.gguf"));
        assert!(!looks_like_repo_id("/abs/path"));
        assert!(!looks_like_repo_id("a/b/c"));
    }

    #[test]
    fn split_gguf_parts_are_listed_and_missing_parts_named() {
        let dir = std::env::temp_dir().join(format!("r1serve-split-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("m-00001-of-00002.gguf");
        std::fs::write(&a, b"x").unwrap();
        let err = gguf_parts(&a).unwrap_err().to_string();
        assert!(err.contains("m-00002-of-00002.gguf"), "{err}");
        std::fs::write(dir.join("m-00002-of-00002.gguf"), b"x").unwrap();
        assert_eq!(gguf_parts(&a).unwrap().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `org/name:dir/m-00001-of-00002.gguf` in an offline HF cache (the
    /// layout hf-hub reads: `models--org--name/refs/main` naming a snapshot
    /// that holds the files): both parts come from the snapshot, whatever
    /// the current directory holds, and a missing part is named.
    #[test]
    fn split_gguf_parts_resolve_through_the_hub_cache() {
        let root = std::env::temp_dir().join(format!("r1serve-hfcache-{}", std::process::id()));
        let repo = root.join("models--org--name");
        let snapshot = repo.join("snapshots/0123abcd");
        std::fs::create_dir_all(snapshot.join("q4")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
        let part = |i: usize| snapshot.join(format!("q4/m-0000{i}-of-00002.gguf"));
        std::fs::write(part(1), b"x").unwrap();
        let cache = hf_hub::Cache::new(root.clone());
        let hub = HubRepo::with_cache("org/name", None, cache, true).unwrap();
        let err = hub_gguf_parts(&hub, "q4/m-00001-of-00002.gguf")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("q4/m-00002-of-00002.gguf") && err.contains("HF_HUB_OFFLINE"),
            "{err}"
        );
        std::fs::write(part(2), b"x").unwrap();
        let parts = hub_gguf_parts(&hub, "q4/m-00001-of-00002.gguf").unwrap();
        assert_eq!(parts, [part(1), part(2)]);
        assert_eq!(
            hub_gguf_parts(&hub, "q4/m-00002-of-00002.gguf").unwrap(),
            [part(1), part(2)]
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
