//! Who burned the CPU? Reads the server's CPU time and resident memory from `/proc` and the load
//! generator's own CPU time from `getrusage`, so every report can say whether the server or the
//! client was the bottleneck. Also raises this process's open-file soft limit to the hard limit,
//! because every connection costs one descriptor.

use std::time::Instant;

use anyhow::{bail, Context, Result};

/// One observation of the server process.
#[derive(Debug, Clone, Copy)]
pub struct ServerSample {
    /// utime + stime in clock ticks.
    pub cpu_ticks: u64,
    /// VmRSS in KiB.
    pub rss_kib: u64,
    pub at: Instant,
}

/// Most processes one probe sums (`--server-pid A,B,...`).
pub const MAX_PIDS: usize = 8;

/// Samples `/proc/PID/{stat,status}` of one or several processes (summed).
#[derive(Debug, Clone, Copy)]
pub struct ServerProbe {
    pids: [u32; MAX_PIDS],
    n: usize,
}

impl ServerProbe {
    pub fn new(pids: &[u32]) -> Result<Self> {
        if pids.is_empty() || pids.len() > MAX_PIDS {
            crate::usage!("--server-pid takes 1 to {MAX_PIDS} PIDs");
        }
        let mut all = [0; MAX_PIDS];
        all[..pids.len()].copy_from_slice(pids);
        Ok(Self {
            pids: all,
            n: pids.len(),
        })
    }

    /// CPU ticks and VmRSS summed over every observed process.
    pub fn sample(&self) -> Result<ServerSample> {
        let mut total = Self::sample_one(self.pids[0])?;
        for &pid in &self.pids[1..self.n] {
            let s = Self::sample_one(pid)?;
            total.cpu_ticks += s.cpu_ticks;
            total.rss_kib += s.rss_kib;
        }
        Ok(total)
    }

    fn sample_one(pid: u32) -> Result<ServerSample> {
        let at = Instant::now();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid)).with_context(|| {
            format!(
                "server process {} is gone or unreadable (/proc/PID/stat)",
                pid
            )
        })?;
        let cpu_ticks = parse_stat_cpu(&stat)
            .with_context(|| format!("unexpected /proc/{}/stat format", pid))?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", pid))
            .with_context(|| format!("server process {} is gone (/proc/PID/status)", pid))?;
        let rss_kib = parse_vmrss_kib(&status).unwrap_or(0);
        Ok(ServerSample {
            cpu_ticks,
            rss_kib,
            at,
        })
    }
}

/// utime + stime (fields 14 and 15) from a `/proc/PID/stat` line. The command name (field 2)
/// may contain spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_stat_cpu(stat: &str) -> Result<u64> {
    let close = stat.rfind(')').context("no ')' in stat")?;
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    if fields.len() < 13 {
        bail!("stat has only {} fields after comm", fields.len());
    }
    let utime: u64 = fields[11].parse().context("utime")?;
    let stime: u64 = fields[12].parse().context("stime")?;
    Ok(utime + stime)
}

/// `VmRSS:   1234 kB` from `/proc/PID/status`.
pub fn parse_vmrss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), 100 if the call fails.
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as f64
    } else {
        100.0
    }
}

/// CPU seconds (user, system) of this process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub user_s: f64,
    pub sys_s: f64,
}

impl Cpu {
    pub fn since(&self, earlier: &Cpu) -> Cpu {
        Cpu {
            user_s: (self.user_s - earlier.user_s).max(0.0),
            sys_s: (self.sys_s - earlier.sys_s).max(0.0),
        }
    }
}

/// `getrusage(RUSAGE_SELF)`; zeros if it fails (it cannot for RUSAGE_SELF on Linux).
pub fn self_cpu() -> Cpu {
    // SAFETY: rusage is plain data; getrusage writes it fully on success.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage struct.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return Cpu::default();
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Cpu {
        user_s: tv(ru.ru_utime),
        sys_s: tv(ru.ru_stime),
    }
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit; returns the resulting soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: rlimit is plain data.
    let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return 1024;
    }
    if rl.rlim_cur < rl.rlim_max {
        let wanted = libc::rlimit {
            rlim_cur: rl.rlim_max,
            rlim_max: rl.rlim_max,
        };
        // SAFETY: valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
            return wanted.rlim_cur as u64;
        }
    }
    rl.rlim_cur as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_handles_odd_comm() -> Result<()> {
        let line = "1234 (my) (proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 \
                    12345 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_cpu(line)?, 325);
        Ok(())
    }

    #[test]
    fn vmrss_parsing() {
        let s = "Name:\tx\nVmPeak:\t 100 kB\nVmRSS:\t    2048 kB\nThreads: 1\n";
        assert_eq!(parse_vmrss_kib(s), Some(2048));
        assert_eq!(parse_vmrss_kib("Name: x\n"), None);
    }

    #[test]
    fn own_process_is_readable() -> Result<()> {
        let one = ServerProbe::new(&[std::process::id()])?.sample()?;
        assert!(one.rss_kib > 0);
        let two = ServerProbe::new(&[std::process::id(), std::process::id()])?.sample()?;
        assert!(two.rss_kib >= 2 * one.rss_kib - 1024, "{two:?} vs {one:?}");
        Ok(())
    }
}
