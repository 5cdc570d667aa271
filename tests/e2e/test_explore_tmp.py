from playwright.sync_api import expect

def test_explore(browser):
    page = browser.page
    page.on("console", lambda m: print("CONSOLE", m.type, m.text))
    page.on("pageerror", lambda e: print("PAGEERROR", e))
    page.goto("/signup/")
    page.get_by_test_id("display-name").fill("Ada Lovelace")
    page.get_by_test_id("signup-button").click()
    page.wait_for_url(browser.url("/"))
    print(page.content()[:3000])
    print(browser.credentials())
    page.get_by_test_id("signout").click()
    page.wait_for_url("**/signin/")
    page.get_by_test_id("autofill-input").click()
    page.wait_for_timeout(3000)
    print("URL after autofill click", page.url)
    print(page.get_by_test_id("passkey-error").text_content())
