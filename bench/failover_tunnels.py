"""Tunnel failover at scale: N tunnels (real SSH clients, asyncssh) held by node 1, node 1 killed
with -9, and the time until 50%, 99% and 100% of their sockets answer again through nodes 2
and 3, while another tenant's socket (held by node 2) is asked all along.

    failover_tunnels.py LOCAL_DIR N KEY_PATH

Each client holds one tunnel of a socket of its own (accounts of 10 sockets); when its session
is lost it reconnects to node 2 or 3 (alternating) after a random 0-250 ms, then doubling waits
(at most 2 s), as `mysocketctl` does. Prints one JSON line.
"""
import asyncio
import json
import os
import random
import signal
import statistics
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import asyncssh

local_dir, n, key_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
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


async def main():
    counts = [min(PER_ACCOUNT, n - i) for i in range(0, n, PER_ACCOUNT)]
    t = time.time()
    with ThreadPoolExecutor(8) as pool:
        accounts = list(pool.map(provision, range(len(counts)), counts))
        bystander = pool.submit(provision, len(counts), 1).result()[0]
    tunnels = [t for a in accounts for t in a]
    print("provisioned %d sockets in %.0f s" % (len(tunnels), time.time() - t), file=sys.stderr, flush=True)
    server, origin_port = await origin()
    key = asyncssh.read_private_key(key_path)
    clients = [Client(key, u, p, origin_port, 1) for u, _, p in tunnels]
    sem = asyncio.Semaphore(64)

    async def start(i, c):
        async with sem:
            asyncio.ensure_future(c.run(i))
            await asyncio.wait_for(c.up.wait(), 60)

    t = time.time()
    await asyncio.gather(*(start(i, c) for i, c in enumerate(clients)))
    print("%d tunnels up on node 1 in %.0f s" % (len(clients), time.time() - t), file=sys.stderr, flush=True)
    other = Client(key, bystander[0], bystander[2], origin_port, 2)
    asyncio.ensure_future(other.run(0))
    await asyncio.wait_for(other.up.wait(), 30)

    # The bystander, asked through node 3 all along: latencies before and during the storm.
    samples, errors = [], {"before": 0, "storm": 0, "after": 0}
    phase = {"now": "before"}

    async def bystander_load():
        while True:
            t0 = time.monotonic()
            status = await get("127.0.0.3", bystander[1])
            samples.append((phase["now"], time.monotonic() - t0))
            if status != 200:
                errors[phase["now"]] += 1
            await asyncio.sleep(0.01)

    load = asyncio.ensure_future(bystander_load())
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
    phase["now"] = "storm"
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    answered = {}
    pending = {d for _, d, _ in tunnels}
    turn = 0
    sem = asyncio.Semaphore(200)

    async def probe(d, ip):
        async with sem:
            return d, await get(ip, d, timeout=1.0)

    while pending and time.monotonic() - t0 < 60:
        ip = "127.0.0.%d" % (2 + turn % 2)
        turn += 1
        for d, status in await asyncio.gather(*(probe(d, ip) for d in pending)):
            if status == 200:
                answered[d] = time.monotonic() - t0
        pending -= set(answered)
        await asyncio.sleep(0.05)
    storm_end = time.monotonic() - t0
    phase["now"] = "after"
    await asyncio.sleep(2)
    load.cancel()
    times = sorted(answered.values())

    def at(q):
        k = int(len(tunnels) * q + 0.999999) - 1
        return round(times[k], 2) if k < len(times) else None

    def p99(kind):
        v = sorted(s for p, s in samples if p == kind)
        return round(v[min(len(v) - 1, int(len(v) * 0.99))] * 1000, 1) if v else None

    # Claims the registry absorbed: one per reconnected tunnel, over the seconds they took.
    per_sec = {}
    for v in times:
        per_sec[int(v)] = per_sec.get(int(v), 0) + 1
    print(json.dumps({
        "tunnels": len(tunnels), "answered": len(times), "storm_secs": round(storm_end, 1),
        "t50_s": at(0.5), "t99_s": at(0.99), "t100_s": at(1.0),
        "claims_per_sec_peak": max(per_sec.values()) if per_sec else 0,
        "claims_per_sec_mean": round(len(times) / (times[-1] - times[0]), 1) if len(times) > 1 and times[-1] > times[0] else None,
        "bystander_p99_ms_before": p99("before"), "bystander_p99_ms_storm": p99("storm"),
        "bystander_median_ms_before": round(statistics.median(s for p, s in samples if p == "before") * 1000, 2),
        "bystander_median_ms_storm": round(statistics.median(s for p, s in samples if p == "storm") * 1000, 2),
        "bystander_errors": errors,
    }), flush=True)
    os._exit(0)


asyncio.run(main())
