//! [`open`]: a store from its URL, as written in Stipple's configuration.

use std::path::Path;
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
    let url = url.trim();
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(StoreError::Open(
                "the store URL sqlite:// names no file: write sqlite://PATH, e.g. sqlite://./stipple-data/stipple.db"
                    .into(),
            ));
        }
        return Ok(Arc::new(SqliteStore::open(Path::new(path), options)?));
    }
    if url == "memory://" || url == "memory:" {
        return Ok(Arc::new(MemoryStore::with_clock(options.clock)));
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
        match open(url, SqliteOptions::default()) {
            Ok(store) => panic!("{url} opened {store:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn memory_url_opens_a_memory_store() {
        let store = open("memory://", SqliteOptions::default()).expect("memory store");
        assert!(format!("{store:?}").starts_with("MemoryStore"));
    }

    #[test]
    fn sqlite_url_takes_relative_and_absolute_paths() {
        let dir = tempfile::tempdir().expect("temp dir");
        let absolute = dir.path().join("abs/stipple.db");
        let url = format!("sqlite://{}", absolute.display());
        assert!(url.starts_with("sqlite:///"));
        drop(open(&url, SqliteOptions::default()).expect("absolute path"));
        assert!(absolute.exists());

        // Relative to the working directory, which tests must not change: a fresh name in it.
        let relative = format!("./target-store-test-{}/stipple.db", std::process::id());
        let store = open(&format!("sqlite://{relative}"), SqliteOptions::default());
        let created = Path::new(&relative).exists();
        drop(store);
        let _ = std::fs::remove_dir_all(Path::new(&relative).parent().expect("parent"));
        assert!(created, "relative path {relative} not created");
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
        for url in ["mysql://db", "stipple.db", "sqlite://"] {
            let e = error(url);
            assert!(e.contains("sqlite://PATH"), "{url}: {e}");
        }
        assert!(error("redis://secret@x").contains("memory://"));
        assert!(!error("redis://secret@x").contains("secret"));
    }
}
