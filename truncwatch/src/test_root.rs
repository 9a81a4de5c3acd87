//! A scratch directory for unit tests that read files: a fabricated host root (`/proc`,
//! `/var/log`, runtime state) or a place to build executables. Removed when dropped.
use std::fs;
use std::path::PathBuf;

pub struct TempRoot(pub PathBuf);

impl TempRoot {
    /// A fresh, empty directory; `tag` keeps concurrent tests apart.
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("truncwatch-test-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempRoot(p)
    }

    /// Writes `contents` at `rel`, making its directories.
    pub fn put(&self, rel: &str, contents: &str) {
        let p = self.0.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, contents).unwrap();
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
