"""What the browser tests share: headless Chromium under Selenium, and waiting for a page that
redraws itself."""
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service


def chrome(width, height):
    """Debian's Chromium, headless, at `width` x `height`."""
    opts = Options()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--window-size=%d,%d" % (width, height),
              "--disable-dev-shm-usage", "--no-proxy-server"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def phone(d, scroll_to, path):
    """Shrinks the window to a phone's (390 x 844), scrolls `scroll_to` (a CSS selector) into
    view, saves a screenshot at `path`, and returns how many pixels the page overflows sideways."""
    d.set_window_size(390, 844)
    time.sleep(0.5)
    d.execute_script("document.querySelector(arguments[0]).scrollIntoView()", scroll_to)
    d.save_screenshot(path)
    return d.execute_script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")


def wait(what, check, timeout=30):
    """`check()`'s first truthy answer; exits naming `what` when none comes in time. Errors
    count as not yet: the pages redraw themselves and elements come and go."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            got = check()
            if got:
                return got
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit("timed out waiting for " + what)
