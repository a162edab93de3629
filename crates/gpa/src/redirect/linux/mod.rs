//! The Linux redirector: load or adopt, attach, operate the maps, stop.
//!
//! Start-up order (spec §7.2, §7.5): the skip map holds this process before any hook is attached (fresh start)
//! or before anything else is touched (adoption of a previous agent's pins). This module must never attach a
//! second copy of the programs to a cgroup that already has this agent's pinned copy.
mod cgroup;
mod kernel_btf;
mod maps;
mod object;
mod pins;
mod programs;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use aya::Ebpf;
use aya::maps::{Map, MapData};
use aya::programs::SchedClassifier;
use aya::programs::links::{FdLink, PinnedLink};
use aya::{EbpfLoader, VerifierLogLevel};
use tracing::{info, warn};

use self::cgroup::Cgroup;
use self::maps::{Maps, OwnProcess};
use self::pins::{PinDir, pin_error};
use self::programs::{PROGRAMS, ProgramSpec, TAKE_PROGRAM};
use crate::redirect::abi::{
    self, AddrPort, POLICY_MAX_ENTRIES, TakeRequest, TakeResult, USER_HZ, map_name,
};
use crate::redirect::{
    AttachedProgram, ConnRecord, Counters, ExeId, KernelFeature, Origin, ProcessInstance,
    RedirectConfig, RedirectError, RedirectFailMode, RedirectStatus,
};

/// Kernel BTF: where the running kernel keeps the fields the record reads ([`kernel_btf`]).
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The cgroup the hooks attach to when `cgroupRoot` is unset: the cgroup2 mount named in `/proc/self/mountinfo`,
/// else `/sys/fs/cgroup` (spec §7.1).
pub fn discover_cgroup2_root() -> PathBuf {
    cgroup::discover_root()
}

/// One attached program and what keeps it attached.
#[derive(Debug)]
struct Attachment {
    /// Closing it detaches the program, unless `pin` still holds the link.
    link: FdLink,
    pin: Option<PathBuf>,
    program: AttachedProgram,
}

/// The running redirector of one cgroup.
///
/// [`stop`](Redirector::stop) is the orderly stop of spec §7.5: it detaches and unpins everything. Dropping a
/// redirector without `stop` is treated as an unplanned exit: in `open` mode its links close with it; in
/// `closed` mode the pins stay, so callers keep being refused until an agent adopts them.
#[derive(Debug)]
pub struct Redirector {
    maps: Maps,
    take: Take,
    /// Emptied by `stop`.
    attachments: Mutex<Vec<Attachment>>,
    pins: Mutex<Option<PinDir>>,
    listener: SocketAddr,
    status: RedirectStatus,
}

impl Redirector {
    /// Attaches the redirector to the configured cgroup, or adopts the pins a previous agent left for it.
    pub fn start(cfg: RedirectConfig) -> Result<Redirector, RedirectError> {
        let listener = match cfg.listener {
            SocketAddr::V4(v4) if v4.ip().is_loopback() && v4.port() != 0 => cfg.listener,
            addr => return Err(RedirectError::ListenerNotLoopback { addr }),
        };
        let own = own_process()?;
        let cgroup = Cgroup::open(cfg.cgroup_root.as_deref())?;
        if !std::path::Path::new(KERNEL_BTF).exists() {
            return Err(RedirectError::KernelUnsupported {
                missing: KernelFeature::KernelBtf,
                source: None,
            });
        }
        let object = object::bytes(cfg.object_path.as_deref())?;
        let load = Load {
            cgroup: &cgroup,
            object: &object,
            fingerprint: object::fingerprint(&object),
            own,
        };
        let pin_dir = PinDir::of(cgroup.id);
        let (Loaded(maps, take, attachments), origin, pins) = match cfg.fail_mode {
            RedirectFailMode::Open => {
                if pin_dir.exists() {
                    // A previous `closed` agent of this cgroup: its pins would be a second copy (spec §7.5).
                    warn!(pin_dir = %pin_dir.path().display(), "removing pins of a previous closed-mode agent");
                    pin_dir.remove()?;
                }
                (attach_fresh(&load, None)?, Origin::Fresh, None)
            }
            RedirectFailMode::Closed => {
                let (loaded, origin) = load.adopt_or_pin(&pin_dir)?;
                (loaded, origin, Some(pin_dir))
            }
        };
        let status = RedirectStatus {
            cgroup: cgroup.path.clone(),
            cgroup_id: cgroup.id,
            fail_mode: cfg.fail_mode,
            origin,
            pin_dir: pins.as_ref().map(|p| p.path().to_path_buf()),
            programs: attachments.iter().map(|a| a.program.clone()).collect(),
        };
        info!(status = %status.describe(), "redirector started");
        Ok(Redirector {
            maps,
            take,
            attachments: Mutex::new(attachments),
            pins: Mutex::new(pins),
            listener,
            status,
        })
    }

    /// Makes the redirect policy exactly `endpoints` (those whose mode is not `disabled`, spec §7.4). IPv4 and
    /// IPv4-mapped endpoints go to the listener; native IPv6 endpoints to `[::1]` at the listener's port.
    pub fn set_policy(&self, endpoints: &[SocketAddr]) -> Result<(), RedirectError> {
        if endpoints.len() > POLICY_MAX_ENTRIES as usize {
            return Err(RedirectError::TooManyEndpoints {
                count: endpoints.len(),
                max: POLICY_MAX_ENTRIES,
            });
        }
        let listener_v4 = AddrPort::from(self.listener);
        let listener_v6 = AddrPort::from(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            self.listener.port(),
        ));
        let mut entries = Vec::with_capacity(endpoints.len());
        for &endpoint in endpoints {
            let key = AddrPort::from(endpoint);
            let target = if is_ipv4(key) {
                listener_v4
            } else {
                listener_v6
            };
            if key == target
                || endpoint.port() == 0
                || endpoint.ip().is_unspecified()
                || endpoint.ip().is_multicast()
            {
                return Err(RedirectError::BadEndpoint { endpoint });
            }
            entries.push((key, target));
        }
        self.maps.set_policy(&entries)
    }

    /// The endpoints currently redirected.
    pub fn policy(&self) -> Result<Vec<SocketAddr>, RedirectError> {
        Ok(self
            .maps
            .policy()?
            .into_iter()
            .map(|(endpoint, _)| SocketAddr::from(endpoint))
            .collect())
    }

    /// Takes the record of the connection whose client is `peer`, the accepted socket's peer address (spec §7.3):
    /// `gpa_take` finds the client socket by its exact address pair with the listener in the kernel's TCP table
    /// and hands out the record in its storage, once. `None` for a direct connection, a second take, a client
    /// already gone, and on a kernel error (the proxy then answers 421). A record taken for an accepted socket
    /// that was reset before it was accepted must not be used: its client's address may belong to a new client
    /// by now (the proxy checks that its socket is still connected after the take).
    pub fn take(&self, peer: SocketAddr) -> Option<ConnRecord> {
        let listener = match peer {
            SocketAddr::V4(_) => self.listener,
            // Native IPv6 endpoints are sent to [::1] at the listener's port (spec §7.1).
            SocketAddr::V6(_) => {
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), self.listener.port())
            }
        };
        let mut buffer =
            TakeRequest::new(AddrPort::from(peer), AddrPort::from(listener)).to_bytes();
        let outcome = self.take.run(&mut buffer);
        match outcome.map(TakeResult::from_raw) {
            Ok(Some(TakeResult::Found)) => {
                // Copied just before it was marked taken; its client is the peer it was looked up by.
                let mut raw = TakeRequest::from_bytes(&buffer).record;
                raw.client = AddrPort::from(peer);
                Some(decode(&raw))
            }
            Ok(Some(TakeResult::NoSocket | TakeResult::NoRecord)) => None,
            Ok(Some(TakeResult::Already)) => {
                warn!(%peer, "the record of this connection was taken before");
                None
            }
            Ok(result) => {
                warn!(%peer, ?result, "gpa_take refused the request");
                None
            }
            Err(error) => {
                warn!(%peer, %error, "taking an attribution record failed");
                None
            }
        }
    }

    /// The kernel-side counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, RedirectError> {
        self.maps.counters()
    }

    /// What is attached where.
    pub fn status(&self) -> &RedirectStatus {
        &self.status
    }

    /// The orderly stop (spec §7.5): detaches every program, removes every pin. Returns the first failure after
    /// trying everything. Takes `&self` so a redirector shared with the proxy can be stopped; a second call does
    /// nothing, and afterwards no connect is redirected or recorded.
    pub fn stop(&self) -> Result<(), RedirectError> {
        let mut first_error = None;
        let mut attachments = std::mem::take(&mut *lock(&self.attachments));
        while let Some(attachment) = attachments.pop() {
            if let Some(pin) = &attachment.pin
                && let Err(e) = pins::remove_pin(pin)
            {
                first_error.get_or_insert(e);
            }
            drop(attachment.link); // the last reference: the kernel detaches the program
        }
        if let Some(pin_dir) = lock(&self.pins).take()
            && let Err(e) = pin_dir.remove()
        {
            first_error.get_or_insert(e);
        }
        info!(cgroup = %self.status.cgroup.display(), "redirector stopped");
        first_error.map_or(Ok(()), Err)
    }
}

/// The key keeper drives the policy through this (spec §7.4); failures stay failures.
impl crate::keykeeper::PolicySink for Redirector {
    fn set_policy(&self, destinations: &[SocketAddr]) -> Result<(), crate::keykeeper::PolicyError> {
        Redirector::set_policy(self, destinations).map_err(Into::into)
    }
}

// The proxy shares one redirector across its tasks.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<Redirector>();
};

impl Drop for Redirector {
    fn drop(&mut self) {
        let pinned = lock(&self.pins).is_some();
        if pinned && !lock(&self.attachments).is_empty() {
            warn!(
                cgroup = %self.status.cgroup.display(),
                "redirector dropped without stop: pins stay, callers are refused until an agent adopts them"
            );
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Poisoning leaves only handles and paths behind, which are still valid.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn is_ipv4(addr: AddrPort) -> bool {
    matches!(SocketAddr::from(addr), SocketAddr::V4(_))
}

/// This process's tgid and start time, and a check that the kernel counts ticks as the object assumes.
fn own_process() -> Result<OwnProcess, RedirectError> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(0);
    if u64::try_from(ticks).ok() != Some(USER_HZ) {
        return Err(RedirectError::ClockTicks {
            found: ticks,
            expected: USER_HZ,
        });
    }
    let stat = std::fs::read_to_string("/proc/self/stat")
        .map_err(|source| RedirectError::OwnProcess { source })?;
    let start_ticks =
        crate::identity::stat_start_ticks(&stat).ok_or_else(|| RedirectError::OwnProcess {
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "/proc/self/stat has no start time",
            ),
        })?;
    Ok(OwnProcess {
        tgid: std::process::id(),
        start_ticks,
    })
}

/// Frees the loader, whose parse of the kernel BTF (~5 MB of file, ~15 MB parsed) is no longer needed once the
/// object is loaded, and hands the freed pages back to the kernel: glibc keeps them resident until trimmed, and they
/// were a quarter of the idle agent's RSS. Both take milliseconds, so they run on a short-lived thread, off the path
/// to enforcing, once the rest of the start is over ([`crate::redirect::BTF_FREE_DELAY`]); nothing waits for it.
fn release_in_background(loader: EbpfLoader<'static>) {
    let spawned = std::thread::Builder::new()
        .name(crate::redirect::BTF_FREE_THREAD.into())
        .spawn(move || {
            std::thread::sleep(crate::redirect::BTF_FREE_DELAY);
            drop(loader);
            trim_heap();
        });
    if let Err(e) = spawned {
        // The closure, and the loader with it, is already dropped.
        warn!(error = %e, "no thread to free the kernel BTF parse; freeing it inline");
        trim_heap();
    }
}

/// Makes every thread of the agent allocate from one malloc arena; call first thing, before any thread starts.
/// Returns whether the C library took the setting (only glibc has arenas).
///
/// Why: glibc gives threads arenas of their own, and memory freed in one arena serves only that arena's threads. The
/// proxy's lanes (`proxy::lanes`) take connections by load, so a burst served mostly on one lane left its freed memory
/// stranded there while the next burst grew the other's: with the 10,000-connection hold after a new-connection
/// workload, 35.9 instead of 29.5 MiB (BENCHMARKS.md, history item 42). The request path allocates little, from the
/// per-thread cache that sits in front of the arena, so the shared arena's lock is rarely taken.
/// It lives here, with `trim_heap`, so that the agent's calls into the C library stay in its one glue module.
pub fn share_one_malloc_arena() -> bool {
    #[cfg(target_env = "gnu")]
    // SAFETY: `mallopt` takes two integers and sets a tunable of glibc's allocator under the allocator's own lock;
    // it touches no memory of ours.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1) == 1
    }
    #[cfg(not(target_env = "gnu"))]
    false
}

/// Returns the free pages of every malloc arena to the kernel.
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: `malloc_trim` takes no pointers and only walks glibc's own free lists, under the arenas' locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What a start needs to load or adopt the programs.
struct Load<'a> {
    cgroup: &'a Cgroup,
    object: &'a [u8],
    fingerprint: u64,
    own: OwnProcess,
}

impl Load<'_> {
    /// `closed` mode: adopts complete pins of this object, else replaces whatever is pinned with a fresh, pinned
    /// copy. A failed fresh start removes its own pins.
    fn adopt_or_pin(&self, pin_dir: &PinDir) -> Result<(Loaded, Origin), RedirectError> {
        pin_dir.create()?;
        if let Some(loaded) = adopt(pin_dir, self.fingerprint, self.own)? {
            return Ok((loaded, Origin::Adopted));
        }
        pin_dir.clear()?;
        match attach_fresh(self, Some(pin_dir)) {
            Ok(loaded) => Ok((loaded, Origin::Fresh)),
            Err(e) => {
                if let Err(cleanup) = pin_dir.remove() {
                    warn!(error = %cleanup, "could not remove pins of a failed start");
                }
                Err(e)
            }
        }
    }
}

/// The maps, `gpa_take` and the attached programs of one start.
struct Loaded(Maps, Take, Vec<Attachment>);

/// Where `gpa_take` lives: in the object this agent loaded, or pinned by a previous agent.
#[derive(Debug)]
enum Take {
    Loaded(Box<Ebpf>),
    Pinned(Box<SchedClassifier>),
}

impl Take {
    fn run(
        &self,
        buffer: &mut [u8; abi::TAKE_REQUEST_SIZE],
    ) -> Result<u32, aya::programs::ProgramError> {
        let program = match self {
            Take::Loaded(ebpf) => ebpf
                .program(TAKE_PROGRAM)
                .and_then(|p| <&SchedClassifier>::try_from(p).ok())
                .ok_or(aya::programs::ProgramError::NotLoaded)?,
            Take::Pinned(program) => program,
        };
        programs::run_take(program, buffer)
    }
}

/// Loads the object, fills the skip map, loads `gpa_take`, then attaches every program (pinning them when `pins`
/// is set).
fn attach_fresh(load: &Load<'_>, pins: Option<&PinDir>) -> Result<Loaded, RedirectError> {
    let Load {
        cgroup,
        object,
        fingerprint,
        own,
    } = *load;
    // aya parses the whole kernel BTF in `EbpfLoader::new` (25–43 ms here, most of a start); our own scan for the
    // field offsets (2.6–6.2 ms with its `mmap`) runs beside it instead of before it (BENCHMARKS.md, item 30).
    let (offsets, mut loader) = std::thread::scope(|scope| {
        let scan = std::thread::Builder::new()
            .name("gpa-btf-scan".into())
            .spawn_scoped(scope, || kernel_btf::offsets(KERNEL_BTF));
        let loader = EbpfLoader::new();
        let offsets = match scan {
            Ok(handle) => handle.join().unwrap_or_else(|_| {
                Err(RedirectError::KernelFields {
                    source: "the kernel BTF scan stopped on a panic".into(),
                })
            }),
            // No thread to spare: scan here, after aya's parse, as before.
            Err(_) => kernel_btf::offsets(KERNEL_BTF),
        };
        (offsets, loader)
    });
    let offsets = offsets?;
    loader.verifier_log_level(VerifierLogLevel::DEBUG | VerifierLogLevel::STATS);
    for (global, offset) in offsets.globals() {
        loader.override_global(global, offset, true);
    }
    if let Some(pins) = pins {
        for name in map_name::ALL {
            loader.map_pin_path(name, pins.map(name));
        }
    }
    let loaded = loader.load(object);
    release_in_background(loader);
    let mut ebpf = loaded.map_err(|e| match programs::errno(&e) {
        Some(programs::libc_errno::EPERM) => RedirectError::PermissionDenied {
            operation: "load",
            source: e.into(),
        },
        _ => RedirectError::Load { source: e.into() },
    })?;
    let maps = Maps::open(|name| {
        ebpf.take_map(name).ok_or(RedirectError::MapLayout {
            map: name,
            source: None,
        })
    })?;
    maps.set_fingerprint(fingerprint)?;
    maps.refresh_skip(own)?; // spec §7.2: before any hook attaches
    let take = programs::load_take(&mut ebpf)?;
    if let Some(pins) = pins {
        let path = pins.program(TAKE_PROGRAM);
        take.pin(&path).map_err(pin_error(&path, "pin program"))?;
    }
    let mut attachments = Vec::with_capacity(PROGRAMS.len());
    for spec in &PROGRAMS {
        let link = programs::load_and_attach(&mut ebpf, spec, cgroup.fd())?;
        let program = describe(spec, &link);
        let (link, pin) = match pins {
            None => (link, None),
            Some(pins) => {
                let path = pins.link(spec.name);
                let pinned = link.pin(&path).map_err(pin_error(&path, "pin link"))?;
                (FdLink::from(pinned), Some(path))
            }
        };
        attachments.push(Attachment { link, pin, program });
    }
    Ok(Loaded(maps, Take::Loaded(Box::new(ebpf)), attachments))
}

/// Opens a previous agent's pins: the skip map first (refreshed at once), then the other maps and the links.
/// `Ok(None)` when the pins are incomplete or come from another object; they are then replaced.
fn adopt(
    pins: &PinDir,
    fingerprint: u64,
    own: OwnProcess,
) -> Result<Option<Loaded>, RedirectError> {
    let complete = map_name::ALL.iter().all(|m| pins.map(m).exists())
        && PROGRAMS.iter().all(|p| pins.link(p.name).exists())
        && pins.program(TAKE_PROGRAM).exists();
    if !complete {
        return Ok(None);
    }
    let maps = match Maps::open(|name| open_pinned_map(pins, name)) {
        Ok(maps) => maps,
        Err(RedirectError::MapLayout { map, .. }) => {
            warn!(map, "pinned map has another layout; replacing the pins");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    maps.refresh_skip(own)?; // spec §7.5: before anything else
    if maps.fingerprint()? != fingerprint {
        warn!("pinned programs come from another eBPF object; replacing them");
        return Ok(None);
    }
    let take_pin = pins.program(TAKE_PROGRAM);
    // from_pin checks neither name nor type: a pin that is not this object's `gpa_take` means replace the pins.
    let take = match SchedClassifier::from_pin(&take_pin) {
        Ok(take)
            if take
                .info()
                .is_ok_and(|i| i.name_as_str() == Some(TAKE_PROGRAM)) =>
        {
            take
        }
        Ok(_) | Err(aya::programs::ProgramError::UnexpectedProgramType) => {
            warn!(pin = %take_pin.display(), "pinned program is not gpa_take; replacing the pins");
            return Ok(None);
        }
        Err(e) => return Err(pin_error(&take_pin, "open pinned program")(e)),
    };
    let mut attachments = Vec::with_capacity(PROGRAMS.len());
    for spec in &PROGRAMS {
        let path = pins.link(spec.name);
        let pinned = PinnedLink::from_pin(&path).map_err(pin_error(&path, "open pinned link"))?;
        let link = FdLink::from(pinned);
        let program = describe(spec, &link);
        attachments.push(Attachment {
            link,
            pin: Some(path),
            program,
        });
    }
    Ok(Some(Loaded(
        maps,
        Take::Pinned(Box::new(take)),
        attachments,
    )))
}

fn open_pinned_map(pins: &PinDir, name: &'static str) -> Result<Map, RedirectError> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path).map_err(pin_error(&path, "open pinned map"))?;
    Map::from_map_data(data).map_err(|e| RedirectError::MapLayout {
        map: name,
        source: Some(Box::new(e)),
    })
}

fn describe(spec: &ProgramSpec, link: &FdLink) -> AttachedProgram {
    let (link_id, program_id) = link
        .info()
        .map(|i| (i.id(), i.program_id()))
        .unwrap_or_default();
    AttachedProgram {
        name: spec.name,
        attach_type: spec.attach_type,
        link_id,
        program_id,
    }
}

/// The kernel struct as the rest of the agent sees it.
fn decode(raw: &abi::ConnRecord) -> ConnRecord {
    let comm_len = raw
        .comm
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(raw.comm.len());
    ConnRecord {
        tgid: raw.tgid,
        tid: raw.tid,
        uid: raw.uid,
        gid: raw.gid,
        comm: String::from_utf8_lossy(raw.comm.get(..comm_len).unwrap_or_default()).into_owned(),
        cgroup_id: raw.cgroup_id,
        socket_cookie: raw.socket_cookie,
        original_dst: SocketAddr::from(raw.original_dst),
        client: SocketAddr::from(raw.client),
        connect_ktime_ns: raw.connect_ktime_ns,
        instance: ProcessInstance {
            start_boottime_ns: raw.start_boottime_ns,
            // kernel: dev_t is major << 20 | minor (MINORBITS = 20).
            exe: (raw.exe_ino != 0).then_some(ExeId {
                dev_major: raw.exe_dev >> 20,
                dev_minor: raw.exe_dev & 0xf_ffff,
                ino: raw.exe_ino,
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    /// glibc takes the setting: a wrong option number or value would be refused, and the agent would keep an arena
    /// per thread without a word.
    #[cfg(target_env = "gnu")]
    #[test]
    fn glibc_takes_the_one_arena_setting() {
        assert!(super::share_one_malloc_arena());
    }
}
