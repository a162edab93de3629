// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * The redirector (spec §7): sends TCP connects to the configured metadata endpoints to the agent's proxy listener
 * and records, in the kernel, who made each one.
 *
 *   cgroup/connect4, cgroup/connect6   endpoint in `policy` and caller not in `skip`: write a conn_record into the
 *                                      socket's storage, rewrite the destination to the listener (spec §7.2)
 *   cgroup/getpeername4, getpeername6  show the client its original destination (§7.2)
 *   classifier gpa_take (unattached)   run by the agent for each accepted connection: find the client socket by
 *                                      its exact address pair in the kernel's TCP table, hand out its record (§7.3)
 *
 * The record lives in the client socket's own storage and dies with it, so no record can outlive its socket.
 * Nothing runs at the other TCP events of the cgroup's sockets (no sock_ops): every cgroup program run costs
 * ~40 ns on this kind of guest, and sock_ops would run five times per connect (docs/DECISIONS.md, "records
 * without sock_ops").
 *
 * Every cgroup program returns 1 ("proceed"): the redirector never refuses a connect. A matched connect it cannot
 * record is still redirected, and the proxy refuses it with 421 (fail closed, spec §8.2); an unmatched one goes
 * where it was going. This program must never redirect UDP or raw sockets, never record a connect it did not
 * rewrite, and never hand out a record for a socket the listener has not answered.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "shared.h"

/* GPL-compatible: bpf_get_current_task and bpf_probe_read_kernel are GPL-only helpers. */
char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* ===== constants ===== */

#define VERDICT_PROCEED 1
#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define NSEC_PER_USER_HZ (1000000000ULL / USER_HZ)
#define SINGLE_SLOT 1 /* max_entries of maps that hold one value, at key 0 */

/* ===== kernel fields read by offset =====
 * Byte offsets of the eight kernel fields the record needs, in the running kernel. The agent finds them in
 * /sys/kernel/btf/vmlinux and sets them before the load (gpa::redirect::linux::kernel_btf); .rodata is frozen, so
 * the verifier sees constants. They replace CO-RE relocations, which aya resolves by scanning every type of the
 * kernel BTF once per relocated type: ~13 ms of a cold start here (docs/DECISIONS.md, "Kernel field offsets
 * from the agent"). A field the agent cannot find stops the load; these zeros are never used. */
const volatile __u32 off_task_group_leader = 0; /* struct task_struct *task_struct.group_leader */
const volatile __u32 off_task_mm = 0;           /* struct mm_struct *task_struct.mm */
const volatile __u32 off_task_start_boottime = 0; /* u64 task_struct.start_boottime */
const volatile __u32 off_mm_exe_file = 0;       /* struct file *mm_struct.exe_file */
const volatile __u32 off_file_f_inode = 0;      /* struct inode *file.f_inode */
const volatile __u32 off_inode_i_ino = 0;       /* unsigned long inode.i_ino */
const volatile __u32 off_inode_i_sb = 0;        /* struct super_block *inode.i_sb */
const volatile __u32 off_sb_s_dev = 0;          /* dev_t super_block.s_dev */

/* ===== maps ===== */

/* Endpoint -> listener. Written by the agent (set_policy), read by connect4/connect6. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, POLICY_MAX_ENTRIES);
	__type(key, struct addr_port);
	__type(value, struct addr_port);
} policy SEC(".maps");

/* Slot 0: a one-word Bloom filter of the addresses in `policy` (FILTER_* in shared.h). A connect whose address bit
 * is clear cannot be in the policy and skips the hash lookup. Written by the agent, always a superset of the
 * policy's addresses (bits set before entries are inserted, cleared after they are deleted); read by
 * connect4/connect6. An aligned 64-bit word is read whole, never torn. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SINGLE_SLOT);
	__type(key, __u32);
	__type(value, __u64);
} policy_filter SEC(".maps");

/* Agent tgid -> its start time in clock ticks (/proc/<pid>/stat field 22). Written by the agent before any hook
 * attaches; read by connect4/connect6. The start time keeps a reused pid from inheriting the exemption. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SKIP_MAX_ENTRIES);
	__type(key, __u32);
	__type(value, __u64);
} skip SEC(".maps");

/* The record of a redirected socket, bound to the socket's lifetime. Written by connect4/connect6, read by
 * getpeername4/6 and gpa_take. Socket storage has no max_entries: the kernel frees it with the socket. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct conn_record);
} records SEC(".maps");

/* Slot 0: a fingerprint of the object the attached programs came from. Written by the agent at a fresh start;
 * read by a restarted agent, which adopts pinned programs only when the fingerprint is its own (spec §7.5). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SINGLE_SLOT);
	__type(key, __u32);
	__type(value, __u64);
} meta SEC(".maps");

/* enum counter -> count, per CPU. Written by every program, summed by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* ===== helpers ===== */

static __always_inline void count(__u32 counter)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &counter);

	/* Atomic although per-CPU: a program in a cgroup hook may be preempted by another run on the same CPU. */
	if (value)
		__sync_fetch_and_add(value, 1);
}

static __always_inline void addr_from_ip4(struct addr_port *addr, __u32 ip4_be, __u16 port_be)
{
	addr->ip6_be[0] = 0;
	addr->ip6_be[1] = 0;
	addr->ip6_be[2] = bpf_htonl(0x0000ffff);
	addr->ip6_be[3] = ip4_be;
	addr->port_be = port_be;
	addr->_pad0 = 0;
}

static __always_inline int addr_is_ip4(const struct addr_port *addr)
{
	return addr->ip6_be[0] == 0 && addr->ip6_be[1] == 0 && addr->ip6_be[2] == bpf_htonl(0x0000ffff);
}

static __always_inline int addr_equal(const struct addr_port *a, const struct addr_port *b)
{
	return a->ip6_be[0] == b->ip6_be[0] && a->ip6_be[1] == b->ip6_be[1] && a->ip6_be[2] == b->ip6_be[2] &&
	       a->ip6_be[3] == b->ip6_be[3] && a->port_be == b->port_be;
}

/* Whether `addr` may be in the policy: false means certainly not. A missing filter says "maybe". */
static __always_inline int may_be_in_policy(const struct addr_port *addr)
{
	__u32 fold = addr->ip6_be[0] ^ addr->ip6_be[1] ^ addr->ip6_be[2] ^ addr->ip6_be[3];
	__u32 zero = 0;
	__u64 *bits = bpf_map_lookup_elem(&policy_filter, &zero);

	return !bits || (*bits >> ((fold * FILTER_MULTIPLIER) >> FILTER_SHIFT)) & 1;
}

/* The 8-byte kernel field at `offset` in the object at `base`; 0 when unreadable (a null base included). */
static __always_inline __u64 kernel_u64(__u64 base, __u32 offset)
{
	__u64 value = 0;

	bpf_probe_read_kernel(&value, sizeof(value), (const void *)(base + offset));
	return value;
}

/* The 4-byte kernel field at `offset` in the object at `base`; 0 when unreadable. */
static __always_inline __u32 kernel_u32(__u64 base, __u32 offset)
{
	__u32 value = 0;

	bpf_probe_read_kernel(&value, sizeof(value), (const void *)(base + offset));
	return value;
}

static __always_inline __u64 leader_start_boottime(__u64 task)
{
	return kernel_u64(kernel_u64(task, off_task_group_leader), off_task_start_boottime);
}

/* The caller is the agent: its tgid is in `skip` with the same process start time (spec §7.2). */
static __always_inline int caller_is_agent(__u32 tgid)
{
	__u64 *start_ticks = bpf_map_lookup_elem(&skip, &tgid);

	if (!start_ticks)
		return 0;
	return leader_start_boottime(bpf_get_current_task()) / NSEC_PER_USER_HZ == *start_ticks;
}

/* Fill the record of the current task's connect() (spec §7.3). */
static __always_inline void record_caller(struct conn_record *rec, void *ctx, __u64 pid_tgid,
					  const struct addr_port *original_dst, const struct addr_port *listener)
{
	__u64 task = bpf_get_current_task();
	__u64 mm = kernel_u64(task, off_task_mm);
	__u64 uid_gid = bpf_get_current_uid_gid();

	rec->socket_cookie = bpf_get_socket_cookie(ctx);
	rec->cgroup_id = bpf_get_current_cgroup_id();
	rec->connect_ktime_ns = bpf_ktime_get_ns();
	rec->start_boottime_ns = leader_start_boottime(task);
	rec->exe_ino = 0; /* no mm: a kernel thread, nothing to compare */
	rec->exe_dev = 0;
	if (mm) {
		__u64 exe_inode = kernel_u64(kernel_u64(mm, off_mm_exe_file), off_file_f_inode);
		__u64 sb = kernel_u64(exe_inode, off_inode_i_sb);

		rec->exe_ino = kernel_u64(exe_inode, off_inode_i_ino);
		rec->exe_dev = kernel_u32(sb, off_sb_s_dev);
		/* A user task always has an executable: a read that failed must not pass as "nothing recorded". */
		if (!exe_inode || !sb || !rec->exe_ino) {
			rec->exe_ino = EXE_UNREADABLE_INO;
			rec->exe_dev = EXE_UNREADABLE_DEV;
		}
	}
	rec->tgid = pid_tgid >> 32;
	rec->tid = (__u32)pid_tgid;
	rec->uid = (__u32)uid_gid;
	rec->gid = uid_gid >> 32;
	rec->state = RECORD_PENDING;
	rec->original_dst = *original_dst;
	rec->listener = *listener;
	__builtin_memset(&rec->client, 0, sizeof(rec->client)); /* known to the agent only */
	bpf_get_current_comm(rec->comm, sizeof(rec->comm));
	rec->_pad1 = 0;
}

/*
 * Decide one connect to `dst`. Returns the listener to send it to, or NULL to leave it alone. On a match the
 * record goes into the socket's storage first; without storage the connect is still redirected, and the proxy,
 * finding no record, answers 421 (fail closed).
 */
static __always_inline const struct addr_port *redirect_connect(struct bpf_sock_addr *ctx,
								 const struct addr_port *dst)
{
	const struct addr_port *listener;
	struct conn_record *rec;
	struct bpf_sock *sk;
	__u64 pid_tgid;

	if (ctx->type != SOCK_STREAM)
		return 0; /* UDP and raw sockets are not intercepted (spec §7.1) */
	/* The hot path: every other connect of the machine ends here, uncounted, most after one inlined load. */
	if (!may_be_in_policy(dst))
		return 0;
	listener = bpf_map_lookup_elem(&policy, dst);
	if (!listener)
		return 0;
	count(COUNTER_CONNECT_SEEN);
	pid_tgid = bpf_get_current_pid_tgid();
	if (caller_is_agent(pid_tgid >> 32)) {
		count(COUNTER_SKIPPED);
		return 0;
	}
	sk = ctx->sk;
	rec = sk ? bpf_sk_storage_get(&records, sk, 0, BPF_SK_STORAGE_GET_F_CREATE) : 0;
	if (rec)
		record_caller(rec, ctx, pid_tgid, dst, listener);
	else
		count(COUNTER_STORAGE_FAILED);
	count(COUNTER_REDIRECTED);
	return listener;
}

/* The client socket connected from `client` to `listener`, looked up as a packet from the listener to the client
 * would be; NULL when there is none. Only a connection the listener has answered counts: a listening socket found
 * as a fallback is no client, and a socket still in SYN_SENT cannot be the peer of an accepted connection (it can
 * be a new socket that took over the address of one that was reset before the agent accepted it). The caller
 * releases the socket. */
static __always_inline struct bpf_sock *client_socket(struct __sk_buff *skb, const struct addr_port *client,
						      const struct addr_port *listener)
{
	struct bpf_sock_tuple tuple = {};
	struct bpf_sock *sk;
	__u32 len;

	if (addr_is_ip4(client) && addr_is_ip4(listener)) {
		tuple.ipv4.saddr = listener->ip6_be[3];
		tuple.ipv4.sport = listener->port_be;
		tuple.ipv4.daddr = client->ip6_be[3];
		tuple.ipv4.dport = client->port_be;
		len = sizeof(tuple.ipv4);
	} else {
		__builtin_memcpy(tuple.ipv6.saddr, listener->ip6_be, sizeof(tuple.ipv6.saddr));
		tuple.ipv6.sport = listener->port_be;
		__builtin_memcpy(tuple.ipv6.daddr, client->ip6_be, sizeof(tuple.ipv6.daddr));
		tuple.ipv6.dport = client->port_be;
		len = sizeof(tuple.ipv6);
	}
	sk = bpf_sk_lookup_tcp(skb, &tuple, len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	switch (sk->state) {
	case BPF_TCP_ESTABLISHED:
	case BPF_TCP_FIN_WAIT1:
	case BPF_TCP_FIN_WAIT2:
	case BPF_TCP_CLOSE_WAIT:
	case BPF_TCP_CLOSING:
	case BPF_TCP_LAST_ACK:
		return sk;
	default:
		bpf_sk_release(sk);
		return 0;
	}
}

/* getpeername() of a redirected socket: the original destination instead of the listener (spec §7.2). */
static __always_inline const struct conn_record *redirected_record(struct bpf_sock_addr *ctx,
								    const struct addr_port *peer)
{
	const struct conn_record *rec;
	struct bpf_sock *sk = ctx->sk;

	if (!sk)
		return 0;
	rec = bpf_sk_storage_get(&records, sk, 0, 0);
	if (!rec || !addr_equal(peer, &rec->listener))
		return 0;
	count(COUNTER_PEER_REWRITTEN);
	return rec;
}

/* ===== programs ===== */

/* kernel: connect4 runs for AF_INET sockets before the route lookup; user_port is 4 bytes, network order. */
SEC("cgroup/connect4")
int gpa_connect4(struct bpf_sock_addr *ctx)
{
	const struct addr_port *listener;
	struct addr_port dst;

	addr_from_ip4(&dst, ctx->user_ip4, (__u16)ctx->user_port);
	listener = redirect_connect(ctx, &dst);
	if (listener && addr_is_ip4(listener)) {
		ctx->user_ip4 = listener->ip6_be[3];
		ctx->user_port = listener->port_be;
	}
	return VERDICT_PROCEED; /* never refuse: fail open toward the proxy */
}

/* kernel: a dual-stack AF_INET6 socket connecting to ::ffff:a.b.c.d runs connect6, not connect4 (DESIGN.md). */
SEC("cgroup/connect6")
int gpa_connect6(struct bpf_sock_addr *ctx)
{
	const struct addr_port *listener;
	struct addr_port dst = {};

	dst.ip6_be[0] = ctx->user_ip6[0];
	dst.ip6_be[1] = ctx->user_ip6[1];
	dst.ip6_be[2] = ctx->user_ip6[2];
	dst.ip6_be[3] = ctx->user_ip6[3];
	dst.port_be = (__u16)ctx->user_port;
	listener = redirect_connect(ctx, &dst);
	if (listener) {
		/* An IPv4-mapped endpoint maps to the IPv4 listener in mapped form, a native one to [::1] (spec §7.1). */
		ctx->user_ip6[0] = listener->ip6_be[0];
		ctx->user_ip6[1] = listener->ip6_be[1];
		ctx->user_ip6[2] = listener->ip6_be[2];
		ctx->user_ip6[3] = listener->ip6_be[3];
		ctx->user_port = listener->port_be;
	}
	return VERDICT_PROCEED; /* never refuse: fail open toward the proxy */
}

/*
 * kernel: run only by the agent through BPF_PROG_TEST_RUN, on a private copy of its take_request, in the agent's
 * network namespace (where the proxy listener and so every redirected client socket are). Hands out a record once.
 */
/* Not inlined, so that struct take_request, which no map names, is in the object's BTF for the ABI check. */
static __noinline int take_record(struct __sk_buff *skb, struct take_request *req)
{
	struct conn_record *rec;
	struct bpf_sock *sk;
	int result;

	sk = client_socket(skb, &req->client, &req->listener);
	if (!sk)
		return TAKE_NO_SOCKET;
	rec = bpf_sk_storage_get(&records, sk, 0, 0);
	if (!rec || !addr_equal(&rec->listener, &req->listener)) {
		result = TAKE_NO_RECORD; /* a direct connect, or one redirected elsewhere */
	} else if (rec->state != RECORD_PENDING) {
		result = TAKE_ALREADY;
	} else if (bpf_skb_store_bytes(skb, __builtin_offsetof(struct take_request, record), rec, sizeof(*rec), 0)) {
		result = TAKE_BAD_REQUEST; /* not copied out: left pending */
	} else if (__sync_val_compare_and_swap(&rec->state, RECORD_PENDING, RECORD_TAKEN) != RECORD_PENDING) {
		result = TAKE_ALREADY; /* another take won between the check and here */
	} else {
		count(COUNTER_TAKEN);
		result = TAKE_FOUND;
	}
	bpf_sk_release(sk);
	return result;
}

SEC("classifier")
int gpa_take(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct take_request *req = data;

	if ((void *)(req + 1) > data_end)
		return TAKE_BAD_REQUEST;
	return take_record(skb, req);
}

/* kernel: getpeername4 may rewrite user_ip4/user_port of the answer only; the socket keeps its real peer. */
SEC("cgroup/getpeername4")
int gpa_peername4(struct bpf_sock_addr *ctx)
{
	const struct conn_record *rec;
	struct addr_port peer;

	addr_from_ip4(&peer, ctx->user_ip4, (__u16)ctx->user_port);
	rec = redirected_record(ctx, &peer);
	if (rec && addr_is_ip4(&rec->original_dst)) {
		ctx->user_ip4 = rec->original_dst.ip6_be[3];
		ctx->user_port = rec->original_dst.port_be;
	}
	return VERDICT_PROCEED; /* getpeername cannot be refused here */
}

SEC("cgroup/getpeername6")
int gpa_peername6(struct bpf_sock_addr *ctx)
{
	const struct conn_record *rec;
	struct addr_port peer = {};

	peer.ip6_be[0] = ctx->user_ip6[0];
	peer.ip6_be[1] = ctx->user_ip6[1];
	peer.ip6_be[2] = ctx->user_ip6[2];
	peer.ip6_be[3] = ctx->user_ip6[3];
	peer.port_be = (__u16)ctx->user_port;
	rec = redirected_record(ctx, &peer);
	if (rec) {
		ctx->user_ip6[0] = rec->original_dst.ip6_be[0];
		ctx->user_ip6[1] = rec->original_dst.ip6_be[1];
		ctx->user_ip6[2] = rec->original_dst.ip6_be[2];
		ctx->user_ip6[3] = rec->original_dst.ip6_be[3];
		ctx->user_port = rec->original_dst.port_be;
	}
	return VERDICT_PROCEED; /* getpeername cannot be refused here */
}
