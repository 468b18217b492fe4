#!/usr/bin/env python3
"""Runs deploy/compose.yaml or deploy/kubernetes.yaml without a container engine or Kubernetes,
and uses the three-node cluster it describes the way its user would: `mysocketctl` against the
API addresses it gives, a tunnel to a service on the host, the socket's URL through every
node, and `kill -9` of the node holding the tunnel.

What the engine or Kubernetes would do is done with the kernel's own parts, as root:
- the network: a bridge and one network namespace per container or pod, with its own address;
  the names it resolves (compose service names; the pods' names under the headless Service)
  in the namespace's /etc/hosts (`ip netns exec` mounts /etc/netns/<ns>/hosts over it);
- compose's published ports: DNAT from 127.0.0.1:<host port> to <container>:<port> in the
  host's nat table, with `route_localnet` as Docker sets it; Kubernetes' host network: each
  pod's namespace is its node, dialled at its own address;
- volumes and volume claims: a directory each, bind-mounted at the container path inside the
  container's mount namespace;
- the image: ENTRYPOINT and ENV of deploy/Dockerfile's last stage, with the binaries built on
  this machine first on PATH (the image itself is not built: there is no engine here);
- Kubernetes: the env list in order with `$(VAR)` expansion, the downward API (pod name,
  namespace `default`, host IP), and the Secret the file's comment says to create.

Usage: deploy/check-deploy.py compose|kubernetes [--bin DIR] [--keep]
(DIR default $CARGO_TARGET_DIR/release). Everything it set up is removed at the end.
"""

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
BRIDGE = "msdbr0"
SUBNET = "10.98.0"
HOST_ADDR = f"{SUBNET}.254"


def sh(*args, check=True):
    r = subprocess.run(args, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"`{' '.join(args)}` failed: {r.stderr.strip()}")
    return r


def interpolate(value, env):
    """Compose's variable syntax: ${VAR}, ${VAR:-default}, ${VAR:?error}."""

    def one(m):
        name, op, arg = m.group(1), m.group(2), m.group(3)
        v = env.get(name, "")
        if op == ":-" and not v:
            return arg
        if op == ":?" and not v:
            raise SystemExit(f"compose.yaml: {name}: {arg}")
        return v

    if isinstance(value, str):
        return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}", one, value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def k8s_expand(s, env):
    """Kubernetes' `$(VAR)` in command, args and env values: a defined VAR is replaced, `$$`
    is `$`, anything else stays as written."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), s)


def dockerfile():
    """ENTRYPOINT (exec form) and ENV of the last stage of deploy/Dockerfile."""
    entry, env = None, {}
    for line in open(os.path.join(HERE, "Dockerfile")).read().replace("\\\n", " ").splitlines():
        line = line.strip()
        if line.startswith("FROM "):
            entry, env = None, {}
        elif line.startswith("ENTRYPOINT "):
            entry = json.loads(line[len("ENTRYPOINT "):])
        elif line.startswith("ENV "):
            for pair in line[4:].split():
                k, _, v = pair.partition("=")
                env[k] = v
    assert entry, "deploy/Dockerfile has no ENTRYPOINT in exec form"
    return entry, env


def ports(spec):
    """'H:C' or 'A-B:C-D' -> [(host port, container port)]."""
    host, _, cont = str(spec).rpartition(":")
    rng = lambda s: (int(s.split("-")[0]), int(s.split("-")[-1]))
    (h0, h1), (c0, c1) = rng(host), rng(cont)
    assert h1 - h0 == c1 - c0, f"port range {spec} maps ranges of different sizes"
    return [(h0 + i, c0 + i) for i in range(h1 - h0 + 1)]


class Host:
    """The bridge, the namespaces, rules and mounts set up on this machine, undone in reverse."""

    def __init__(self, work):
        self.work, self.undo, self.procs, self.localnet = work, [], {}, False

    def do(self, args, undo):
        sh(*args)
        self.undo.append(undo)

    def network(self, names, aliases):
        """A namespace per name on the bridge; every namespace resolves every alias."""
        # What a run that was killed left behind: its nat rules would send 127.0.0.1's ports
        # to namespaces that are gone.
        for rule in sh("iptables", "-w", "-t", "nat", "-S").stdout.splitlines():
            if rule.startswith("-A ") and f" {SUBNET}." in rule:
                sh("iptables", "-w", "-t", "nat", "-D", *rule.split()[1:], check=False)
        sh("ip", "link", "del", BRIDGE, check=False)
        self.do(["ip", "link", "add", BRIDGE, "type", "bridge"], ["ip", "link", "del", BRIDGE])
        sh("ip", "addr", "add", f"{HOST_ADDR}/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        sh("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0", check=False)
        addr = {n: f"{SUBNET}.{i + 1}" for i, n in enumerate(names)}
        hosts = "127.0.0.1 localhost\n" + "".join(f"{addr[n]} {' '.join(aliases[n])}\n" for n in names)
        for i, n in enumerate(names):
            ns, veth, etc = f"msd-{n}", f"msdv{i + 1}", f"/etc/netns/msd-{n}"
            sh("ip", "netns", "del", ns, check=False)
            self.do(["ip", "netns", "add", ns], ["ip", "netns", "del", ns])
            os.makedirs(etc, exist_ok=True)
            self.undo.append(["rm", "-rf", etc])
            open(f"{etc}/hosts", "w").write(hosts)
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", veth, "master", BRIDGE, "up")
            sh("ip", "-n", ns, "addr", "add", f"{addr[n]}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        return addr

    def publish(self, host_port, to):
        """Docker's published port: 127.0.0.1:host_port goes to `to` (ip:port)."""
        if not self.localnet:
            self.localnet = True
            old = sh("sysctl", "-n", "net.ipv4.conf.all.route_localnet").stdout.strip()
            self.do(["sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"],
                    ["sysctl", "-qw", f"net.ipv4.conf.all.route_localnet={old}"])
            snat = ["-s", "127.0.0.1", "-d", f"{SUBNET}.0/24", "-j", "SNAT", "--to-source", HOST_ADDR]
            self.do(["iptables", "-w", "-t", "nat", "-A", "POSTROUTING", *snat],
                    ["iptables", "-w", "-t", "nat", "-D", "POSTROUTING", *snat])
        rule = ["-d", "127.0.0.1", "-p", "tcp", "--dport", str(host_port), "-j", "DNAT", "--to-destination", to]
        self.do(["iptables", "-w", "-t", "nat", "-A", "OUTPUT", *rule],
                ["iptables", "-w", "-t", "nat", "-D", "OUTPUT", *rule])

    def volume(self, name, path):
        """A directory for volume `name`, and the command that mounts it at `path`."""
        src = os.path.join(self.work, "volumes", name)
        os.makedirs(src, exist_ok=True)
        if not os.path.isdir(path):
            os.makedirs(path)
            self.undo.append(["rmdir", path])
        return f"mount --bind {src} {path}"

    def start(self, name, argv, env, mounts):
        script = " && ".join(mounts + ['exec "$@"'])
        log = open(os.path.join(self.work, f"{name}.log"), "w")
        self.procs[name] = subprocess.Popen(
            ["ip", "netns", "exec", f"msd-{name}", "sh", "-c", script, "sh", *argv],
            env=env, stdout=log, stderr=log, start_new_session=True)

    def kill(self, name):
        p = self.procs[name]
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()

    def teardown(self):
        for name in list(self.procs):
            self.kill(name)
        for u in reversed(self.undo):
            subprocess.run(u, capture_output=True)


def image_env(bin_dir):
    entry, env = dockerfile()
    env = dict(env, PATH=f"{bin_dir}:/usr/local/bin:/usr/bin:/bin")
    return entry, env


def compose(host, bin_dir):
    """Starts compose.yaml's services. Returns how a user reaches each: {service: (API URL, HTTP
    base URL)}, by the ports it publishes."""
    entry, base_env = image_env(bin_dir)
    assert entry == ["mysocketd"], f"the image's entrypoint is {entry}"
    spec = yaml.safe_load(open(os.path.join(HERE, "compose.yaml")))
    services = spec["services"]
    user_env = {"MYSOCKET_CLUSTER_SECRET": secrets.token_hex(16)}
    addr = host.network(list(services), {n: [n, s.get("hostname", n)] for n, s in services.items()})
    published = {}
    for name, svc in services.items():
        for p in svc.get("ports", []):
            for hp, cp in ports(p):
                assert hp not in published, f"host port {hp} is published twice"
                published[hp] = (name, cp)
                host.publish(hp, f"{addr[name]}:{cp}")
    nodes = {}
    for name, svc in services.items():
        env = dict(base_env, HOSTNAME=svc.get("hostname", name))
        env.update({k: str(v) for k, v in interpolate(svc.get("environment", {}), user_env).items()})
        mounts = []
        for v in svc.get("volumes", []):
            vol, _, path = v.partition(":")
            assert vol in spec.get("volumes", {}), f"{name}: volume {vol} is not declared"
            mounts.append(host.volume(vol, path))
        argv = entry + [str(x) for x in interpolate(svc.get("command", []), user_env)]
        host.start(name, argv, env, mounts)
        # The ports the node listens on, from its environment as the node reads it.
        port = lambda var, default: int(env.get(var, f":{default}").rsplit(":", 1)[1])
        api, http = port("MYSOCKET_API_ADDR", 7070), port("MYSOCKET_HTTP_ADDR", 8080)
        for p in (api, http, port("MYSOCKET_SSH_ADDR", 2222)):
            assert published.get(p) == (name, p), f"{name}: port {p} is not published as {p}"
        nodes[name] = (f"http://localhost:{api}", f"http://localhost:{http}")
        print(f"{name}: {addr[name]}, {len(svc.get('ports', []))} port mappings, `{' '.join(argv)}`")
    return nodes


def kubernetes(host, bin_dir):
    """Starts kubernetes.yaml's StatefulSet pods, each on a node of its own (host network).
    Returns {pod: (API URL, HTTP base URL)} at the pods' node addresses, and the readiness probe."""
    _, base_env = image_env(bin_dir)
    docs = [d for d in yaml.safe_load_all(open(os.path.join(HERE, "kubernetes.yaml"))) if d]
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == sts["spec"]["serviceName"])
    assert svc["spec"].get("clusterIP") == "None", "the StatefulSet's Service must be headless"
    assert svc["spec"].get("publishNotReadyAddresses"), "peers must resolve before they are ready"
    assert sts["spec"].get("podManagementPolicy") == "Parallel", "a new cluster's members must start together"
    pod = sts["spec"]["template"]["spec"]
    assert pod.get("hostNetwork"), "the pods listen on their nodes' addresses"
    (c,) = pod["containers"]
    ns_name, n = "default", sts["spec"]["replicas"]
    pods = [f"{sts['metadata']['name']}-{i}" for i in range(n)]
    sub = f"{svc['metadata']['name']}.{ns_name}.svc.cluster.local"
    the_secrets = {("mysocket-cluster", "secret"): secrets.token_hex(16)}
    addr = host.network(pods, {p: [f"{p}.{sub}", f"{p}.{svc['metadata']['name']}"] for p in pods})
    claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    nodes = {}
    for p in pods:
        field = {"metadata.name": p, "metadata.namespace": ns_name, "status.hostIP": addr[p], "status.podIP": addr[p]}
        env = dict(base_env, HOSTNAME=p)
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = k8s_expand(str(e["value"]), env)
            elif "fieldRef" in e["valueFrom"]:
                env[e["name"]] = field[e["valueFrom"]["fieldRef"]["fieldPath"]]
            else:
                ref = e["valueFrom"]["secretKeyRef"]
                key = (ref["name"], ref["key"])
                assert key in the_secrets, f"secret {key} is not the one the file's comment creates"
                env[e["name"]] = the_secrets[key]
        mounts = []
        for m in c.get("volumeMounts", []):
            assert m["name"] in claims, f"volume {m['name']} has no claim template"
            mounts.append(host.volume(f"{m['name']}-{p}", m["mountPath"]))
        argv = [k8s_expand(str(x), env) for x in c.get("command", []) + c.get("args", [])]
        host.start(p, argv, env, mounts)
        nodes[p] = (f"http://{addr[p]}:7070", f"http://{addr[p]}:8080")
        print(f"{p}: node at {addr[p]}")
    probe = c["readinessProbe"]["httpGet"]
    return nodes, probe


def http_get(url, host=None, timeout=2):
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        return 0, str(e)


def eventually(what, f, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        v = f()
        if v:
            return v
        time.sleep(0.2)
    raise SystemExit(f"timed out: {what}")


def origin():
    """The user's service on the host: answers every GET with its path."""

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"hello from the host, {self.path}".encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]


def use(host, nodes, ctl, probe=None):
    """What a user does with the cluster, and what must hold."""
    apis = [a for a, _ in nodes.values()]

    def cluster():
        for a in apis:
            s, body = http_get(f"{a}/cluster")
            if s == 200:
                v = json.loads(body)
                if v.get("leader") and len(v["nodes"]) == len(nodes) and all(n.get("ssh_addr") for n in v["nodes"]):
                    return v
        return None

    t0 = time.time()
    view = eventually("a leader and every node registered", cluster, 90)
    print(f"cluster up in {time.time() - t0:.1f} s: leader {view['leader']}")
    if probe:
        for a in apis:
            base = a.rsplit(":", 1)[0]
            eventually(f"{base}:{probe['port']}{probe['path']} ready",
                       lambda: http_get(f"{base}:{probe['port']}{probe['path']}")[0] == 200)
    given_api = sorted("http://" + n["api_addr"] for n in view["nodes"])
    assert given_api == sorted(apis), f"API addresses given to clients {given_api}, reachable {sorted(apis)}"
    ssh_hosts = {a.split("//")[1].rsplit(":", 1)[0] for a in apis}
    for n in view["nodes"]:
        h, p = n["ssh_addr"].rsplit(":", 1)
        assert h in ssh_hosts and int(p) > 0, f"node {n['id']} gives clients SSH at {n['ssh_addr']}"

    home = os.path.join(host.work, "home")
    os.makedirs(os.path.join(home, ".ssh"))
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(home, ".ssh", "id_ed25519"))
    uenv = dict(os.environ, HOME=home, MYSOCKET_API=",".join(apis))

    def ctl_run(*args):
        r = subprocess.run([ctl, *args], env=uenv, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise SystemExit(f"mysocketctl {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    ctl_run("account", "create", "--name", "Deploy", "--email", "d@example.com", "--password", "deploy-pass")
    ctl_run("login", "--email", "d@example.com", "--password", "deploy-pass")
    port = origin()
    clog = open(os.path.join(host.work, "mysocketctl.log"), "w")
    host.procs["mysocketctl"] = subprocess.Popen(
        [ctl, "connect", "--port", str(port), "--name", "demo"], env=uenv, stdout=clog, stderr=clog,
        start_new_session=True)
    dns = eventually("the socket", lambda: json.loads(ctl_run("socket", "ls", "-o", "json")) or None)[0]["dnsname"]
    ok = lambda base, path: http_get(f"{base}{path}", dns)[0] == 200
    for name, (_, base) in nodes.items():
        eventually(f"{dns} through {name} ({base})", lambda: ok(base, "/x"))
        status, body = http_get(f"{base}/x", dns)
        assert "hello from the host, /x" in body, body
    print(f"{dns} answers through every node: {', '.join(b for _, b in nodes.values())}")

    # Which node holds the tunnel, as its user sees it (the per-node counts are an operator's).
    def holder():
        t = json.loads(ctl_run("socket", "ls", "-o", "json"))[0]["tunnels"]
        return next((x["session"]["node_id"] for x in t if x.get("session")), None)
    name = list(nodes)[eventually("a node holding the tunnel", holder) - 1]
    host.kill(name)
    t0 = time.time()
    live = [b for n, (_, b) in nodes.items() if n != name]
    eventually("the URL again after kill -9 of the holder", lambda: all(ok(b, "/y") for b in live), 60)
    print(f"killed {name} (it held the tunnel): the URL answered again through {live} after {time.time() - t0:.2f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["compose", "kubernetes"])
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/mysocket-target"), "release"))
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, data)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("check-deploy.py needs root (network namespaces, iptables, mounts)")
    work = tempfile.mkdtemp(prefix=f"mysocket-{a.what}-")
    host = Host(work)
    print(f"deploy/{a.what}: work folder {work}")
    try:
        if a.what == "compose":
            nodes = compose(host, os.path.abspath(a.bin))
            use(host, nodes, os.path.join(a.bin, "mysocketctl"))
        else:
            nodes, probe = kubernetes(host, os.path.abspath(a.bin))
            use(host, nodes, os.path.join(a.bin, "mysocketctl"), probe)
        print(f"deploy/{a.what}: ok")
    finally:
        host.teardown()
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
