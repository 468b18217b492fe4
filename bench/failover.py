"""Leader failover, measured the same way for mysocket's local cluster and a three-node etcd:
find the leader, kill -9 it, and time until both survivors name the same new leader; bring the
killed node back, wait until the three agree again, repeat.

    failover.py mysocket LOCAL_DIR TRIALS     # deploy/local-cluster.sh's cluster
    failover.py etcd WORK_DIR TRIALS          # bench/failover.sh's etcd (pids in WORK_DIR/eN.pid)

Prints one JSON line: the trials' times in ms, median, p90. Polls every 10 ms, each survivor
on its own thread, so a slow answer from one does not delay seeing the other's.
"""
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

POLL = 0.01


def get_json(url, body=None, timeout=0.5):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"content-type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


class Mysocket:
    ids = (1, 2, 3)

    def __init__(self, local_dir):
        self.dir = local_dir

    def leader_seen_by(self, node):
        """The leader node `node` names, or None."""
        try:
            return get_json("http://127.0.0.%d:7070/cluster" % node).get("leader")
        except Exception:
            return None

    def pid(self, node):
        return int(open(os.path.join(self.dir, "node-%d.pid" % node)).read())

    def restart(self, node):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        subprocess.run([os.path.join(root, "deploy/local-cluster.sh"), "up"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env=dict(os.environ, MYSOCKET_LOCAL_DIR=self.dir))


class Etcd:
    ids = (1, 2, 3)

    def __init__(self, work):
        self.work = work

    def leader_seen_by(self, node):
        try:
            st = get_json("http://127.0.2.%d:2379/v3/maintenance/status" % node, {})
            leader = int(st["leader"])
            return leader or None
        except Exception:
            return None

    def member_id(self, node):
        st = get_json("http://127.0.2.%d:2379/v3/maintenance/status" % node, {})
        return int(st["header"]["member_id"])

    def pid(self, node):
        return int(open(os.path.join(self.work, "e%d.pid" % node)).read())

    def restart(self, node):
        subprocess.run([os.path.join(self.work, "start-e%d.sh" % node)], check=True)


def agreed(system, nodes, timeout, not_leader=None):
    """The leader every one of `nodes` names, once they agree on one other than `not_leader`
    (None after `timeout` s)."""
    seen = {}
    stop = time.time() + timeout

    def watch(n):
        while time.time() < stop and not done.is_set():
            seen[n] = system.leader_seen_by(n)
            time.sleep(POLL)

    done = threading.Event()
    threads = [threading.Thread(target=watch, args=(n,), daemon=True) for n in nodes]
    for t in threads:
        t.start()
    try:
        while time.time() < stop:
            vals = [seen.get(n) for n in nodes]
            if vals[0] is not None and vals[0] != not_leader and all(v == vals[0] for v in vals):
                return vals[0]
            time.sleep(POLL / 2)
        return None
    finally:
        done.set()


def main():
    kind, where, trials = sys.argv[1], sys.argv[2], int(sys.argv[3])
    system = Mysocket(where) if kind == "mysocket" else Etcd(where)
    # etcd names its leader by member id: map ids to node numbers once.
    ids = {n: n for n in system.ids}
    if kind == "etcd":
        ids = {system.member_id(n): n for n in system.ids}
    times = []
    for trial in range(trials):
        leader = agreed(system, system.ids, 60)
        if leader is None:
            sys.exit("no agreed leader before trial %d" % trial)
        node = ids[leader]
        survivors = [n for n in system.ids if n != node]
        t0 = time.monotonic()
        os.kill(system.pid(node), signal.SIGKILL)
        new = agreed(system, survivors, 30, not_leader=leader)
        if new is None:
            sys.exit("the survivors did not agree on a new leader within 30 s (trial %d)" % trial)
        times.append((time.monotonic() - t0) * 1000)
        print("%s trial %d: leader %d killed, %d elected in %.0f ms" % (kind, trial + 1, node, ids.get(new, new), times[-1]),
              file=sys.stderr, flush=True)
        system.restart(node)
        # Back to three that agree, and a moment for the restarted node to catch up.
        if agreed(system, system.ids, 60) is None:
            sys.exit("the restarted node did not rejoin (trial %d)" % trial)
        time.sleep(1)
    times.sort()
    p90 = times[min(len(times) - 1, int(round(0.9 * len(times))) - 1)]
    print(json.dumps({"system": kind, "trials": len(times), "median_ms": round(statistics.median(times)),
                      "p90_ms": round(p90), "min_ms": round(times[0]), "max_ms": round(times[-1]),
                      "times_ms": [round(t) for t in times]}))


if __name__ == "__main__":
    main()
