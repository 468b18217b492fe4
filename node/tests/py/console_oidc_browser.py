"""Signing in to the console with the cluster's identity provider, in a real browser (Debian's
Chromium, headless, driven by Selenium), at oidc-provider-mock's page.

    console_oidc_browser.py CONSOLE_URL OUT_DIR

alice@example.com (who has an account) signs in with the provider and lands on the console
signed in; then bob@other.org, verified by the provider but without an account, is told so.
Screenshots go to OUT_DIR. Prints one JSON line with what it saw; exits non-zero on a failure.
"""
import json
import os
import sys

from selenium.webdriver.common.by import By

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../testkit/py"))
from browser import chrome, wait  # noqa: E402


def through_provider(d, console, sub):
    d.get(console)
    link = wait("the provider's sign-in link", lambda: d.find_element(By.ID, "provider-sign-in").is_displayed()
                and d.find_element(By.ID, "provider-sign-in"))
    link.click()
    button = wait("the provider's page", lambda: [
        b for b in d.find_elements(By.CSS_SELECTOR, "button[name='sub'][value]") if b.get_attribute("value") == sub])
    return button[0]


def main():
    console, out = sys.argv[1:3]
    origin = console.split("/console")[0]
    seen = {}
    d = chrome(1280, 900)
    try:
        through_provider(d, console, "alice@example.com").click()
        seen["signed_in_as"] = wait("signed in", lambda: d.current_url.startswith(origin)
                                    and d.find_element(By.ID, "who-email").text)
        seen["back_at"] = d.current_url[len(origin):]
        seen["cookie_visible_to_scripts"] = "mysocket_session" in d.execute_script("return document.cookie")
        d.save_screenshot(out + "/1-signed-in-with-the-provider.png")
        d.find_element(By.ID, "sign-out").click()
        wait("signed out", lambda: d.find_element(By.ID, "sign-in").is_displayed())

        through_provider(d, console, "bob@other.org").click()
        seen["stranger"] = wait("the refusal", lambda: d.current_url.startswith(origin)
                                and d.find_element(By.ID, "notice").text)
        d.save_screenshot(out + "/2-no-account.png")
        d.get(console)
        seen["stranger_signed_in"] = wait("the console", lambda: (
            d.find_element(By.ID, "sign-in").is_displayed() and "no") or (
            d.find_element(By.ID, "who").is_displayed() and "yes"))
    finally:
        d.quit()
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    main()
