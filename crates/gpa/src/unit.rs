//! The agent as its own systemd unit (spec §9.5, decided): only then is provisioning announced on the system
//! console and the unit limited to [`CPU_QUOTA`] for the current boot.
//!
//! "Its own unit" means both: systemd started this process as a service (`INVOCATION_ID` is set) and the process's
//! cgroup v2 path ends in [`UNIT_NAME`]. This module must never write to the console or change a system setting
//! otherwise: not under another service (a CI runner, a test), not from a shell, not in a container.

use std::io::Write;
use std::path::Path;
use std::process::Command;

/// The agent's unit (`packaging/gpa.service`).
pub const UNIT_NAME: &str = "gpa.service";
/// The resource limit applied once provisioning finished (spec §9.5 step 4).
pub const CPU_QUOTA: &str = "CPUQuota=15%";
/// Where the provisioning result is announced (spec §9.5 step 3).
pub const CONSOLE: &str = "/dev/console";

/// This process, running as the agent's systemd unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    name: &'static str,
}

impl Unit {
    /// The unit, when this process runs as it.
    pub fn detect() -> Option<Unit> {
        let invoked = std::env::var_os("INVOCATION_ID").is_some_and(|v| !v.is_empty());
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        Unit::from_parts(invoked, &cgroup)
    }

    /// [`Unit::detect`] on given inputs: whether `INVOCATION_ID` is set, and the text of `/proc/self/cgroup`.
    pub fn from_parts(invoked: bool, proc_self_cgroup: &str) -> Option<Unit> {
        // cgroup v2 is the line "0::<path>"; a v1 or hybrid hierarchy has no such line, or one that does not end
        // in the unit.
        let path = proc_self_cgroup
            .lines()
            .find_map(|line| line.strip_prefix("0::"))?;
        let leaf = path.trim_end().rsplit('/').next()?;
        (invoked && leaf == UNIT_NAME).then_some(Unit { name: UNIT_NAME })
    }

    /// The unit's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Writes the provisioning result to the console: `Provision finished successfully`, or the error lines.
    pub fn announce(&self, error: &str) {
        if let Err(e) = announce_to(Path::new(CONSOLE), error) {
            tracing::warn!(error = %e, console = CONSOLE, "cannot announce provisioning on the console");
        }
    }

    /// The `systemctl` arguments that limit the unit for the current boot only.
    pub fn limit_cpu_args(&self) -> [&'static str; 4] {
        ["set-property", "--runtime", self.name, CPU_QUOTA]
    }

    /// Applies [`CPU_QUOTA`] to the unit for the current boot, on a thread of its own (systemctl may take a while
    /// and the caller is the provisioning path). The outcome is logged.
    pub fn limit_cpu(&self) {
        let (unit, args) = (self.name, self.limit_cpu_args());
        let spawned = std::thread::Builder::new()
            .name("gpa-cpuquota".into())
            .spawn(move || match Command::new("systemctl").args(args).output() {
                Ok(out) if out.status.success() => {
                    tracing::info!(unit, limit = CPU_QUOTA, "resource limit applied for this boot");
                }
                Ok(out) => tracing::warn!(
                    unit,
                    status = %out.status,
                    stderr = %String::from_utf8_lossy(&out.stderr).trim_end(),
                    "systemctl refused the resource limit"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot run systemctl to apply the resource limit"),
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the thread that applies the resource limit");
        }
    }
}

/// The console text for a provisioning result (`error` empty on success).
pub fn announcement(error: &str) -> String {
    if error.is_empty() {
        "Provision finished successfully\n".to_owned()
    } else {
        format!("Provision finished with errors:\n{}\n", error.trim_end())
    }
}

/// Appends [`announcement`] to `console` (a tty or, in tests, a file); never creates it.
pub fn announce_to(console: &Path, error: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).open(console)?;
    f.write_all(announcement(error).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNDER_UNIT: &str = "0::/system.slice/gpa.service\n";

    #[test]
    fn only_the_agents_own_service_with_an_invocation_id_is_the_unit() {
        assert_eq!(
            Unit::from_parts(true, UNDER_UNIT).map(|u| u.name()),
            Some("gpa.service")
        );
        assert_eq!(
            Unit::from_parts(false, UNDER_UNIT),
            None,
            "not started by systemd"
        );
        for other in [
            "0::/system.slice/ci-runner.service\n",
            "0::/user.slice/user-0.slice/session-3.scope\n",
            "0::/system.slice/gpa.service/child\n",
            "0::/system.slice/not-gpa.service\n",
            "0::/\n",
            "12:cpu,cpuacct:/system.slice/gpa.service\n",
            "",
        ] {
            assert_eq!(Unit::from_parts(true, other), None, "{other:?}");
        }
    }

    #[test]
    fn the_limit_is_for_this_boot_only() {
        let unit = Unit::from_parts(true, UNDER_UNIT).unwrap();
        assert_eq!(
            unit.limit_cpu_args(),
            ["set-property", "--runtime", "gpa.service", "CPUQuota=15%"]
        );
    }

    #[test]
    fn the_console_gets_the_result_appended_and_is_never_created() {
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("console");
        assert!(
            announce_to(&console, "").is_err(),
            "a missing console is not created"
        );
        std::fs::write(&console, "earlier\n").unwrap();
        announce_to(&console, "").unwrap();
        announce_to(&console, "keyLatchStatus - no key\r\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&console).unwrap(),
            "earlier\nProvision finished successfully\nProvision finished with errors:\nkeyLatchStatus - no key\n"
        );
    }
}
