//! [`open`]: a store from its URL, as written in Stipple's configuration.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::memory::MemoryStore;
use crate::sqlite::{SqliteOptions, SqliteStore};
use crate::{Store, StoreError};

/// Opens the store named by `url`:
///
/// - `sqlite://PATH`: the embedded store in the file PATH, relative
///   (`sqlite://./stipple-data/stipple.db`) or absolute (`sqlite:///var/lib/stipple/stipple.db`);
/// - `memory://`: a [`MemoryStore`] (nothing survives the process), on `options.clock`.
///
/// `postgres://…` is recognised but not built yet. Opening SQLite does blocking file I/O.
pub fn open(url: &str, options: SqliteOptions) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match parse(url)? {
        Target::Sqlite(path) => Arc::new(SqliteStore::open(&path, options)?),
        Target::Memory => Arc::new(MemoryStore::with_clock(options.clock)),
    })
}

/// What a store URL names.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Sqlite(PathBuf),
    Memory,
}

fn parse(url: &str) -> Result<Target, StoreError> {
    let url = url.trim();
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(StoreError::Open(
                "the store URL sqlite:// names no file: write sqlite://PATH, e.g. sqlite://./stipple-data/stipple.db"
                    .into(),
            ));
        }
        return Ok(Target::Sqlite(Path::new(path).to_owned()));
    }
    if url == "memory://" || url == "memory:" {
        return Ok(Target::Memory);
    }
    let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
    if scheme.eq_ignore_ascii_case("postgres") || scheme.eq_ignore_ascii_case("postgresql") {
        // The URL itself may carry a password: it is not repeated here.
        return Err(StoreError::Open(
            "PostgreSQL support is not built yet: use sqlite://PATH for now".into(),
        ));
    }
    let shown = if scheme.is_empty() { url } else { scheme };
    Err(StoreError::Open(format!(
        "unsupported store URL {shown:?}: use sqlite://PATH (e.g. sqlite://./stipple-data/stipple.db) or memory://"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(url: &str) -> String {
        match parse(url) {
            Ok(target) => panic!("{url} parsed as {target:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn sqlite_urls_keep_relative_and_absolute_paths() {
        let cases = [
            (
                "sqlite://./stipple-data/stipple.db",
                "./stipple-data/stipple.db",
            ),
            ("sqlite://stipple.db", "stipple.db"),
            (
                "sqlite:///var/lib/stipple/stipple.db",
                "/var/lib/stipple/stipple.db",
            ),
            (" sqlite:///tmp/s.db\n", "/tmp/s.db"),
        ];
        for (url, path) in cases {
            assert_eq!(parse(url).ok(), Some(Target::Sqlite(path.into())), "{url}");
        }
    }

    #[test]
    fn memory_url_opens_a_memory_store() {
        assert_eq!(parse("memory://").ok(), Some(Target::Memory));
        let store = open("memory://", SqliteOptions::default()).expect("memory store");
        assert!(format!("{store:?}").starts_with("MemoryStore"));
    }

    #[test]
    fn sqlite_url_opens_the_file_creating_its_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("abs/stipple.db");
        let url = format!("sqlite://{}", path.display());
        let store = open(&url, SqliteOptions::default()).expect("open");
        assert!(format!("{store:?}").starts_with("SqliteStore"));
        assert!(path.exists());
    }

    #[test]
    fn postgres_is_not_built_yet_and_the_password_is_not_shown() {
        let e = error("postgres://stipple:hunter2@db/stipple");
        assert!(e.contains("PostgreSQL support is not built yet"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(error("postgresql://db/stipple").contains("not built yet"));
    }

    #[test]
    fn other_schemes_name_the_accepted_ones() {
        for url in ["mysql://db", "stipple.db", "sqlite://", "memory://x"] {
            let e = error(url);
            assert!(e.contains("sqlite://PATH"), "{url}: {e}");
        }
        assert!(error("redis://secret@x").contains("memory://"));
        assert!(!error("redis://secret@x").contains("secret"));
    }
}
