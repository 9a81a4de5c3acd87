//! Which label sets get series of their own, so that no process can fill the metrics' label
//! table and hide the next victim under `other`.
//!
//! A label set carries a process name, which any process sets at will (`prctl(PR_SET_NAME)`,
//! or a symlink to its executable), and a port or server address, which it picks too. So
//! admission is not decided by the labels but by who asks, from what the node's own files say
//! about the process (`attribution`):
//! - its **owner**: the cgroup and the executable it runs (`/proc/PID/cgroup`,
//!   `/proc/PID/exe`). An owner holds at most 1/[`OWNER_SHARE`] of the table;
//! - its **tenant**: its pod, else its container, else the first two components of its cgroup
//!   path (`/system.slice/nginx.service`, `/user.slice/user-1000.slice`: what systemd gives a
//!   service or a user, which an unprivileged user cannot leave). A tenant holds at most
//!   1/[`TENANT_SHARE`] of the table, whatever number of executables it runs;
//! - the last 1/[`RESERVE_SHARE`] of the table is kept for the first label set of tenants that
//!   hold none yet: a workload that starts late, or cuts its first response after a flood,
//!   still gets its own series.
//!
//! A process whose cgroup and executable could not be read (it exited first; the agent runs in
//! a PID namespace of its own) counts with every other such process as one owner and one
//! tenant. Label sets are admitted for the agent's lifetime (a counter that moved to `other`
//! later would go backwards).
use crate::owner::attribution::Attribution;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, RandomState};

/// One owner (cgroup, executable) holds at most this fraction (1/N) of the table.
pub const OWNER_SHARE: usize = 8;
/// One tenant (pod, container, or cgroup slice) holds at most this fraction (1/N).
pub const TENANT_SHARE: usize = 4;
/// This fraction (1/N) of the table is kept for tenants' first label sets.
pub const RESERVE_SHARE: usize = 10;

/// A bounded table of label sets. Only hashes are kept: 64-bit SipHash under a key drawn at
/// start, so no process can aim a collision at another's label set or quota.
pub struct Table {
    cap: usize,
    admitted: HashSet<u64>,
    per_owner: HashMap<u64, usize>,
    per_tenant: HashMap<u64, usize>,
    hasher: RandomState,
}

impl Table {
    /// A table of at most `cap` label sets.
    pub fn new(cap: usize) -> Self {
        Table {
            cap,
            admitted: HashSet::new(),
            per_owner: HashMap::new(),
            per_tenant: HashMap::new(),
            hasher: RandomState::new(),
        }
    }

    /// The key of a label set in this table (no allocation).
    pub fn key(&self, labels: &impl Hash) -> u64 {
        self.hasher.hash_one(labels)
    }

    /// Whether the label set `key` was admitted already.
    pub fn contains(&self, key: u64) -> bool {
        self.admitted.contains(&key)
    }

    /// Whether the label set `key` (from [`Table::key`]) has series of its own: admitted
    /// before, or now, for the process `who` describes. A refusal changes nothing.
    pub fn admit(&mut self, key: u64, who: &Attribution) -> bool {
        if self.contains(key) {
            return true;
        }
        let owner = self.key(&(who.cgroup.as_deref(), who.exe.as_deref()));
        let tenant = self.key(&tenant(who));
        let held_by_owner = self.per_owner.get(&owner).copied().unwrap_or(0);
        let held_by_tenant = self.per_tenant.get(&tenant).copied().unwrap_or(0);
        let fits = if held_by_tenant == 0 {
            self.admitted.len() < self.cap
        } else {
            self.admitted.len() + self.cap / RESERVE_SHARE < self.cap
                && held_by_owner < quota(self.cap, OWNER_SHARE)
                && held_by_tenant < quota(self.cap, TENANT_SHARE)
        };
        if fits {
            self.admitted.insert(key);
            *self.per_owner.entry(owner).or_default() += 1;
            *self.per_tenant.entry(tenant).or_default() += 1;
        }
        fits
    }
}

/// 1/`share` of `cap`, at least one label set.
fn quota(cap: usize, share: usize) -> usize {
    (cap / share).max(1)
}

/// Who answers for a process's label sets (see the module's doc), tagged by kind so that a
/// cgroup path cannot pass for a pod uid. `(0, "")` when nothing is known.
fn tenant(a: &Attribution) -> (u8, &str) {
    if let Some(uid) = &a.pod_uid {
        return (1, uid);
    }
    if let Some(id) = &a.container_id {
        return (2, id);
    }
    let Some(path) = a.cgroup.as_deref() else {
        return (0, "");
    };
    // The end of the second component: `/a/b/c` -> `/a/b`.
    let end = path
        .match_indices('/')
        .map(|(i, _)| i)
        .filter(|&i| i > 0)
        .nth(1)
        .unwrap_or(path.len());
    (3, &path[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(cgroup: &str, exe: &str) -> Attribution {
        Attribution {
            cgroup: Some(cgroup.into()),
            exe: Some(exe.into()),
            ..Attribution::default()
        }
    }

    /// Ask for `n` label sets `(tag, 0..n)` for `a`; how many got in.
    fn fill(t: &mut Table, a: &Attribution, tag: &str, n: usize) -> usize {
        (0..n).filter(|i| t.admit(t.key(&(tag, i)), a)).count()
    }

    #[test]
    fn tenants_are_pods_containers_or_cgroup_slices() {
        let mut a = who(
            "/user.slice/user-1000.slice/session-3.scope",
            "/usr/bin/python3",
        );
        assert_eq!(tenant(&a), (3, "/user.slice/user-1000.slice"));
        a.cgroup = Some("/system.slice/nginx.service".into());
        assert_eq!(tenant(&a), (3, "/system.slice/nginx.service"));
        a.cgroup = Some("/init.scope".into());
        assert_eq!(tenant(&a), (3, "/init.scope"));
        a.cgroup = Some("/".into());
        assert_eq!(tenant(&a), (3, "/"));
        a.container_id = Some("ab12".repeat(16));
        assert_eq!(tenant(&a).0, 2);
        a.pod_uid = Some("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into());
        assert_eq!(tenant(&a), (1, "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"));
        assert_eq!(tenant(&Attribution::default()), (0, ""));
    }

    /// The attack of issue 26: one executable in one cgroup, under any number of names, holds
    /// an eighth of the table; the victim then still gets label sets of its own.
    #[test]
    fn one_owner_cannot_fill_the_table_under_many_names() {
        let mut t = Table::new(1000);
        let evil = who(
            "/user.slice/user-65534.slice/session-9.scope",
            "/usr/bin/busybox",
        );
        assert_eq!(fill(&mut t, &evil, "evil", 1000), 1000 / OWNER_SHARE);
        let victim = who("/system.slice/nginx.service", "/usr/sbin/nginx");
        assert_eq!(fill(&mut t, &victim, "nginx", 3), 3);
        // Another executable of the same user: the user's tenant quota is what is left.
        let evil2 = who("/user.slice/user-65534.slice/session-9.scope", "/tmp/copy");
        let left = 1000 / TENANT_SHARE - 1000 / OWNER_SHARE;
        assert_eq!(fill(&mut t, &evil2, "copy", 1000), left);
        // A set admitted before stays admitted, over quota or not.
        assert!(t.admit(t.key(&("evil", 0usize)), &evil));
        assert!(!t.admit(t.key(&("evil", 999usize)), &evil));
    }

    /// Copies of an executable at many paths: each is an owner, the tenant holds a quarter.
    #[test]
    fn one_tenant_cannot_fill_the_table_with_many_executables() {
        let mut t = Table::new(1000);
        let mut got = 0;
        for i in 0..100 {
            let copy = who("/user.slice/user-65534.slice", &format!("/tmp/x{i}"));
            got += fill(&mut t, &copy, &format!("x{i}"), 100);
        }
        assert_eq!(got, 1000 / TENANT_SHARE);
        // Pods are tenants of their own.
        let pod = Attribution {
            pod_uid: Some("pod-a".into()),
            ..who("/kubepods.slice/kubepods-pod_a.slice", "/app")
        };
        assert_eq!(fill(&mut t, &pod, "pod-a", 5), 5);
    }

    /// Once all but the reserve is taken, only tenants that hold nothing yet get in (one
    /// label set each), until the table is full.
    #[test]
    fn the_reserve_is_kept_for_new_tenants() {
        let cap = 80; // owner quota 10, tenant quota 20, reserve 8
        let mut t = Table::new(cap);
        let mut got = 0;
        for i in 0..4 {
            let svc = format!("/system.slice/s{i}.service");
            got += fill(&mut t, &who(&svc, "/a"), &svc, 10);
            got += fill(&mut t, &who(&svc, "/b"), &format!("{svc}b"), 10);
        }
        assert_eq!(got, cap - cap / RESERVE_SHARE, "the shared part is full");
        let late = who("/system.slice/late.service", "/late");
        assert_eq!(
            fill(&mut t, &late, "late", 5),
            1,
            "a new tenant's first set"
        );
        assert_eq!(
            fill(&mut t, &who("/system.slice/s0.service", "/c"), "c", 1),
            0
        );
        let mut newcomers = 0;
        for i in 0..20 {
            let svc = format!("/system.slice/n{i}.service");
            newcomers += fill(&mut t, &who(&svc, "/n"), &svc, 1);
        }
        assert_eq!(
            newcomers,
            cap / RESERVE_SHARE - 1,
            "until the table is full"
        );
    }

    /// Processes the agent could not look up share one owner: they cannot crowd out the
    /// ones it knows.
    #[test]
    fn unknown_processes_share_one_owner() {
        let mut t = Table::new(1000);
        let gone = Attribution::default();
        assert_eq!(fill(&mut t, &gone, "gone", 1000), 1000 / OWNER_SHARE);
        assert_eq!(
            fill(&mut t, &who("/system.slice/a.service", "/a"), "a", 2),
            2
        );
    }

    #[test]
    fn tiny_tables_still_admit() {
        let mut t = Table::new(1);
        assert_eq!(fill(&mut t, &who("/a", "/a"), "a", 3), 1);
        assert_eq!(fill(&mut t, &who("/b", "/b"), "b", 1), 0);
    }
}
