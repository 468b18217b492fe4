#!/usr/bin/env python3
"""Cloud authentication in a real browser: headless Chromium, driven by Selenium 4, against a
socket with cloud authentication whose service shows the X-Mysocket-Email header it gets.
scripts/browser-login.sh sets the stage (provider, cluster, socket, service) and runs this.

    browser-login.py PUBLIC_URL OUT_DIR [--issuer URL] [--allowed EMAIL] [--refused EMAIL]

1. PUBLIC_URL with no session ends on the provider's authorization page (1-provider.png).
2. The allowed user's button there leads back to PUBLIC_URL, where the service shows the
   user's email (2-service.png); the edge's cookie mysocket_session is HttpOnly.
3. /.mysocket/signout clears the cookie; PUBLIC_URL goes to the provider again, and the
   refused user gets a 403 page naming the email, with a link to /.mysocket/signout
   (3-refused.png).

Any unmet expectation: a message saying what was expected and what the browser shows,
failure.png and failure.html in OUT_DIR, exit status 1.
"""

import argparse
import json
import os
import sys
import time
import urllib.parse
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

COOKIE = "mysocket_session"
SIGNOUT = "/.mysocket/signout"
CALLBACK = "/.mysocket/callback"
SERVICE_HEADING = "Hello from the service"


class Unmet(Exception):
    """An expectation the browser's state does not meet."""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", help="the socket's public URL, e.g. http://brave-otter-0042.localhost:8080")
    ap.add_argument("out", help="folder for the screenshots")
    ap.add_argument("--issuer", default="http://127.0.0.1:9400", help="the provider's issuer URL")
    ap.add_argument("--allowed", default="alice@example.com", help="a predefined user on the allow-list")
    ap.add_argument("--refused", default="bob@other.org", help="a predefined user not on the allow-list")
    ap.add_argument("--timeout", type=float, default=20, help="seconds to wait for each step")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    sys.stdout.reconfigure(line_buffering=True)

    t = Test(args)
    try:
        t.run()
    except Unmet as e:
        t.fail(str(e))
        return 1
    except WebDriverException as e:
        t.fail(f"the browser: {e.msg}")
        return 1
    finally:
        t.quit()
    print(f"browser: all steps passed; screenshots in {args.out}")
    return 0


class Test:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.public = args.url.rstrip("/")
        self.public_parts = urllib.parse.urlsplit(self.public)
        self.issuer = args.issuer.rstrip("/")
        self.driver = None

    # -- the steps

    def run(self) -> None:
        self.authorize_endpoint = self.discover()
        self.driver = start_chromium(self.args.timeout)

        step("1. the public URL with no session: the provider's authorization page")
        self.open(self.public)
        self.on_provider_page()
        self.shot("1-provider.png")

        step(f"2. log in as {self.args.allowed}: the service, with the email")
        self.click_user(self.args.allowed)
        self.on_service()
        email = self.text_of("#email")
        if email != self.args.allowed:
            raise Unmet(
                f"the service got X-Mysocket-Email {email!r} (the page's #email), expected {self.args.allowed!r}"
            )
        self.shot("2-service.png")
        cookie = self.session_cookie()
        if cookie is None:
            raise Unmet(f"after the login the browser holds no {COOKIE} cookie for {self.public}")
        if not cookie.get("httpOnly"):
            raise Unmet(f"the {COOKIE} cookie is not HttpOnly: {cookie}")
        print(f"   {COOKIE}: HttpOnly, path {cookie.get('path')}, SameSite {cookie.get('sameSite', 'unset')}")

        step(f"3. sign out, then log in as {self.args.refused}: refused with a 403")
        self.open(self.public + SIGNOUT)
        self.wait(lambda: self.session_cookie() is None, f"{SIGNOUT} to clear the {COOKIE} cookie")
        self.open(self.public)
        self.on_provider_page()
        self.driver.get_log("performance")  # what came before this login
        self.click_user(self.args.refused)
        self.wait(
            lambda: self.on_public_host() and self.args.refused in self.body_text(),
            f"a page on {self.public_parts.netloc} naming {self.args.refused}",
        )
        if SERVICE_HEADING in self.body_text():
            raise Unmet(f"{self.args.refused} is not on the allow-list but reached the service")
        links = [
            a.get_attribute("href")
            for a in self.driver.find_elements(By.CSS_SELECTOR, "a[href]")
            if self.is_signout_link(a.get_attribute("href"))
        ]
        if not links:
            raise Unmet(f"the refusal page has no link to {SIGNOUT}")
        status = self.document_status()
        if status != 403:
            raise Unmet(f"the refusal page came with HTTP status {status}, expected 403")
        self.shot("3-refused.png")

    # -- the provider

    def discover(self) -> str:
        """The provider's authorization endpoint, from its discovery document."""
        url = self.issuer + "/.well-known/openid-configuration"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                doc = json.load(r)
        except OSError as e:
            raise Unmet(f"the provider's discovery document {url}: {e}") from e
        return doc["authorization_endpoint"]

    def on_provider_page(self) -> None:
        """Waits for the provider's authorization page with the two users' buttons, and checks
        the request the edge sent there."""
        self.wait(
            lambda: self.driver.current_url.startswith(self.issuer) and self.user_buttons(),
            f"the provider's authorization page ({self.authorize_endpoint}) with a button per predefined user",
        )
        url = self.driver.current_url
        if not url.startswith(self.authorize_endpoint):
            raise Unmet(f"the browser is on the provider but not on its authorization endpoint {self.authorize_endpoint}")
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        one = lambda k: (q.get(k) or [""])[0]  # noqa: E731
        problems = []
        if one("response_type") != "code":
            problems.append(f"response_type is {one('response_type')!r}, expected 'code'")
        scopes = one("scope").split()
        if "openid" not in scopes or "email" not in scopes:
            problems.append(
                f"scope is {one('scope')!r}: it needs 'openid' and 'email' (the provider releases the email "
                "claim only with the email scope)"
            )
        if not one("client_id"):
            problems.append("no client_id")
        if not one("state"):
            problems.append("no state")
        expected_redirect = self.public + CALLBACK
        if one("redirect_uri") != expected_redirect:
            problems.append(f"redirect_uri is {one('redirect_uri')!r}, expected {expected_redirect!r}")
        if problems:
            raise Unmet("the edge's authorization request: " + "; ".join(problems))
        print(f"   on the provider: {url[:160]}")

    def user_buttons(self) -> list:
        return self.driver.find_elements(By.CSS_SELECTOR, "button[name='sub'][value]")

    def click_user(self, sub: str) -> None:
        buttons = [b for b in self.user_buttons() if b.get_attribute("value") == sub]
        if not buttons:
            have = [b.get_attribute("value") for b in self.user_buttons()]
            raise Unmet(f"the provider's page has no button for {sub} (buttons: {have})")
        buttons[0].click()

    # -- the public side

    def on_public_host(self) -> bool:
        return urllib.parse.urlsplit(self.driver.current_url).netloc == self.public_parts.netloc

    def on_service(self) -> None:
        """Waits for the service's page at the path first asked for, back on the public host."""
        self.wait(
            lambda: self.on_public_host() and SERVICE_HEADING in self.text_of("h1"),
            f"the service's page ({SERVICE_HEADING!r}) on {self.public_parts.netloc}",
        )
        path = urllib.parse.urlsplit(self.driver.current_url).path or "/"
        want = self.public_parts.path or "/"
        if path != want:
            raise Unmet(f"after the login the browser is on {path!r}, not on the path first asked for {want!r}")

    def is_signout_link(self, href: str | None) -> bool:
        if not href:
            return False
        u = urllib.parse.urlsplit(href)
        return u.path == SIGNOUT and u.netloc in ("", self.public_parts.netloc)

    def session_cookie(self) -> dict | None:
        """The browser's mysocket_session cookie for the public URL, wherever the browser is."""
        got = self.driver.execute_cdp_cmd("Network.getCookies", {"urls": [self.public + "/"]})
        return next((c for c in got.get("cookies", []) if c.get("name") == COOKIE), None)

    def document_status(self) -> int | None:
        """The HTTP status of the page the browser shows (Selenium does not give it): the last
        document response for the current URL in Chromium's performance log."""
        status = None
        for entry in self.driver.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg.get("method") != "Network.responseReceived" or msg["params"].get("type") != "Document":
                continue
            resp = msg["params"]["response"]
            if resp.get("url") == self.driver.current_url:
                status = resp.get("status")
        return status

    # -- helpers

    def open(self, url: str) -> None:
        try:
            self.driver.get(url)
        except WebDriverException as e:
            raise Unmet(f"the browser could not open {url}: {e.msg}") from e

    def wait(self, cond, what: str) -> None:
        deadline = time.monotonic() + self.args.timeout
        while True:
            try:
                if cond():
                    return
            except WebDriverException:
                pass
            if time.monotonic() > deadline:
                raise Unmet(f"waited {self.args.timeout:g} s for {what}")
            time.sleep(0.2)

    def text_of(self, css: str) -> str:
        els = self.driver.find_elements(By.CSS_SELECTOR, css)
        return els[0].text.strip() if els else ""

    def body_text(self) -> str:
        return self.text_of("body")

    def shot(self, name: str) -> None:
        path = os.path.join(self.args.out, name)
        if not self.driver.save_screenshot(path):
            raise Unmet(f"could not save the screenshot {path}")
        print(f"   screenshot {path}")

    def fail(self, message: str) -> None:
        print(f"FAILED: {message}", file=sys.stderr)
        if self.driver is None:
            return
        try:
            print(f"  the browser is on: {self.driver.current_url} (title {self.driver.title!r})", file=sys.stderr)
            png = os.path.join(self.args.out, "failure.png")
            html = os.path.join(self.args.out, "failure.html")
            self.driver.save_screenshot(png)
            with open(html, "w", encoding="utf-8") as f:
                f.write(self.driver.page_source)
            text = self.body_text()
            print(f"  the page's text: {text[:1500]!r}", file=sys.stderr)
            print(f"  screenshot {png}, page source {html}", file=sys.stderr)
        except WebDriverException as e2:
            print(f"  (no screenshot: {e2.msg})", file=sys.stderr)

    def quit(self) -> None:
        if self.driver is not None:
            self.driver.quit()


def start_chromium(timeout: float) -> webdriver.Chrome:
    """Debian's Chromium and chromedriver (no download), headless, a fresh profile, no proxy."""
    opts = Options()
    opts.binary_location = "/usr/bin/chromium"
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--window-size=1280,900",
        "--disable-dev-shm-usage",
        "--no-proxy-server",
        # The provider's pages load a stylesheet from a CDN: left out, so that nothing here
        # needs the internet (the pages work without it).
        "--host-resolver-rules=MAP cdn.jsdelivr.net ~NOTFOUND",
    ):
        opts.add_argument(a)
    # The performance log carries the pages' HTTP statuses.
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    except WebDriverException as e:
        raise Unmet(f"Chromium did not start through /usr/bin/chromedriver: {e.msg}") from e
    driver.set_page_load_timeout(timeout)
    return driver


def step(text: str) -> None:
    print(text, flush=True)


if __name__ == "__main__":
    sys.exit(main())
