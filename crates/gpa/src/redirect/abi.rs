//! The Rust mirror of `crates/gpa/bpf/shared.h`: the structs and constants the kernel programs and the agent
//! exchange through maps and `gpa_take` (STYLE rule 20).
//!
//! Same field order, same sizes and offsets, asserted at compile time here and in C with `_Static_assert`;
//! `scripts/build-bpf.sh` also checks the `*_SIZE` constants against the compiled object's BTF. This module must
//! never hold logic beyond conversions between these structs and std types.
use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Name of each map in the object, as `SEC(".maps")` declares it.
pub mod map_name {
    pub const POLICY: &str = "policy";
    pub const POLICY_FILTER: &str = "policy_filter";
    pub const SKIP: &str = "skip";
    pub const RECORDS: &str = "records";
    pub const META: &str = "meta";
    pub const COUNTERS: &str = "counters";
    /// Every map, in the order a restarted agent opens them: the skip map first (spec §7.5).
    pub const ALL: [&str; 6] = [SKIP, POLICY, POLICY_FILTER, RECORDS, META, COUNTERS];
}

/// `POLICY_MAX_ENTRIES`: endpoints that can be intercepted at once (3 in production, spec §1.1).
pub const POLICY_MAX_ENTRIES: u32 = 16;
/// `SKIP_MAX_ENTRIES`: agent processes exempt from redirection (spec §7.2).
pub const SKIP_MAX_ENTRIES: u32 = 16;
/// `FILTER_MULTIPLIER` and `FILTER_SHIFT`: which bit of the policy filter word stands for an address.
pub const FILTER_MULTIPLIER: u32 = 0x9e37_79b1;
pub const FILTER_SHIFT: u32 = 26;
/// `COMM_LEN`: bytes of a task's `comm`, NUL included.
pub const COMM_LEN: usize = 16;
/// `USER_HZ`: clock ticks per second of `/proc/<pid>/stat` field 22, which the skip map stores.
pub const USER_HZ: u64 = 100;
/// `EXE_UNREADABLE_INO` / `EXE_UNREADABLE_DEV`: a task with an `mm` whose executable could not be read. No file has
/// this identity, so the caller reads as stale (catalog C3) rather than as "nothing recorded".
pub const EXE_UNREADABLE_INO: u64 = u64::MAX;
pub const EXE_UNREADABLE_DEV: u32 = u32::MAX;

/// `enum record_state`: a record waiting for the agent.
pub const RECORD_PENDING: u32 = 1;
/// `enum record_state`: a record handed to the agent.
pub const RECORD_TAKEN: u32 = 2;

/// `enum take_result`: what `gpa_take` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum TakeResult {
    Found = 1,
    NoSocket = 2,
    NoRecord = 3,
    Already = 4,
    BadRequest = 5,
}

impl TakeResult {
    pub fn from_raw(raw: u32) -> Option<TakeResult> {
        [
            TakeResult::Found,
            TakeResult::NoSocket,
            TakeResult::NoRecord,
            TakeResult::Already,
            TakeResult::BadRequest,
        ]
        .into_iter()
        .find(|r| *r as u32 == raw)
    }
}

/// `enum counter`: indices of the per-CPU `counters` array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Counter {
    ConnectSeen = 0,
    Redirected = 1,
    Skipped = 2,
    StorageFailed = 3,
    Taken = 4,
    PeerRewritten = 5,
}

/// `COUNTER_COUNT`.
pub const COUNTER_COUNT: u32 = 6;

/// `struct addr_port`: an address and port in network byte order, IPv4 as `::ffff:a.b.c.d`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct AddrPort {
    /// The 16 address bytes as four native-endian `u32`s of network-order bytes.
    pub ip6_be: [u32; 4],
    pub port_be: u16,
    pub _pad0: u16,
}

pub const ADDR_PORT_SIZE: usize = 20;
const _: () = assert!(size_of::<AddrPort>() == ADDR_PORT_SIZE);
const _: () = assert!(offset_of!(AddrPort, port_be) == 16);

/// `struct conn_record`: who made one redirected `connect()` (spec §7.3).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnRecord {
    pub socket_cookie: u64,
    pub cgroup_id: u64,
    pub connect_ktime_ns: u64,
    pub start_boottime_ns: u64,
    pub exe_ino: u64,
    /// Kernel `dev_t` encoding: `major << 20 | minor`.
    pub exe_dev: u32,
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub state: u32,
    pub original_dst: AddrPort,
    pub listener: AddrPort,
    pub client: AddrPort,
    pub comm: [u8; COMM_LEN],
    pub _pad1: u32,
}

pub const CONN_RECORD_SIZE: usize = 144;
const _: () = assert!(size_of::<ConnRecord>() == CONN_RECORD_SIZE);
const _: () = assert!(offset_of!(ConnRecord, exe_dev) == 40);
const _: () = assert!(offset_of!(ConnRecord, tgid) == 44);
const _: () = assert!(offset_of!(ConnRecord, state) == 60);
const _: () = assert!(offset_of!(ConnRecord, original_dst) == 64);
const _: () = assert!(offset_of!(ConnRecord, listener) == 84);
const _: () = assert!(offset_of!(ConnRecord, client) == 104);
const _: () = assert!(offset_of!(ConnRecord, comm) == 124);

/// `struct take_request`: the agent's question to `gpa_take` and, on `TakeResult::Found`, its answer.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TakeRequest {
    pub eth: [u8; 14],
    pub _pad0: u16,
    pub client: AddrPort,
    pub listener: AddrPort,
    pub record: ConnRecord,
}

pub const TAKE_REQUEST_SIZE: usize = 200;
const _: () = assert!(size_of::<TakeRequest>() == TAKE_REQUEST_SIZE);
const _: () = assert!(offset_of!(TakeRequest, client) == 16);
const _: () = assert!(offset_of!(TakeRequest, record) == 56);

impl TakeRequest {
    pub fn new(client: AddrPort, listener: AddrPort) -> TakeRequest {
        TakeRequest {
            client,
            listener,
            ..TakeRequest::default()
        }
    }

    /// The bytes `gpa_take` runs on.
    pub fn to_bytes(&self) -> [u8; TAKE_REQUEST_SIZE] {
        let mut out = [0u8; TAKE_REQUEST_SIZE];
        // SAFETY: `TakeRequest` is `repr(C)` with no implicit padding (the asserted size and offsets account for
        // every byte), so all `TAKE_REQUEST_SIZE` source bytes are initialised, and `out` has exactly that length.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&raw const *self).cast::<u8>(),
                out.as_mut_ptr(),
                TAKE_REQUEST_SIZE,
            );
        }
        out
    }

    /// The request as `gpa_take` left it in `bytes`.
    pub fn from_bytes(bytes: &[u8; TAKE_REQUEST_SIZE]) -> TakeRequest {
        // SAFETY: `bytes` holds exactly `size_of::<TakeRequest>()` bytes, read unaligned; the struct is plain old
        // data (integers and byte arrays, explicit padding), so every bit pattern is a valid value.
        unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<TakeRequest>()) }
    }
}

// SAFETY: `AddrPort` is `repr(C)`, made only of integers, and its padding is an explicit field (the size assert
// above equals the sum of the field sizes), so every bit pattern is valid and no byte is uninitialised.
unsafe impl aya::Pod for AddrPort {}
// SAFETY: as for `AddrPort`: `repr(C)`, integers and byte arrays only, explicit padding, size asserted.
unsafe impl aya::Pod for ConnRecord {}

impl AddrPort {
    /// This address's bit in the policy filter word, computed as the kernel programs do: the four address words
    /// (as loaded from memory) folded by XOR, multiplied, top 6 bits.
    pub fn filter_bit(&self) -> u64 {
        let fold = self.ip6_be.iter().fold(0u32, |acc, w| acc ^ w);
        1u64 << (fold.wrapping_mul(FILTER_MULTIPLIER) >> FILTER_SHIFT)
    }
}

/// The `::ffff:0:0/96` prefix of IPv4-mapped addresses, as the third `u32`.
const V4_MAPPED_WORD: [u8; 4] = [0, 0, 0xff, 0xff];

impl From<SocketAddr> for AddrPort {
    /// IPv4, and IPv4-mapped IPv6, both become `::ffff:a.b.c.d`, the one form the kernel programs compare.
    fn from(addr: SocketAddr) -> AddrPort {
        let octets = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        let mut ip6_be = [0u32; 4];
        for (word, chunk) in ip6_be.iter_mut().zip(octets.chunks_exact(4)) {
            if let Ok(bytes) = <[u8; 4]>::try_from(chunk) {
                *word = u32::from_ne_bytes(bytes); // chunks_exact(4): always 4 bytes
            }
        }
        AddrPort {
            ip6_be,
            port_be: addr.port().to_be(),
            _pad0: 0,
        }
    }
}

impl From<AddrPort> for SocketAddr {
    /// `::ffff:a.b.c.d` becomes an IPv4 address, anything else stays IPv6.
    fn from(addr: AddrPort) -> SocketAddr {
        let mut octets = [0u8; 16];
        for (chunk, word) in octets.chunks_exact_mut(4).zip(addr.ip6_be) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        let port = u16::from_be(addr.port_be);
        let v6 = Ipv6Addr::from(octets);
        let ip = match octets.get(8..12) {
            Some(word) if octets.get(..8) == Some(&[0; 8]) && word == V4_MAPPED_WORD => {
                let [a, b, c, d] = [octets[12], octets[13], octets[14], octets[15]];
                IpAddr::V4(Ipv4Addr::new(a, b, c, d))
            }
            _ => IpAddr::V6(v6),
        };
        SocketAddr::new(ip, port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_and_mapped_ipv6_share_one_key() {
        let v4: SocketAddr = "127.0.0.16:8080".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.16]:8080".parse().unwrap();
        let key = AddrPort::from(v4);
        assert_eq!(key, AddrPort::from(mapped));
        // Network byte order in memory: ::ffff:127.0.0.16, port 8080 = 0x1f90.
        assert_eq!(key.ip6_be[2].to_ne_bytes(), [0, 0, 0xff, 0xff]);
        assert_eq!(key.ip6_be[3].to_ne_bytes(), [127, 0, 0, 16]);
        assert_eq!(key.port_be.to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!(SocketAddr::from(key), v4);
    }

    #[test]
    fn filter_bits_depend_on_the_address_only() {
        let a = AddrPort::from("127.0.0.16:80".parse::<SocketAddr>().unwrap());
        let same_ip = AddrPort::from("[::ffff:127.0.0.16]:32526".parse::<SocketAddr>().unwrap());
        assert_eq!(a.filter_bit(), same_ip.filter_bit());
        assert_eq!(a.filter_bit().count_ones(), 1);
        // The fold of ::ffff:169.254.169.254 (x86_64 words) fixes the bit both sides must agree on.
        let imds = AddrPort::from("169.254.169.254:80".parse::<SocketAddr>().unwrap());
        let fold = 0xffff_0000u32 ^ u32::from_le_bytes([169, 254, 169, 254]);
        if cfg!(target_endian = "little") {
            assert_eq!(
                imds.filter_bit(),
                1 << (fold.wrapping_mul(0x9e37_79b1) >> 26)
            );
        }
    }

    #[test]
    fn take_requests_round_trip_through_bytes() {
        let client = AddrPort::from("127.0.0.1:40000".parse::<SocketAddr>().unwrap());
        let listener = AddrPort::from("127.0.0.1:3080".parse::<SocketAddr>().unwrap());
        let mut request = TakeRequest::new(client, listener);
        let bytes = request.to_bytes();
        // The kernel reads the client right after the 16-byte Ethernet header and padding.
        assert_eq!(&bytes[..16], &[0u8; 16]);
        assert_eq!(&bytes[32..34], &40000u16.to_be_bytes());
        request.record.tgid = 4242;
        request.record.comm[..4].copy_from_slice(b"curl");
        assert_eq!(TakeRequest::from_bytes(&request.to_bytes()), request);
    }

    #[test]
    fn native_ipv6_round_trips() {
        let v6: SocketAddr = "[::1]:3080".parse().unwrap();
        assert_eq!(SocketAddr::from(AddrPort::from(v6)), v6);
        // The spec's table value for IMDS (spec §1.1): native-endian u32 of network-order bytes.
        let imds = AddrPort::from("169.254.169.254:80".parse::<SocketAddr>().unwrap());
        assert_eq!(imds.ip6_be[3], u32::from_ne_bytes([169, 254, 169, 254]));
    }
}
