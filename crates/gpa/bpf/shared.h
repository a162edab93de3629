/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Structs and constants shared by redirect.bpf.c and its Rust mirror `gpa::redirect::abi` (STYLE rule 20).
 * Every struct here has explicit padding and a size assertion; the Rust side asserts the same sizes and offsets.
 * Change both sides together, rebuild with scripts/build-bpf.sh, and commit the object.
 */
#ifndef GPA_SHARED_H
#define GPA_SHARED_H

#include <linux/types.h>

/* Map capacities. */
#define POLICY_MAX_ENTRIES 16     /* endpoints to intercept: 3 in production (spec §1.1), room for tests */
#define SKIP_MAX_ENTRIES 16       /* agent processes exempt from redirection (spec §7.2): one in practice */

/* The policy filter: bit ((fold of the address's four words) * FILTER_MULTIPLIER) >> FILTER_SHIFT of one 64-bit
 * word is set for every address in the policy map. */
#define FILTER_MULTIPLIER 0x9e3779b1u /* 2^32 / golden ratio */
#define FILTER_SHIFT 26              /* keeps the top 6 bits: 0..63 */

#define COMM_LEN 16 /* TASK_COMM_LEN */
#define USER_HZ 100 /* clock ticks of /proc/<pid>/stat field 22 (x86_64, arm64) */
/* exe_ino and exe_dev of a task that has an mm whose executable could not be read: no file has this identity, so
 * the agent finds the caller stale (fail closed, catalog C3) instead of having nothing to compare. */
#define EXE_UNREADABLE_INO 0xffffffffffffffffULL
#define EXE_UNREADABLE_DEV 0xffffffffu

/* Indices of the per-CPU `counters` array. */
enum counter {
	COUNTER_CONNECT_SEEN = 0,  /* TCP connects to a policy endpoint (redirected or skipped) */
	COUNTER_REDIRECTED = 1,    /* destinations rewritten to the listener */
	COUNTER_SKIPPED = 2,       /* policy matched but the caller is the agent (skip map) */
	COUNTER_STORAGE_FAILED = 3,/* redirected, but no socket storage for the record: the proxy answers 421 */
	COUNTER_TAKEN = 4,         /* records handed to the agent by gpa_take */
	COUNTER_PEER_REWRITTEN = 5,/* getpeername() answers rewritten to the original destination */
	COUNTER_COUNT = 6,
};

/* Record states in socket storage. */
enum record_state {
	RECORD_PENDING = 1, /* written at connect(), waiting for the agent */
	RECORD_TAKEN = 2,   /* handed to the agent; kept only for getpeername() */
};

/* What gpa_take answers (its return value). */
enum take_result {
	TAKE_FOUND = 1,     /* the record was copied into the request and marked taken */
	TAKE_NO_SOCKET = 2, /* no connected client socket has this address pair */
	TAKE_NO_RECORD = 3, /* the socket exists but was not redirected to this listener (a direct connect) */
	TAKE_ALREADY = 4,   /* the record was handed out before */
	TAKE_BAD_REQUEST = 5,
};

/*
 * An IP address and port, both in network byte order. IPv4 is stored in its IPv4-mapped IPv6 form
 * ::ffff:a.b.c.d, so one key type serves AF_INET and AF_INET6 sockets. Used as the policy key and value
 * (endpoint -> listener) and in take_request (the accepted connection's two ends).
 */
struct addr_port {
	__u32 ip6_be[4];
	__u16 port_be;
	__u16 _pad0; /* always zero: part of hash keys */
};
_Static_assert(sizeof(struct addr_port) == 20, "abi: addr_port");

/*
 * What the kernel knows about the caller of one redirected connect() (spec §7.3). Written into socket-local
 * storage by connect4/connect6 and freed with the socket; copied out to the agent by gpa_take.
 */
struct conn_record {
	__u64 socket_cookie;     /* bpf_get_socket_cookie() of the client socket */
	__u64 cgroup_id;         /* cgroup v2 id of the calling task */
	__u64 connect_ktime_ns;  /* bpf_ktime_get_ns() at connect() (CLOCK_MONOTONIC) */
	__u64 start_boottime_ns; /* thread-group leader's start_boottime: the process-instance value of spec §6 */
	__u64 exe_ino;           /* inode number of the task's mm->exe_file; 0: no mm; EXE_UNREADABLE_INO */
	__u32 exe_dev;           /* s_dev of that inode's super block, kernel encoding (major << 20 | minor) */
	__u32 tgid;              /* process id */
	__u32 tid;               /* thread id */
	__u32 uid;               /* real uid */
	__u32 gid;               /* real gid */
	__u32 state;             /* enum record_state */
	struct addr_port original_dst; /* where the client connected to */
	struct addr_port listener;     /* where it was sent instead */
	struct addr_port client;       /* its local address; filled in the copy gpa_take hands out */
	char comm[COMM_LEN];           /* calling thread's comm */
	__u32 _pad1;
};
_Static_assert(sizeof(struct conn_record) == 144, "abi: conn_record");
_Static_assert(__builtin_offsetof(struct conn_record, original_dst) == 64, "abi: conn_record.original_dst");
_Static_assert(__builtin_offsetof(struct conn_record, comm) == 124, "abi: conn_record.comm");

/*
 * The agent's question to gpa_take, run with BPF_PROG_TEST_RUN on a packet buffer in the agent's network
 * namespace: "the record of the client socket connected from `client` to `listener`". The program looks the socket
 * up in the kernel's own TCP table by that exact address pair and, on TAKE_FOUND, writes the record into `record`.
 * A tc program sees the buffer from its Ethernet header, hence the leading 14 bytes (plus 2 for alignment).
 */
struct take_request {
	__u8 eth[14];
	__u16 _pad0;
	struct addr_port client;   /* the accepted socket's peer */
	struct addr_port listener; /* the accepted socket's local address */
	struct conn_record record; /* out */
};
_Static_assert(sizeof(struct take_request) == 200, "abi: take_request");
_Static_assert(__builtin_offsetof(struct take_request, record) == 56, "abi: take_request.record");

#endif /* GPA_SHARED_H */
