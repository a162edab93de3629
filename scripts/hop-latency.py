#!/usr/bin/env python3
"""Where a keep-alive request's time goes, hop by hop (BENCHMARKS.md, "What is in the way", session 12).

Runs `msp-bench --only keepalive-1 --rounds 1` (agent, direct and bare-relay rounds, one each) under
`perf record -a` with syscall and scheduler tracepoints, then follows every request through the processes:

    client send -> proxy receive -> proxy send -> host receive -> host send -> proxy receive -> proxy send
    -> client receive            (the direct rounds: client send -> host receive -> host send -> client receive)

A hop is the time from a process entering its send to the next process returning from its receive with data:
the kernel's delivery, the wake-up and the wait for a CPU. Each hop is also classed by whether the two ends ran on
the same vCPU. The tracepoints add their own cost to every call, so compare sides, not absolute figures.

    sudo scripts/hop-latency.py [--out DIR] [--bin-dir target/release] [-- extra msp-bench arguments]
    scripts/hop-latency.py --again [--out DIR]     # the same analysis of the trace already in DIR

Needs root, perf and a mounted tracefs (`mount -t tracefs nodev /sys/kernel/tracing`). Loopback only, like the
bench itself.
"""

import argparse
import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

EVENTS = ",".join(
    "syscalls:" + e
    for e in (
        "sys_enter_sendto",
        "sys_enter_write",
        "sys_enter_writev",
        "sys_enter_recvfrom",
        "sys_exit_recvfrom",
        "sys_enter_read",
        "sys_exit_read",
    )
)

LINE = re.compile(r"^\s*(\S.*?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$")
SENDS = ("sendto", "write", "writev")
RECEIVES = ("recvfrom", "read")


def children(pid):
    """{child pid: argv} of a running process."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    kids = {}
    for child in out.split():
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                kids[int(child)] = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            pass  # gone already
    return kids


def run_bench(args):
    """Runs the bench under perf; returns the pids of the bench, the agent, the host and the bare relay."""
    gpa = os.path.join(args.bin_dir, "gpa")
    log = open(os.path.join(args.out, "bench.log"), "w")
    bench = subprocess.Popen(
        [os.path.join(args.bin_dir, "msp-bench"), "--gpa", gpa, "--only", "keepalive-1", "--rounds", "1",
         "--scale", "0", "--cold-starts", "0", "--relay-mode", "tokio", "--out", args.out] + args.extra,
        stdout=log, stderr=subprocess.STDOUT,
    )
    roles = {"bench": bench.pid, "agent": None, "host": None, "relay": None}
    perf = None
    try:
        # The bench's own children, looked up until all three are known (the relay starts before the first round),
        # so the lookups do not run beside the measured rounds.
        while bench.poll() is None and None in roles.values():
            for pid, argv in children(bench.pid).items():
                name = os.path.basename(argv[0])
                if name == "gpa" and argv[1:2] == ["run"]:
                    roles["agent"] = pid
                elif name == "msp-host":
                    roles["host"] = pid
                elif name == "msp-bench" and argv[1:2] == ["relay"]:
                    roles["relay"] = pid
            if perf is None and roles["agent"] is not None:
                perf = subprocess.Popen(
                    ["perf", "record", "-a", "-e", EVENTS, "--exclude-perf", "-m", "1024",
                     "-o", os.path.join(args.out, "perf.data")],
                    stdout=subprocess.DEVNULL, stderr=open(os.path.join(args.out, "perf.log"), "w"),
                )
            time.sleep(0.05)
        bench.wait(timeout=600)
    finally:
        if bench.poll() is None:
            bench.send_signal(signal.SIGTERM)  # msp-bench stops what it started and removes its cgroup
            bench.wait()
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            perf.wait()
    if bench.returncode != 0:
        sys.exit(f"msp-bench failed (exit {bench.returncode}); see {args.out}/bench.log")
    if perf is None or perf.returncode not in (0, -signal.SIGINT):
        sys.exit(f"perf record failed; see {args.out}/perf.log")
    return roles


def events(path, skip_comms):
    """(time, pid, 'send' | 'recv', cpu) in time order, from `perf script`: receives that returned data, and sends
    on a descriptor the same process also received from (its sockets, not its log files)."""
    script = subprocess.run(
        ["perf", "script", "-i", path, "-F", "comm,pid,tid,cpu,time,event,trace"],
        capture_output=True, text=True,
    )
    if script.returncode != 0:
        sys.exit(f"perf script failed: {script.stderr.strip()}")
    fd_of = {}  # tid -> the descriptor of its receive in progress
    received = set()  # (pid, fd)
    raw = []
    for line in script.stdout.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        comm, pid, tid, cpu, t, event, rest = m.groups()
        if comm in skip_comms:
            continue
        if event.startswith("syscalls:sys_enter_"):
            fd = int(rest.split(",")[0].split(":")[1], 16)
            if event[19:] in SENDS:
                raw.append((float(t), int(pid), "send", int(cpu), fd))
            else:
                fd_of[tid] = fd
        elif event.startswith("syscalls:sys_exit_") and event[18:] in RECEIVES:
            ret = int(rest, 16)
            fd = fd_of.pop(tid, None)
            if 0 < ret < 1 << 62 and fd is not None:
                raw.append((float(t), int(pid), "recv", int(cpu), fd))
                received.add((int(pid), fd))
    return [e[:4] for e in raw if e[2] == "recv" or (e[1], e[4]) in received]


def chains(evs, client, proxy, host):
    """Every request of `client`'s round, as its list of events along the path."""
    steps = [(client, "send")]
    if proxy is not None:
        steps += [(proxy, "recv"), (proxy, "send")]
    steps += [(host, "recv"), (host, "send")]
    if proxy is not None:
        steps += [(proxy, "recv"), (proxy, "send")]
    steps += [(client, "recv")]
    times = [e[0] for e in evs if e[1] == client]
    lo, hi = min(times), max(times)
    done, cur = [], []
    for e in evs:
        if not lo <= e[0] <= hi:
            continue
        if (e[1], e[2]) == steps[len(cur)]:
            cur.append(e)
            if len(cur) == len(steps):
                done.append(cur)
                cur = []
        elif (e[1], e[2]) == steps[0]:
            cur = [e]  # a request whose path was not seen whole
    return done


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def report(label, reqs, proxied):
    names = (["client→proxy", "proxy (request)", "proxy→host", "host", "host→proxy", "proxy (response)",
              "proxy→client"] if proxied else ["client→host", "host", "host→client"])
    hops = range(0, len(reqs[0]) - 1, 2)  # a send and the next receive; odd steps are work inside one process
    by_cross = collections.defaultdict(list)
    for r in reqs:
        by_cross[sum(r[i][3] != r[i + 1][3] for i in hops)].append((r[-1][0] - r[0][0]) * 1e6)
    print(f"{label}: {len(reqs)} requests, p50 {median([x for v in by_cross.values() for x in v]):.0f} µs")
    for n, total in sorted(by_cross.items()):
        if len(total) < len(reqs) * 0.001:
            continue
        print(f"  {n} hops across vCPUs: {100 * len(total) / len(reqs):5.1f} % of requests, p50 {median(total):.0f} µs")
    # Per placement (the vCPU of each process when it received), the median of every step.
    by_place = collections.defaultdict(list)
    for r in reqs:
        place = f"client {r[0][3]}, " + (f"proxy {r[1][3]}, host {r[3][3]}" if proxied else f"host {r[1][3]}")
        by_place[place].append([(r[i + 1][0] - r[i][0]) * 1e6 for i in range(len(r) - 1)])
    for place, rows in sorted(by_place.items(), key=lambda kv: -len(kv[1])):
        if len(rows) < len(reqs) * 0.02:
            continue
        cols = ", ".join(f"{n} {median(c):.0f}" for n, c in zip(names, zip(*rows)))
        print(f"  on {place} ({100 * len(rows) / len(reqs):.1f} %), p50 µs: {cols}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="where the trace and the bench's results go (default: a new temporary folder)")
    ap.add_argument("--bin-dir", default="target/release")
    ap.add_argument("--again", action="store_true", help="analyse the trace already in --out; run nothing")
    ap.add_argument("extra", nargs="*", help="more msp-bench arguments (after --)")
    args = ap.parse_args()
    if args.out is None:
        if args.again:
            sys.exit("--again needs --out")
        args.out = tempfile.mkdtemp(prefix="hop-latency-")
    saved = os.path.join(args.out, "pids.json")
    if args.again:
        with open(saved) as f:
            roles = json.load(f)
    else:
        os.makedirs(args.out, exist_ok=True)
        roles = run_bench(args)
        with open(saved, "w") as f:
            json.dump(roles, f)
    # The store thread's writes are the audit log's, not the exchange's.
    evs = events(os.path.join(args.out, "perf.data"), skip_comms={"msp-host-store"})
    # Each round's client is a worker of the bench's that sent many requests (readiness probes send a few), in
    # the order of the rounds: agent, direct, bare relay.
    known = set(roles.values())
    sent = collections.Counter(e[1] for e in evs if e[2] == "send" and e[1] not in known)
    first = {}
    for e in evs:
        first.setdefault(e[1], e[0])
    clients = sorted((p for p, n in sent.items() if n >= 100), key=first.get)
    if None in roles.values() or len(clients) != 3:
        sys.exit(f"could not tell the processes apart: {roles}, clients {clients}")
    print(f"trace and bench results in {args.out}")
    for label, client, proxy in (("agent", clients[0], roles["agent"]), ("direct", clients[1], None),
                                 ("bare relay", clients[2], roles["relay"])):
        reqs = chains(evs, client, proxy, roles["host"])
        if not reqs:
            sys.exit(f"{label}: no complete request in the trace")
        report(label, reqs, proxy is not None)


if __name__ == "__main__":
    main()
