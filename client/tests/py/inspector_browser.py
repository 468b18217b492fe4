"""The request inspector in a real browser (Debian's Chromium, headless, driven by Selenium).

    inspector_browser.py INSPECTOR_URL PUBLIC_URL HOST OUT_DIR

Opens the inspector's page; sends a POST through the socket's public URL (as HOST); waits for it
to be listed; opens it and checks its body and the service's answer as the page shows them;
replays it with the page's button and waits for the replay to be listed. Screenshots of each
step go to OUT_DIR. Prints one JSON line with what it saw; exits non-zero on any failure.
"""
import json
import os
import sys
import time
import urllib.request

from selenium.webdriver.common.by import By

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../testkit/py"))
from browser import chrome, wait  # noqa: E402

PATH = "/from-the-browser-test?x=1"
BODY = "hello, inspector <b>not bold</b>"




def rows(d):
    return d.find_elements(By.CSS_SELECTOR, "#requests tbody tr")


def main():
    inspector, public, host, out = sys.argv[1:5]
    d = chrome(1280, 900)
    seen = {}
    try:
        d.get(inspector)
        wait("the page", lambda: d.find_element(By.ID, "requests"))
        d.save_screenshot(out + "/1-empty.png")
        req = urllib.request.Request(public + PATH, data=BODY.encode(), method="POST",
                                     headers={"Host": host, "Content-Type": "text/plain"})
        with urllib.request.urlopen(req, timeout=10) as r:
            seen["public_status"] = r.status
            seen["public_answer"] = r.read().decode()
        row = wait("the request to be listed", lambda: [r for r in rows(d) if PATH in r.text])
        seen["row"] = row[0].text
        d.save_screenshot(out + "/2-listed.png")
        row[0].click()
        wait("the detail", lambda: d.find_element(By.ID, "detail").is_displayed())
        seen["request_body"] = wait("the body", lambda: d.find_element(By.ID, "req-body").text)
        seen["response_body"] = d.find_element(By.ID, "resp-body").text
        seen["title"] = d.find_element(By.ID, "title").text
        # What the page shows as text was never taken as HTML.
        seen["injected_elements"] = len(d.find_elements(By.CSS_SELECTOR, "#req-body b"))
        d.save_screenshot(out + "/3-detail.png")
        d.find_element(By.ID, "replay").click()
        seen["replay_result"] = wait("the replay", lambda: "replayed as" in d.find_element(By.ID, "replay-result").text
                                     and d.find_element(By.ID, "replay-result").text)
        wait("the replay to be listed", lambda: len([r for r in rows(d) if PATH in r.text]) == 2)
        seen["replay_rows"] = len(d.find_elements(By.CSS_SELECTOR, "#requests tbody tr.replay"))
        d.save_screenshot(out + "/4-replayed.png")
    finally:
        d.quit()
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    main()
