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
#define PUBLISH_MAX_ENTRIES 65536 /* in-flight redirected connects awaiting the agent (spec §7.3: >= 65,536) */

/* The policy filter: bit ((fold of the address's four words) * FILTER_MULTIPLIER) >> FILTER_SHIFT of one 64-bit
 * word is set for every address in the policy map. */
#define FILTER_MULTIPLIER 0x9e3779b1u /* 2^32 / golden ratio */
#define FILTER_SHIFT 26              /* keeps the top 6 bits: 0..63 */

#define COMM_LEN 16 /* TASK_COMM_LEN */
#define USER_HZ 100 /* clock ticks of /proc/<pid>/stat field 22 (x86_64, arm64) */

/* Indices of the per-CPU `counters` array. */
enum counter {
	COUNTER_CONNECT_SEEN = 0,  /* TCP connects to a policy endpoint (redirected or skipped) */
	COUNTER_REDIRECTED = 1,    /* destinations rewritten to the listener */
	COUNTER_SKIPPED = 2,       /* policy matched but the caller is the agent (skip map) */
	COUNTER_STORAGE_FAILED = 3,/* redirected, but no socket storage for the record: the proxy answers 421 */
	COUNTER_PUBLISHED = 4,     /* records moved to the publish map at TCP_CONNECT_CB */
	COUNTER_PUBLISH_FULL = 5,  /* publish map full (or out of memory): connect left unrecorded, proxy answers 421 */
	COUNTER_RELEASED = 6,      /* untaken records removed because their socket closed */
	COUNTER_PEER_REWRITTEN = 7,/* getpeername() answers rewritten to the original destination */
	COUNTER_COUNT = 8,
};

/* Record states in socket storage. */
enum record_state {
	RECORD_PENDING = 1,   /* written at connect(), not yet published */
	RECORD_PUBLISHED = 2, /* published at TCP_CONNECT_CB (or dropped because the publish map was full) */
};

/*
 * An IP address and port, both in network byte order. IPv4 is stored in its IPv4-mapped IPv6 form
 * ::ffff:a.b.c.d, so one key type serves AF_INET and AF_INET6 sockets. Used as the policy key and value
 * (endpoint -> listener) and as the publish key (the client's loopback address and port).
 */
struct addr_port {
	__u32 ip6_be[4];
	__u16 port_be;
	__u16 _pad0; /* always zero: part of hash keys */
};
_Static_assert(sizeof(struct addr_port) == 20, "abi: addr_port");

/*
 * What the kernel knows about the caller of one redirected connect() (spec §7.3). Written into socket-local
 * storage by connect4/connect6, copied into the publish map by sock_ops, taken (looked up and deleted) by the agent.
 */
struct conn_record {
	__u64 socket_cookie;     /* bpf_get_socket_cookie() of the client socket */
	__u64 cgroup_id;         /* cgroup v2 id of the calling task */
	__u64 connect_ktime_ns;  /* bpf_ktime_get_ns() at connect() (CLOCK_MONOTONIC) */
	__u64 start_boottime_ns; /* thread-group leader's start_boottime: the process-instance value of spec §6 */
	__u64 exe_ino;           /* inode number of the task's mm->exe_file, 0 when unknown */
	__u32 exe_dev;           /* s_dev of that inode's super block, kernel encoding (major << 20 | minor) */
	__u32 tgid;              /* process id */
	__u32 tid;               /* thread id */
	__u32 uid;               /* real uid */
	__u32 gid;               /* real gid */
	__u32 state;             /* enum record_state */
	struct addr_port original_dst; /* where the client connected to */
	struct addr_port listener;     /* where it was sent instead */
	struct addr_port client;       /* its local address, the publish key; zero until published */
	char comm[COMM_LEN];           /* calling thread's comm */
	__u32 _pad1;
};
_Static_assert(sizeof(struct conn_record) == 144, "abi: conn_record");
_Static_assert(__builtin_offsetof(struct conn_record, original_dst) == 64, "abi: conn_record.original_dst");
_Static_assert(__builtin_offsetof(struct conn_record, comm) == 124, "abi: conn_record.comm");

#endif /* GPA_SHARED_H */
