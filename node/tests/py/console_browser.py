"""The web console in a real browser (Debian's Chromium, headless, driven by Selenium).

    console_browser.py CONSOLE_URL PUBLIC_URL OUT_DIR

A newcomer's path through the console on node 1 (CONSOLE_URL): sign up with an SSH key, create
an http socket, start its tunnel with the plain `ssh -R` command the console shows (OpenSSH, to a
local service of this script), request the socket's URL through another node (PUBLIC_URL, the
node's public HTTP address) and wait for the request in the console's live view; then another
account signs in and must see none of it; a page of another origin tries to create a socket with
the signed-in browser's session (a form and a script); the socket is deleted. Screenshots of each
step go to OUT_DIR, one of them at a phone's size. Prints one JSON line with what it saw; exits
non-zero on any failure.
"""
import http.client
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from selenium.webdriver.common.by import By

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../testkit/py"))
from browser import chrome, phone, wait  # noqa: E402

PASSWORD = "console-password-1"
PATH = "/from-the-console-test"




def serve(host, handler):
    """A local HTTP server on an ephemeral port; its port."""
    s = http.server.ThreadingHTTPServer((host, 0), handler)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    return s.server_address[1]


class Backend(http.server.BaseHTTPRequestHandler):
    """The user's own service behind the tunnel."""

    def do_GET(self):
        body = ("the console's service saw GET %s" % self.path).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def foreign_page(console_origin):
    """A page on another origin that tries to create a socket with the visitor's session: a form
    posted as text/plain (which needs no preflight) and a script's fetch with credentials."""
    html = """<!doctype html><html><body>
<form id=f method=POST action="%(o)s/socket" enctype="text/plain" target=sink>
<input name='{"name":"evil-form","x":"' value='"}'></form>
<iframe name=sink></iframe>
<script>
document.getElementById('f').submit();
fetch('%(o)s/socket', {method: 'POST', credentials: 'include', headers: {'X-Mysocket-Console': '1',
  'Content-Type': 'application/json'}, body: JSON.stringify({name: 'evil-fetch'})})
  .then(r => { document.title = 'fetch answered ' + r.status; })
  .catch(e => { document.title = 'fetch refused: ' + e.name; });
</script></body></html>""" % {"o": console_origin}

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = html.encode()
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Page


def cards(d):
    return d.find_elements(By.CSS_SELECTOR, "#sockets article.socket")


def fill(d, form, values):
    f = d.find_element(By.ID, form)
    for name, value in values.items():
        el = f.find_element(By.NAME, name)
        el.clear()
        el.send_keys(value)
    f.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def sign_up(d, console, name, email, sshkey):
    d.get(console)
    wait("the sign-in page", lambda: d.find_element(By.ID, "sign-in").is_displayed())
    fill(d, "sign-up", {"name": name, "email": email, "password": PASSWORD, "sshkey": sshkey})
    wait("signed in as " + email, lambda: d.find_element(By.ID, "who-email").text == email)


def main():
    console, public, out = sys.argv[1:4]
    origin = console.split("/console")[0]
    seen = {}
    key = os.path.join(tempfile.mkdtemp(), "key")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    sshkey = open(key + ".pub").read().strip()
    service_port = serve("127.0.0.1", Backend)
    foreign = "http://127.0.0.9:%d/" % serve("127.0.0.9", foreign_page(origin))

    d = chrome(1280, 1000)
    tunnel = None
    try:
        d.get(console)
        wait("the sign-in page", lambda: d.find_element(By.ID, "sign-in").is_displayed())
        d.save_screenshot(out + "/1-sign-in.png")

        # Sign up (the console signs in right after) and create an http socket.
        sign_up(d, console, "Grace", "grace@example.com", sshkey)
        seen["cookie_visible_to_scripts"] = "mysocket_session" in d.execute_script("return document.cookie")
        seen["form_open_when_empty"] = d.find_element(By.ID, "new-socket-box").get_attribute("open") is not None
        fill(d, "new-socket", {"name": "console-demo", "subdomain": "console-demo"})
        card = wait("the socket to be listed", lambda: [c for c in cards(d) if "console-demo" in c.text])[0]
        seen["urls"] = [a.text for a in card.find_elements(By.CSS_SELECTOR, ".urls a")]
        d.save_screenshot(out + "/2-socket-created.png")

        # Its tunnel, started with the console's own `ssh -R` command.
        card.find_element(By.CSS_SELECTOR, "details.commands summary").click()
        command = card.find_element(By.CSS_SELECTOR, ".cmd-ssh").text
        seen["ssh_command"] = command
        argv = command.replace("127.0.0.1:8000", "127.0.0.1:%d" % service_port).split()
        argv[1:1] = ["-i", key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                     "-o", "ExitOnForwardFailure=yes", "-o", "BatchMode=yes"]
        tunnel = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        def holder():
            card = [c for c in cards(d) if "console-demo" in c.text][0]
            text = card.find_element(By.CSS_SELECTOR, ".tunnels tbody td:nth-child(3)").text
            return text.startswith("node ") and text
        seen["held_by"] = wait("the tunnel to be held", holder)

        # A visitor through another node; the request appears in the live view.
        host = seen["urls"][0].split("://")[1].split(":")[0].split("/")[0]
        req = urllib.request.Request(public + PATH, headers={"Host": host})
        seen["visitor_answer"] = wait("the public URL", lambda: urllib.request.urlopen(req, timeout=5).read().decode())
        seen["log_line"] = wait("the request in the live view", lambda: [
            line for c in cards(d) for line in c.find_element(By.CSS_SELECTOR, "pre.log").text.splitlines()
            if PATH in line][0])
        # A visitor's path is shown as text, never taken as markup.
        c = http.client.HTTPConnection(public.split("://")[1], timeout=5)
        c.request("GET", "/<img/src=x/onerror=document.title='pwned'>", headers={"Host": host})
        seen["markup_status"] = c.getresponse().status
        c.close()
        seen["markup_line"] = wait("the visitor's markup in the live view", lambda: [
            line for c in cards(d) for line in c.find_element(By.CSS_SELECTOR, "pre.log").text.splitlines()
            if "onerror" in line][0])
        seen["injected_elements"] = len(d.find_elements(By.CSS_SELECTOR, "#sockets img"))
        seen["title"] = d.title
        d.execute_script("window.scrollTo(0, 0)")
        d.save_screenshot(out + "/3-live-requests.png")
        seen["phone_overflow_px"] = phone(d, "#sockets .tunnels", out + "/4-phone.png")
        d.set_window_size(1280, 1000)

        # A page of another origin, visited while signed in.
        d.get(foreign)
        seen["foreign_fetch"] = wait("the foreign page's fetch", lambda: d.title.startswith("fetch") and d.title)
        time.sleep(1)
        d.get(console)
        wait("the console again", lambda: [c for c in cards(d) if "console-demo" in c.text])
        seen["sockets_after_foreign_page"] = sorted(
            c.find_element(By.CSS_SELECTOR, ".name").text for c in cards(d))

        # Another account sees none of it, not even by the socket's id.
        socket_id = cards(d)[0].get_attribute("data-socket")
        d.find_element(By.ID, "sign-out").click()
        wait("signed out", lambda: d.find_element(By.ID, "sign-in").is_displayed())
        sign_up(d, console, "Mallory", "mallory@example.com", sshkey)
        time.sleep(1)
        seen["other_account_sockets"] = len(cards(d))
        seen["other_account_empty_shown"] = d.find_element(By.ID, "empty").is_displayed()
        seen["other_account_log_status"] = d.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('/socket/' + arguments[0] + '/log', {headers: {'X-Mysocket-Console': '1'}})"
            ".then(r => done(r.status)).catch(e => done(String(e)));", socket_id)
        d.save_screenshot(out + "/5-other-account.png")
        d.find_element(By.ID, "sign-out").click()
        wait("signed out", lambda: d.find_element(By.ID, "sign-in").is_displayed())

        # Back as Grace: delete the socket.
        fill(d, "sign-in", {"email": "grace@example.com", "password": PASSWORD})
        card = wait("Grace's socket", lambda: [c for c in cards(d) if "console-demo" in c.text])[0]
        card.find_element(By.CSS_SELECTOR, ".delete-socket").click()
        d.switch_to.alert.accept()
        wait("the socket to go", lambda: not [c for c in cards(d) if "console-demo" in c.text])
        seen["message_after_delete"] = d.find_element(By.ID, "message").text
        d.save_screenshot(out + "/6-deleted.png")
    finally:
        if tunnel:
            tunnel.kill()
        d.quit()
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    main()
