"""Tunnel failover at scale: N tunnels (real SSH clients, asyncssh) held by node 1, node 1 killed
with -9, and the time until 50%, 99% and 100% of their sockets answer again through nodes 2
and 3, while another tenant's socket (held by node 2) is asked all along.

    failover_tunnels.py LOCAL_DIR N KEY_PATH MYSOCKET_FLEET

Each tunnel (a socket of its own, accounts of 10 sockets) is held by an SSH session of its own
in `mysocket-fleet` (bench/src/fleet.rs: russh, as `mysocketctl`), which moves a lost tunnel to
node 2 or 3 after `mysocketctl`'s jittered waits. The other tenant (its tunnel, asyncssh, and
its requests) runs in a process of its own, so that the recovery probes do not hold up its
measurement. Prints one JSON line. With BYSTANDER_DUMP=FILE, also writes every sample of the
other tenant (monotonic time, seconds taken, status) and the kill's and the storm's end's times
to FILE as JSON.
"""
import asyncio
import json
import multiprocessing
import os
import random
import signal
import subprocess
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import asyncssh

local_dir, n, key_path, fleet_bin = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
API = "http://127.0.0.2:7070"
PER_ACCOUNT = 10
pubkey = open(key_path + ".pub").read().strip()
stamp = "%d" % time.time()


def call(method, path, body=None, token=None, api=API):
    headers = {"content-type": "application/json"}
    if token:
        headers["x-access-token"] = token
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(api + path, data=data, method=method, headers=headers)
    for attempt in range(8):
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                raw = r.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            if e.code < 500 or attempt == 7:
                raise RuntimeError("%s %s: %d %s" % (method, path, e.code, e.read().decode(errors="replace")))
        except OSError:
            if attempt == 7:
                raise
        time.sleep(0.5 * (attempt + 1))


def provision(i, count):
    """An account with `count` sockets of one tunnel each: [(user, dnsname, relay port)]."""
    email = "failover-%s-%d@example.com" % (stamp, i)
    u = call("POST", "/user", {"name": "failover %d" % i, "email": email, "password": "failover-pass-1", "sshkey": pubkey})
    token = call("POST", "/login", {"email": email, "password": "failover-pass-1"})["token"]
    out = []
    for j in range(count):
        s = call("POST", "/connect", {"name": "f-%d-%d" % (i, j), "socket_type": "http"}, token)
        out.append((u["user_name"], s["dnsname"], s["tunnels"][0]["local_port"]))
    return out


async def origin():
    """The local service every tunnel forwards to: a 200 for every request."""
    async def handle(r, w):
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                if not head:
                    return
                w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await w.drain()
        except Exception:
            w.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def get(ip, host, timeout=2.0):
    """The status of GET / for `host` through node `ip` (0: no answer)."""
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(ip, 8080), timeout)
        w.write(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host).encode())
        line = await asyncio.wait_for(r.readline(), timeout)
        w.close()
        return int(line.split()[1]) if line.startswith(b"HTTP/1.1") else 0
    except Exception:
        return 0


class Client:
    """One tunnel's SSH client: holds it on node 1, and on losing it moves to node 2 or 3."""

    def __init__(self, key, user, port, origin_port, first):
        self.key, self.user, self.port, self.origin_port, self.node = key, user, port, origin_port, first
        self.up = asyncio.Event()

    async def run(self, turn):
        wait = 0.0
        while True:
            try:
                conn = await asyncssh.connect("127.0.0.%d" % self.node, 2222, username=self.user,
                                              client_keys=[self.key], known_hosts=None, keepalive_interval=1,
                                              keepalive_count_max=3)
                await conn.forward_remote_port("127.0.0.1", self.port, "127.0.0.1", self.origin_port)
                self.up.set()
                wait = 0.0
                await conn.wait_closed()
            except Exception:
                pass
            self.up.clear()
            # Another node, after a jittered wait: a storm of reconnects spreads.
            self.node = 2 + (turn % 2) if self.node == 1 else (5 - self.node)
            await asyncio.sleep(random.uniform(0, 0.25) if wait == 0 else min(wait, 2.0) * random.uniform(0.5, 1.0))
            wait = 0.25 if wait == 0 else wait * 2


# The other tenant's users: each asks, waits for the answer, pauses 10 ms, asks again. Several,
# so that a storm of a second or two yields some 400 samples, and its p99 is not just the
# second-slowest of 100.
BYSTANDER_USERS = 4


def bystander_worker(tunnel, out):
    """Holds the other tenant's tunnel on node 2 and asks for its socket through node 3 from
    BYSTANDER_USERS loops, in a process of its own; each sample (monotonic time, seconds taken,
    status) goes to `out` in batches."""
    async def user(batch):
        while True:
            t0 = time.monotonic()
            status = await get("127.0.0.3", tunnel[1])
            batch.append((t0, time.monotonic() - t0, status))
            await asyncio.sleep(0.01)

    async def run():
        server, origin_port = await origin()
        key = asyncssh.read_private_key(key_path)
        other = Client(key, tunnel[0], tunnel[2], origin_port, 2)
        asyncio.ensure_future(other.run(0))
        await asyncio.wait_for(other.up.wait(), 30)
        out.put("up")
        batch = []
        for _ in range(BYSTANDER_USERS):
            asyncio.ensure_future(user(batch))
        while True:
            await asyncio.sleep(0.5)
            if batch:
                out.put(list(batch))
                batch.clear()
    asyncio.run(run())


async def main():
    counts = [min(PER_ACCOUNT, n - i) for i in range(0, n, PER_ACCOUNT)]
    t = time.time()
    with ThreadPoolExecutor(8) as pool:
        accounts = list(pool.map(provision, range(len(counts)), counts))
        bystander = pool.submit(provision, len(counts), 1).result()[0]
    tunnels = [t for a in accounts for t in a]
    print("provisioned %d sockets in %.0f s" % (len(tunnels), time.time() - t), file=sys.stderr, flush=True)
    t = time.time()
    listing = os.path.join(os.path.dirname(key_path), "fleet-tunnels")
    with open(listing, "w") as f:
        f.writelines("%s %d\n" % (u, p) for u, _, p in tunnels)
    # At the lowest CPU priority: on this machine the clients share the nodes' cores, where real
    # clients would be machines of their own; the nodes' work is what is measured.
    fleet = subprocess.Popen(["nice", "-n", "19", fleet_bin, "--key", key_path, "--tunnels", listing, "--first", "127.0.0.1:2222",
                              "--then", "127.0.0.2:2222,127.0.0.3:2222"], stdout=subprocess.PIPE, text=True)
    line = await asyncio.get_running_loop().run_in_executor(None, fleet.stdout.readline)
    if not line.startswith("up "):
        sys.exit("mysocket-fleet did not start its tunnels: %r" % line)
    print("%d tunnels up on node 1 in %.0f s" % (len(tunnels), time.time() - t), file=sys.stderr, flush=True)
    samples_q = multiprocessing.Queue()
    by = multiprocessing.Process(target=bystander_worker, args=(bystander, samples_q), daemon=True)
    by.start()
    assert samples_q.get(timeout=60) == "up"
    # Read as they come: a pipe left unread fills, and the samples behind it would be lost.
    samples = []

    def collect():
        while True:
            batch = samples_q.get()
            if batch is None:
                return
            samples.extend(batch)
    collector = threading.Thread(target=collect, daemon=True)
    collector.start()

    # Every socket answers through node 2 before the kill.
    for ip in ("127.0.0.2",):
        missing = [d for _, d, _ in tunnels]
        for _ in range(30):
            answers = await asyncio.gather(*(get(ip, d) for d in missing))
            missing = [d for d, s in zip(missing, answers) if s != 200]
            if not missing:
                break
            await asyncio.sleep(1)
        if missing:
            sys.exit("%d sockets did not answer before the kill" % len(missing))
    await asyncio.sleep(5)
    pid = int(open(os.path.join(local_dir, "node-1.pid")).read())
    leader = call("GET", "/cluster")["leader"]
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    answered = {}

    async def until_answered(k, d):
        """Asks for socket `d` through nodes 2 and 3 in turn until it answers."""
        turn = k
        while time.monotonic() - t0 < 60:
            status = await get("127.0.0.%d" % (2 + turn % 2), d, timeout=1.0)
            if status == 200:
                answered[d] = time.monotonic() - t0
                return
            turn += 1
            await asyncio.sleep(0.02)

    # Each socket is asked for once its client says it claimed the tunnel again (the node answers
    # a claim once it is committed): a few requests per socket, not a flood of probes that would
    # load the nodes more than the storm itself and hide what the other tenant sees.
    loop = asyncio.get_running_loop()
    probes, seen = [], set()
    while len(seen) < len(tunnels) and time.monotonic() - t0 < 60:
        line = await loop.run_in_executor(None, fleet.stdout.readline)
        if not line:
            break
        if line.startswith("claimed "):
            k = int(line.split()[1])
            if k in seen:
                continue
            seen.add(k)
            probes.append(asyncio.ensure_future(until_answered(k, tunnels[k][1])))
    await asyncio.gather(*probes)
    storm_end = time.monotonic()
    await asyncio.sleep(2)
    by.terminate()
    by.join()
    samples_q.put(None)
    collector.join()
    fleet.kill()
    if os.environ.get("BYSTANDER_DUMP"):
        with open(os.environ["BYSTANDER_DUMP"], "w") as f:
            json.dump({"t0": t0, "storm_end": storm_end, "samples": samples}, f)
    times = sorted(answered.values())

    def at(q):
        k = int(len(tunnels) * q + 0.999999) - 1
        return round(times[k], 2) if k < len(times) else None

    # Before the kill (the 5 s before it, with every tunnel held and no other traffic), during
    # the storm (kill until every socket answered), after it; earlier samples are not counted.
    def phase(ts):
        if ts < t0:
            return "before" if ts >= t0 - 5 else "setup"
        return "storm" if ts <= storm_end else "after"

    def lat(kind):
        return sorted(s for ts, s, _ in samples if phase(ts) == kind)

    def p99(kind):
        v = lat(kind)
        return round(v[min(len(v) - 1, int(len(v) * 0.99))] * 1000, 1) if v else None

    errors = {"setup": 0, "before": 0, "storm": 0, "after": 0}
    for ts, _, status in samples:
        if status != 200:
            errors[phase(ts)] += 1
    # Claims the registry absorbed: one per reconnected tunnel, over the seconds they took.
    per_sec = {}
    for v in times:
        per_sec[int(v)] = per_sec.get(int(v), 0) + 1
    print(json.dumps({
        "tunnels": len(tunnels), "answered": len(times), "killed_leader": leader == 1, "storm_secs": round(storm_end - t0, 1),
        "t50_s": at(0.5), "t99_s": at(0.99), "t100_s": at(1.0),
        "claims_per_sec_peak": max(per_sec.values()) if per_sec else 0,
        "claims_per_sec_mean": round(len(times) / (times[-1] - times[0]), 1) if len(times) > 1 and times[-1] > times[0] else None,
        "bystander_p99_ms_before": p99("before"), "bystander_p99_ms_storm": p99("storm"),
        "bystander_median_ms_before": round(statistics.median(lat("before")) * 1000, 2) if lat("before") else None,
        "bystander_median_ms_storm": round(statistics.median(lat("storm")) * 1000, 2) if lat("storm") else None,
        "bystander_samples": {k: len(lat(k)) for k in ("before", "storm", "after")},
        "bystander_errors": errors,
    }), flush=True)
    os._exit(0)


asyncio.run(main())
