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

    /// Writes `bytes` at `rel` and stretches the file, sparse, to `len` bytes: a small file
    /// whose headers may claim gigabytes, and whose size agrees. Returns it open.
    pub fn sparse(&self, rel: &str, bytes: &[u8], len: u64) -> fs::File {
        let p = self.0.join(rel);
        fs::write(&p, bytes).unwrap();
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        f.set_len(len).unwrap();
        f
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
