"""The operators' charts in a real browser (Debian's Chromium, headless, driven by Selenium).

    dashboard_browser.py DASHBOARD_URL OPERATOR_TOKEN PUBLIC_URL[,PUBLIC_URL...] HOST OUT_DIR

Opens the dashboard with the operator credential (Basic auth, as a person's browser sends it),
reads the requests chart, then loads the public ports with requests for HOST (a socket whose
tunnel is up) for a while and waits for the chart, which the page reloads every few seconds,
to show it. Screenshots go to OUT_DIR, one at a phone's size. Prints one JSON line with
what it saw; exits non-zero on any failure.
"""
import base64
import http.client
import json
import os
import sys
import threading
import time

from selenium.webdriver.common.by import By

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../testkit/py"))
from browser import chrome, phone, wait  # noqa: E402




def series(d, chart):
    """Each line of a chart: its label, last value and number of points."""
    out = {}
    for p in d.find_elements(By.CSS_SELECTOR, "svg#%s polyline" % chart):
        out[p.get_attribute("data-series")] = (float(p.get_attribute("data-last")), int(p.get_attribute("data-points")))
    return out


def load(url, host_name, stop, counter):
    host, port = url.split("://")[1].split(":")
    while not stop.is_set():
        try:
            c = http.client.HTTPConnection(host, int(port), timeout=5)
            for _ in range(200):
                if stop.is_set():
                    break
                c.request("GET", "/", headers={"Host": host_name})
                c.getresponse().read()
                counter[0] += 1
            c.close()
        except OSError:
            time.sleep(0.1)


def main():
    dashboard, token, publics, host_name, out = sys.argv[1:6]
    d = chrome(1280, 1400)
    seen = {}
    stop = threading.Event()
    try:
        auth = "Basic " + base64.b64encode((":" + token).encode()).decode()
        d.execute_cdp_cmd("Network.enable", {})
        d.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": auth}})
        d.get(dashboard)
        wait("the charts", lambda: d.find_element(By.CSS_SELECTOR, "svg#requests"))
        seen["charts"] = [e.get_attribute("id") for e in d.find_elements(By.CSS_SELECTOR, "svg.chart")]
        seen["before"] = series(d, "requests")
        d.save_screenshot(out + "/1-before.png")
        counter = [0]
        threads = [threading.Thread(target=load, args=(u, host_name, stop, counter), daemon=True)
                   for u in publics.split(",") for _ in range(2)]
        for t in threads:
            t.start()
        # Three rates (four samples) under load on the nodes taking it: a line, not a dot.
        seen["during"] = wait("the load on the chart", lambda: (
            lambda s: s if all(s[n][0] > 5 and s[n][1] >= 3 for n in ("node 1", "node 2")) else None)(
                series(d, "requests")), timeout=60)
        d.execute_script("document.getElementById('requests').scrollIntoView()")
        d.save_screenshot(out + "/2-under-load.png")
        seen["bytes"] = series(d, "bytes")
        seen["tunnels"] = series(d, "tunnels")
        seen["leader_changes"] = d.find_element(By.ID, "leader-changes").text
        seen["phone_overflow_px"] = phone(d, "#requests", out + "/3-phone.png")
        stop.set()
        seen["requests_sent"] = counter[0]
    finally:
        stop.set()
        d.quit()
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    main()
